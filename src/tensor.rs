//! A tensor is a shape plus storage. Activations are NHWC, conv weights KRSC, dense
//! weights [out, in]. The element type lives in the tensor (f32 for training, f64 for
//! the finite-difference gradient checks, bf16 for activations on a GPU under `--precision bf16`).
//! On the `cpu` device the storage is a plain `Vec`; on a GPU it is a device buffer of f32 or bf16,
//! read back only through the explicit, rare `to_f32_vec`/`to_f64_vec`/`to_device`.
//!
//! Storage is shared: cloning a tensor hands out another reference to the same values (the
//! tape holds parameters this way, and a gradient that fans out to two inputs is one tensor).
//! Writing needs the only reference (`as_mut_slice`, `buffer_mut` panic otherwise), so a
//! write never lands in a value something else holds, and nothing is copied behind the
//! caller's back: `deep_copy` is the one explicit copy.

use crate::device::cpu::real::Real;
use crate::device::cpu::recycle;
use crate::device::cuda::{Buffer, Elem, Gpu};
use crate::device::Device;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    /// Only on a GPU: activations under `--precision bf16`.
    BF16,
}

impl DType {
    /// As `--precision` and the benches' case names spell it.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
        }
    }

    /// How a GPU buffer stores this type.
    pub fn elem(self) -> Elem {
        match self {
            DType::F32 => Elem::F32,
            DType::BF16 => Elem::Bf16,
            DType::F64 => panic!("f64 tensors live only on the cpu"),
        }
    }
}

#[derive(Debug)]
pub enum Storage {
    CpuF32(Vec<f32>),
    CpuF64(Vec<f64>),
    Gpu(Buffer),
}

/// A cpu buffer goes to the recycle bin, for the backend's next output of its length.
impl Drop for Storage {
    fn drop(&mut self) {
        match self {
            Storage::CpuF32(v) => recycle::give_back(std::mem::take(v)),
            Storage::CpuF64(v) => recycle::give_back(std::mem::take(v)),
            Storage::Gpu(_) => {}
        }
    }
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    storage: Arc<Storage>,
}

/// An element type that a tensor can hold; lets ops be written once, generically, and
/// dispatched on the tensor's dtype with `with_dtype!`.
pub trait Element: Real {
    const DTYPE: DType;
    fn slice(t: &Tensor) -> &[Self];
    fn slice_mut(t: &mut Tensor) -> &mut [Self];
    fn wrap(data: Vec<Self>) -> Storage;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(t: &Tensor) -> &[f32] {
        match t.storage() {
            Storage::CpuF32(v) => v,
            other => panic!("expected an f32 cpu tensor, got {other:?}"),
        }
    }
    fn slice_mut(t: &mut Tensor) -> &mut [f32] {
        match t.storage_mut() {
            Storage::CpuF32(v) => v,
            other => panic!("expected an f32 cpu tensor, got {other:?}"),
        }
    }
    fn wrap(data: Vec<f32>) -> Storage {
        Storage::CpuF32(data)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn slice(t: &Tensor) -> &[f64] {
        match t.storage() {
            Storage::CpuF64(v) => v,
            other => panic!("expected an f64 cpu tensor, got {other:?}"),
        }
    }
    fn slice_mut(t: &mut Tensor) -> &mut [f64] {
        match t.storage_mut() {
            Storage::CpuF64(v) => v,
            other => panic!("expected an f64 cpu tensor, got {other:?}"),
        }
    }
    fn wrap(data: Vec<f64>) -> Storage {
        Storage::CpuF64(data)
    }
}

/// Runs a generic body with `$T` bound to the Rust type of a dtype.
#[macro_export]
macro_rules! with_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::tensor::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            $crate::tensor::DType::BF16 => panic!("bf16 tensors live only on a GPU"),
        }
    };
}

impl Tensor {
    fn new(shape: &[usize], storage: Storage) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(storage),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The storage to write, which must not be shared (see the module comment).
    fn storage_mut(&mut self) -> &mut Storage {
        Arc::get_mut(&mut self.storage).expect(
            "writing a tensor whose storage is shared (a value the tape or another tensor holds)",
        )
    }

