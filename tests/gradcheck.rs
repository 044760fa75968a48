//! Central finite-difference gradient checks, in f64, of every op with a backward pass, on
//! random shapes. For an op y = f(x₁, x₂, …) and a random R, the scalar L = Σ y·R is
//! differentiated by the tape (seeding dL/dy = R) and numerically:
//! dL/dx ≈ (L(x + ε) − L(x − ε)) / 2ε, element by element.

use simclr::autograd::{Graph, Var};
use simclr::ops;
use simclr::rng::Rng;
use simclr::tensor::{DType, Tensor};

const EPS: f64 = 1e-6;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_f64(shape, DType::F64, &v)
}

/// Checks the gradient of every input of `f` against central differences.
fn check(name: &str, inputs: Vec<Tensor>, f: impl Fn(&mut Graph, &[Var]) -> Var) {
    check_with(name, inputs, EPS, 1e-6, f);
}

/// `check` with its step `eps` and relative L2 `tolerance` chosen by the caller.
fn check_with(
    name: &str,
    inputs: Vec<Tensor>,
    eps: f64,
    tolerance: f64,
    f: impl Fn(&mut Graph, &[Var]) -> Var,
) {
    let mut rng = Rng::new(99);
    let eval = |inputs: &[Tensor]| -> Tensor {
        let mut g = Graph::new(true);
        let vars: Vec<Var> = inputs.iter().map(|t| g.variable(t.clone())).collect();
        let out = f(&mut g, &vars);
        g.value(out).clone()
    };
    let out_shape = eval(&inputs).shape;
    let r = random(&out_shape, &mut rng);
    let dot = |y: &Tensor| -> f64 {
        y.to_f64_vec()
            .iter()
            .zip(r.to_f64_vec())
            .map(|(a, b)| a * b)
            .sum()
    };

    let mut g = Graph::new(true);
    let vars: Vec<Var> = inputs.iter().map(|t| g.variable(t.clone())).collect();
    let out = f(&mut g, &vars);
    g.backward_from(out, r.clone());

    for (i, input) in inputs.iter().enumerate() {
        let analytic = g
            .grad(vars[i])
            .map(|t| t.to_f64_vec())
            .unwrap_or_else(|| vec![0.0; input.numel()]);
        let mut numeric = vec![0.0; input.numel()];
        let base = input.to_f64_vec();
        for j in 0..input.numel() {
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut args = inputs.clone();
                args[i] = Tensor::from_f64(&input.shape, DType::F64, &v);
                dot(&eval(&args))
            };
            numeric[j] = (probe(eps) - probe(-eps)) / (2.0 * eps);
        }
        let diff: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let norm: f64 = numeric.iter().map(|b| b * b).sum::<f64>().max(1e-20);
        let rel = (diff / norm).sqrt();
        assert!(
            rel < tolerance,
            "{name}: input {i} gradient off by relative L2 {rel:e}\nanalytic {:?}\nnumeric  {:?}",
            &analytic[..analytic.len().min(8)],
            &numeric[..numeric.len().min(8)]
        );
    }
}

#[test]
fn conv2d() {
    let mut rng = Rng::new(1);
    // (n, h, w, c, k, kernel, stride, pad)
    for &(n, h, w, c, k, r, stride, pad) in &[
        (2, 5, 6, 3, 4, 3, 1, 1),
        (1, 7, 7, 2, 3, 3, 2, 1),
        (2, 6, 5, 3, 5, 1, 2, 0),
        (1, 9, 8, 2, 3, 7, 2, 3),
    ] {
        let x = random(&[n, h, w, c], &mut rng);
        let wt = random(&[k, r, r, c], &mut rng);
        check("conv2d", vec![x, wt], |g, v| {
            ops::conv::conv2d(g, v[0], v[1], stride, pad)
        });
    }
}

#[test]
fn batch_norm_train() {
    let mut rng = Rng::new(2);
    // With and without the fused ReLU.
    for (shape, center, relu) in [
        (vec![3, 4, 5, 3], true, false),
        (vec![7, 5], false, false),
        (vec![2, 3, 3, 6], true, true),
        (vec![9, 4], false, true),
    ] {
        let c = *shape.last().unwrap();
        let x = random(&shape, &mut rng);
        let gamma = random(&[c], &mut rng);
        let beta = random(&[c], &mut rng);
        check("batch_norm", vec![x, gamma, beta], |g, v| {
            let mut mean = Tensor::zeros(&[c], DType::F64);
            let mut var = Tensor::full(&[c], DType::F64, 1.0);
            let beta = center.then_some(v[2]);
            ops::batchnorm::batch_norm_train(g, v[0], v[1], beta, None, relu, &mut mean, &mut var)
        });
    }
}

/// A residual block's end as one op: batch norm, + skip, ReLU (the gradient reaches the skip).
#[test]
fn batch_norm_add_relu() {
    let mut rng = Rng::new(7);
    for (shape, relu) in [(vec![2, 3, 3, 4], true), (vec![6, 5], false)] {
        let c = *shape.last().unwrap();
        let x = random(&shape, &mut rng);
        let skip = random(&shape, &mut rng);
        let gamma = random(&[c], &mut rng);
        let beta = random(&[c], &mut rng);
        check("batch_norm+add", vec![x, gamma, beta, skip], |g, v| {
            let mut mean = Tensor::zeros(&[c], DType::F64);
            let mut var = Tensor::full(&[c], DType::F64, 1.0);
            let (beta, skip) = (Some(v[2]), Some(v[3]));
            ops::batchnorm::batch_norm_train(g, v[0], v[1], beta, skip, relu, &mut mean, &mut var)
        });
    }
}

