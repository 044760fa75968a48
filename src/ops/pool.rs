//! Max pooling (the ImageNet stem), average pooling (the ResNet-D shortcut) and global average
//! pooling (the encoder's output).

use crate::autograd::{Backward, Graph, Values, Var};
use crate::backend;
use crate::device::cpu::pool::{AvgPoolShape, PoolShape};
use crate::tensor::Tensor;

fn check_nhwc(op: &str, shape: &[usize]) {
    assert!(
        shape.len() == 4 && shape[1] * shape[2] > 0,
        "{op}: expected an [N, H, W, C] input with H, W > 0, got {shape:?}"
    );
}

pub fn maxpool2d(g: &mut Graph, x: Var, kernel_size: usize, stride: usize, pad: usize) -> Var {
    let xv = g.value(x);
    check_nhwc("maxpool2d", &xv.shape);
    let shape = PoolShape {
        n: xv.shape[0],
        h: xv.shape[1],
        w: xv.shape[2],
        c: xv.shape[3],
        kernel: kernel_size,
        stride,
        pad,
    };
    let y = backend::of(xv).maxpool_forward(&shape, xv);
    g.push(y, MaxPool { x, shape })
}

struct MaxPool {
    x: Var,
    shape: PoolShape,
}

impl Backward for MaxPool {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let dx = backend::of(&dy).maxpool_backward(&self.shape, v.get(self.x), &dy);
        vec![(self.x, dx)]
    }
}

/// Average pooling with TensorFlow's 'SAME' padding: [N, H, W, C] → [N, ⌈H/stride⌉,
/// ⌈W/stride⌉, C], each window averaging only its in-image elements (padding not counted), as
/// the official ResNet-D shortcut's `AveragePooling2D(2, 2, 'SAME')`.
pub fn avg_pool2d(g: &mut Graph, x: Var, kernel_size: usize, stride: usize) -> Var {
    let xv = g.value(x);
    check_nhwc("avg_pool2d", &xv.shape);
    assert!(
        kernel_size * stride > 0,
        "avg_pool2d: kernel {kernel_size} and stride {stride} must be nonzero"
    );
    let shape = AvgPoolShape {
        n: xv.shape[0],
        h: xv.shape[1],
        w: xv.shape[2],
        c: xv.shape[3],
        kernel: kernel_size,
        stride,
    };
    let y = backend::of(xv).avg_pool_forward(&shape, xv);
    g.push(y, AvgPool { x, shape })
}

struct AvgPool {
    x: Var,
    shape: AvgPoolShape,
}

impl Backward for AvgPool {
    fn backward(&self, _: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        vec![(self.x, backend::of(&dy).avg_pool_backward(&self.shape, &dy))]
    }
}

/// [N, H, W, C] → [N, C].
pub fn global_avg_pool(g: &mut Graph, x: Var) -> Var {
    let xv = g.value(x);
    check_nhwc("global_avg_pool", &xv.shape);
    let y = backend::of(xv).global_avg_pool_forward(xv);
    g.push(y, GlobalAvgPool { x })
}

struct GlobalAvgPool {
    x: Var,
}

impl Backward for GlobalAvgPool {
    fn backward(&self, v: &Values, dy: Tensor) -> Vec<(Var, Tensor)> {
        let dx = backend::of(&dy).global_avg_pool_backward(&v.get(self.x).shape, &dy);
        vec![(self.x, dx)]
    }
}