    /// Whether no other tensor shares this one's storage (it can be written in place).
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.storage) == 1
    }

    /// A copy of the values in new storage on the same device (the one explicit copy).
    pub fn deep_copy(&self) -> Tensor {
        let storage = match self.storage() {
            Storage::CpuF32(v) => Storage::CpuF32(v.clone()),
            Storage::CpuF64(v) => Storage::CpuF64(v.clone()),
            Storage::Gpu(buf) => Storage::Gpu(buf.clone()),
        };
        Tensor::new(&self.shape, storage)
    }

    pub fn from_vec<T: Element>(shape: &[usize], data: Vec<T>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} elements",
            data.len()
        );
        Tensor::new(shape, T::wrap(data))
    }

    /// A tensor of no elements (a placeholder for a value given up).
    pub fn empty() -> Tensor {
        Tensor::from_vec::<f32>(&[0], Vec::new())
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        let n = shape.iter().product();
        with_dtype!(dtype, T => Tensor::from_vec::<T>(shape, vec![0.0; n]))
    }

    pub fn full(shape: &[usize], dtype: DType, value: f64) -> Tensor {
        let n = shape.iter().product();
        with_dtype!(dtype, T => Tensor::from_vec::<T>(shape, vec![T::from_f64(value); n]))
    }

    /// A tensor in a device buffer of exactly `shape`'s size (its dtype is the buffer's).
    pub fn from_gpu(shape: &[usize], buf: Buffer) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            buf.len(),
            "shape {shape:?} does not match the buffer"
        );
        Tensor::new(shape, Storage::Gpu(buf))
    }

    /// A fresh (uninitialised) f32 tensor on `gpu`, for a kernel to write.
    pub fn gpu_output(gpu: &Gpu, shape: &[usize]) -> Tensor {
        Tensor::gpu_output_as(gpu, shape, Elem::F32)
    }

    /// A fresh (uninitialised) tensor of element type `elem` on `gpu`.
    pub fn gpu_output_as(gpu: &Gpu, shape: &[usize], elem: Elem) -> Tensor {
        Tensor::from_gpu(shape, gpu.alloc(shape.iter().product(), elem))
    }

    pub fn dtype(&self) -> DType {
        match self.storage() {
            Storage::CpuF32(_) => DType::F32,
            Storage::CpuF64(_) => DType::F64,
            Storage::Gpu(buf) => match buf.elem() {
                Elem::F32 => DType::F32,
                Elem::Bf16 => DType::BF16,
            },
        }
    }

    /// The GPU holding this tensor, if any.
    pub fn gpu(&self) -> Option<&Gpu> {
        match self.storage() {
            Storage::Gpu(buf) => Some(buf.gpu()),
            _ => None,
        }
    }

    pub fn device(&self) -> Device {
        self.gpu()
            .map_or(Device::Cpu, |gpu| Device::Gpu(gpu.clone()))
    }

    pub fn buffer(&self) -> &Buffer {
        match self.storage() {
            Storage::Gpu(buf) => buf,
            other => panic!("expected a gpu tensor, got {other:?}"),
        }
    }

    pub fn buffer_mut(&mut self) -> &mut Buffer {
        match self.storage_mut() {
            Storage::Gpu(buf) => buf,
            other => panic!("expected a gpu tensor, got {other:?}"),
        }
    }

    /// The same values on `device`: shared when already there, else copied (f64 becomes f32
    /// on a GPU).
    pub fn to_device(&self, device: &Device) -> Tensor {
        match (device, self.gpu()) {
            (Device::Cpu, None) => self.clone(),
            (Device::Cpu, Some(_)) => Tensor::from_vec(&self.shape, self.to_f32_vec()),
            (Device::Gpu(gpu), Some(on)) if on == gpu => self.clone(),
            (Device::Gpu(gpu), _) => Tensor::from_gpu(&self.shape, gpu.upload(&self.to_f32_vec())),
        }
    }

    /// The first `n` rows of a [rows, d] tensor on its device: itself when it has no more.
    pub fn first_rows(&self, n: usize) -> Tensor {
        let (rows, d) = (self.shape[0], self.shape[1]);
        if rows <= n {
            return self.clone();
        }
        match self.gpu() {
            Some(gpu) => Tensor::from_gpu(&[n, d], gpu.concat(&[(self.buffer(), n * d)])),
            None => with_dtype!(self.dtype(), T => {
                Tensor::from_vec(&[n, d], self.as_slice::<T>()[..n * d].to_vec())
            }),
        }
    }

    /// Zeros of the same shape, dtype and device.
    pub fn zeros_like(&self) -> Tensor {
        match self.gpu() {
            Some(gpu) => {
                Tensor::from_gpu(&self.shape, gpu.zeros(self.numel(), self.buffer().elem()))
            }
            None => Tensor::zeros(&self.shape, self.dtype()),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn as_slice<T: Element>(&self) -> &[T] {
        T::slice(self)
    }

    pub fn as_mut_slice<T: Element>(&mut self) -> &mut [T] {
        T::slice_mut(self)
    }

    /// Copies the values out as f64 (for tests, metrics and checkpoints; never on a hot path).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        if self.gpu().is_some() {
            return self.to_f32_vec().into_iter().map(f64::from).collect();
        }
        with_dtype!(self.dtype(), T => self.as_slice::<T>().iter().map(|&v| v.to_f64()).collect())
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        if let Storage::Gpu(buf) = self.storage() {
            return buf.gpu().download_f32(buf);
        }
        with_dtype!(self.dtype(), T => self.as_slice::<T>().iter().map(|&v| v.to_f64() as f32).collect())
    }

    /// The single value of a one-element tensor (a loss).
    pub fn item(&self) -> f64 {
        assert_eq!(
            self.numel(),
            1,
            "item() of a tensor of shape {:?}",
            self.shape
        );
        self.to_f64_vec()[0]
    }

    pub fn from_f64(shape: &[usize], dtype: DType, values: &[f64]) -> Tensor {
        with_dtype!(dtype, T => Tensor::from_vec::<T>(shape, values.iter().map(|&v| T::from_f64(v)).collect()))
    }

    /// Same values, another element type.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        Tensor::from_f64(&self.shape, dtype, &self.to_f64_vec())
    }
}