#[test]
fn relu_add_and_pools() {
    let mut rng = Rng::new(3);
    let a = random(&[2, 5, 7, 3], &mut rng);
    let b = random(&[2, 5, 7, 3], &mut rng);
    check("relu", vec![a.clone()], |g, v| {
        ops::elementwise::relu(g, v[0])
    });
    check("add", vec![a.clone(), b], |g, v| {
        ops::elementwise::add(g, v[0], v[1])
    });
    check("maxpool", vec![a.clone()], |g, v| {
        ops::pool::maxpool2d(g, v[0], 3, 2, 1)
    });
    check("global_avg_pool", vec![a], |g, v| {
        ops::pool::global_avg_pool(g, v[0])
    });
}

#[test]
fn avg_pool_same_padding() {
    let mut rng = Rng::new(6);
    // Odd H and W: 'SAME' pads after the image and the edge windows hold fewer elements;
    // 3×3 windows also pad before and overlap at stride 1.
    for (shape, kernel, stride) in [
        ([2, 7, 5, 3], 2, 2),
        ([1, 5, 7, 5], 2, 2),
        ([1, 7, 5, 3], 3, 2),
        ([2, 5, 7, 3], 3, 1),
        ([1, 6, 4, 3], 2, 2),
    ] {
        let x = random(&shape, &mut rng);
        check("avg_pool2d", vec![x], |g, v| {
            ops::pool::avg_pool2d(g, v[0], kernel, stride)
        });
    }
}

#[test]
fn selective_kernel() {
    let mut rng = Rng::new(7);
    for (n, h, w, c) in [(2, 7, 5, 3), (1, 5, 7, 5), (2, 3, 3, 13)] {
        let x = random(&[n, h, w, 2 * c], &mut rng);
        let logits = random(&[n, 1, 1, 2 * c], &mut rng);
        check("sk_pool", vec![x.clone()], |g, v| ops::sk::sk_pool(g, v[0]));
        check("sk_combine", vec![x, logits], |g, v| {
            ops::sk::sk_combine(g, v[0], v[1])
        });
    }
}

/// The cast f64 → f32 (the CPU's pair; f32 ↔ bf16 is the same node on a GPU). Its output is
/// rounded to f32 (~6e-8 relative), so the differences take a wide step: the op is linear, and
/// with ε = 1e-2 the rounding moves each quotient by ~1e-5.
#[test]
fn cast() {
    let x = random(&[4, 5], &mut Rng::new(6));
    check_with("cast", vec![x], 1e-2, 1e-4, |g, v| {
        ops::cast::cast(g, v[0], DType::F32)
    });
}

#[test]
fn linear_and_l2_normalize() {
    let mut rng = Rng::new(4);
    let x = random(&[5, 7], &mut rng);
    let w = random(&[3, 7], &mut rng);
    let b = random(&[3], &mut rng);
    check("linear+bias", vec![x.clone(), w.clone(), b], |g, v| {
        ops::gemm::linear(g, v[0], v[1], Some(v[2]))
    });
    check("linear", vec![x.clone(), w], |g, v| {
        ops::gemm::linear(g, v[0], v[1], None)
    });
    check("l2_normalize", vec![x], |g, v| {
        ops::normalize::l2_normalize(g, v[0])
    });
}

#[test]
fn losses() {
    let mut rng = Rng::new(5);
    for (rows, d, t) in [(6, 5, 0.1), (10, 3, 0.5), (2, 4, 0.2)] {
        let z = random(&[rows, d], &mut rng);
        check("ntxent∘l2_normalize", vec![z.clone()], |g, v| {
            let z = ops::normalize::l2_normalize(g, v[0]);
            ops::ntxent::ntxent(g, z, t)
        });
        // With a memory of past rows (unit rows, as the memory holds): extra negatives, constants.
        let mut pg = Graph::new(false);
        let past = pg.input(random(&[rows + 3, d], &mut rng));
        let past = ops::normalize::l2_normalize(&mut pg, past);
        let past = pg.value(past).clone();
        check("ntxent with memory∘l2_normalize", vec![z], |g, v| {
            let z = ops::normalize::l2_normalize(g, v[0]);
            let mut memory = ops::ntxent::Memory {
                size: 2 * rows,
                rows: Some(past.clone()),
            };
            ops::ntxent::ntxent_with_memory(g, z, &mut memory, t)
        });
    }
    let logits = random(&[6, 4], &mut rng);
    let labels = [0u32, 3, 1, 1, 2, 0];
    check("softmax_cross_entropy", vec![logits.clone()], |g, v| {
        ops::loss::softmax_cross_entropy(g, v[0], &labels)
    });
    let teacher = ops::loss::softmax(&random(&[6, 4], &mut rng), 2.0);
    let u = ops::loss::UNLABELLED;
    for (alpha, labels) in [(0.0, [u; 6]), (0.3, [u, 2, u, 1, 0, u])] {
        check("distillation", vec![logits.clone()], |g, v| {
            ops::loss::distillation(g, v[0], &teacher, 2.0, &labels, alpha)
        });
    }
}
