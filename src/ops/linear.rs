//! Dense layer y = x·Wᵀ + b with x [B, in], W [out, in] (PyTorch's layout), b [out].
//! All three products go through the one GEMM; transposes are only strides.

use crate::autograd::{Graph, Op, Var};
use crate::device::cpu::gemm::gemm;
use crate::device::cuda::{elementwise as gpu_ew, gemm as gpu_gemm};
use crate::tensor::Tensor;
use crate::with_dtype;

pub fn linear(g: &mut Graph, x: Var, w: Var, b: Option<Var>) -> Var {
    let (xv, wv) = (g.value(x), g.value(w));
    let (rows, inp, out) = (xv.shape[0], xv.shape[1], wv.shape[0]);
    assert_eq!(
        wv.shape[1], inp,
        "linear: weight {:?} does not fit input {:?}",
        wv.shape, xv.shape
    );
    let y = match xv.gpu() {
        Some(gpu) => {
            let mut y = Tensor::gpu_output(gpu, &[rows, out]);
            gpu_gemm::gemm(
                gpu,
                rows,
                out,
                inp,
                xv.buffer(),
                false,
                wv.buffer(),
                true,
                y.buffer_mut(),
                false,
            );
            if let Some(b) = b {
                gpu_ew::bias_add(gpu, rows, out, y.buffer_mut(), g.value(b).buffer());
            }
            y
        }
        None => with_dtype!(xv.dtype(), T => {
            let mut y = vec![T::default(); rows * out];
            if let Some(b) = b {
                for row in y.chunks_mut(out) {
                    row.copy_from_slice(g.value(b).as_slice::<T>());
                }
            }
            gemm(rows, out, inp, xv.as_slice::<T>(), inp, 1, wv.as_slice::<T>(), 1, inp, &mut y, out, b.is_some());
            Tensor::from_vec(&[rows, out], y)
        }),
    };
    g.push(y, Op::Linear { x, w, b })
}

pub(crate) fn backward(
    (x, xv): (Var, &Tensor),
    (w, wv): (Var, &Tensor),
    b: Option<Var>,
    dy: &Tensor,
) -> Vec<(Var, Tensor)> {
    let (rows, inp, out) = (xv.shape[0], xv.shape[1], wv.shape[0]);
    if let Some(gpu) = xv.gpu() {
        let mut dx = Tensor::gpu_output(gpu, &xv.shape);
        gpu_gemm::gemm(
            gpu,
            rows,
            inp,
            out,
            dy.buffer(),
            false,
            wv.buffer(),
            false,
            dx.buffer_mut(),
            false,
        );
        let mut dw = Tensor::gpu_output(gpu, &wv.shape);
        gpu_gemm::gemm(
            gpu,
            out,
            inp,
            rows,
            dy.buffer(),
            true,
            xv.buffer(),
            false,
            dw.buffer_mut(),
            false,
        );
        let mut grads = vec![(x, dx), (w, dw)];
        if let Some(b) = b {
            let mut db = Tensor::gpu_output(gpu, &[out]);
            gpu_ew::sum_rows(gpu, rows, out, dy.buffer(), db.buffer_mut());
            grads.push((b, db));
        }
        return grads;
    }
    with_dtype!(dy.dtype(), T => {
        let (xs, ws, dys) = (xv.as_slice::<T>(), wv.as_slice::<T>(), dy.as_slice::<T>());
        let mut dx = vec![T::default(); rows * inp];
        gemm(rows, inp, out, dys, out, 1, ws, inp, 1, &mut dx, inp, false);
        let mut dw = vec![T::default(); out * inp];
        gemm(out, inp, rows, dys, 1, out, xs, inp, 1, &mut dw, inp, false);
        let mut grads = vec![(x, Tensor::from_vec(&xv.shape, dx)), (w, Tensor::from_vec(&wv.shape, dw))];
        if let Some(b) = b {
            let mut db = vec![T::default(); out];
            for row in dys.chunks(out) {
                for (d, &g) in db.iter_mut().zip(row) {
                    *d += g;
                }
            }
            grads.push((b, Tensor::from_vec(&[out], db)));
        }
        grads
    })
}
