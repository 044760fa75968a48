//! SimCLRv2's memory buffer in NT-Xent (`ops::ntxent::ntxent_with_memory`): the loss with the
//! memory's rows as extra negatives against a direct computation from the definition (in f64,
//! its gradient by central differences), and the memory as a first-in, first-out queue of every
//! step's rows, on the cpu and on the emulated GPU in f32 and bf16, filled either with the rows
//! scored or with a momentum encoder's (`ntxent_with_keys`).

mod common;

use simclr::autograd::Graph;
use simclr::device::cpu::ntxent as cpu;
use simclr::device::cuda::{Elem, Gpu, Schedule};
use simclr::ops;
use simclr::ops::ntxent::Memory;
use simclr::tensor::Tensor;

/// `rows` random rows of width d scaled to unit L2 norm, in f64.
fn unit_rows(rows: usize, d: usize, seed: u64) -> Vec<f64> {
    let mut z: Vec<f64> = common::random(rows * d, seed)
        .iter()
        .map(|&v| v as f64)
        .collect();
    for row in z.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    z
}

/// NT-Xent of the 2N rows z with the rows `memory` as extra negatives, from the definition:
/// the mean over the anchors i of −log(exp(z_i·z_pos(i)/τ) / Σ_c exp(z_i·c/τ)), c over every
/// row of z but z_i, then every row of the memory.
fn direct(z: &[f64], memory: &[f64], d: usize, t: f64) -> f64 {
    let rows = z.len() / d;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / t;
    let mut loss = 0.0;
    for (i, zi) in z.chunks(d).enumerate() {
        let pos = &z[(i + rows / 2) % rows * d..][..d];
        let others = z.chunks(d).enumerate().filter(|&(j, _)| j != i);
        let denominator: f64 = (others.map(|(_, c)| c).chain(memory.chunks(d)))
            .map(|c| dot(zi, c).exp())
            .sum();
        loss -= (dot(zi, pos).exp() / denominator).ln();
    }
    loss / rows as f64
}

#[test]
fn loss_with_memory_matches_its_definition() {
    // (2N, d, K): odd widths and memories, one smaller than the batch.
    for (case, (rows, d, k)) in [(6, 5, 7), (10, 3, 13), (2, 4, 1), (8, 17, 40)]
        .into_iter()
        .enumerate()
    {
        let t = [0.1, 0.5, 1.0, 0.2][case];
        let z = unit_rows(rows, d, 10 + case as u64);
        let memory = unit_rows(k, d, 20 + case as u64);
        let what = format!("2N={rows} d={d} K={k} τ={t}");
        let (loss, grad) = cpu::ntxent(&z, &memory, d, t);
        let want = direct(&z, &memory, d, t);
        assert!(
            (loss - want).abs() < 1e-12 * want.abs().max(1.0),
            "{what}: loss {loss}, by definition {want}"
        );
        // The gradient of z alone (the memory's rows are constants), by central differences.
        let eps = 1e-6;
        for (e, &g) in grad.iter().enumerate() {
            let at = |delta: f64| {
                let mut zp = z.clone();
                zp[e] += delta;
                direct(&zp, &memory, d, t)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (g - numeric).abs() < 1e-6 * numeric.abs().max(1.0),
                "{what}: dL/dz[{e}] = {g}, by differences {numeric}"
            );
        }
        // An empty memory is plain NT-Xent.
        let plain = cpu::ntxent(&z, &[], d, t);
        let wanted = direct(&z, &[], d, t);
        assert!(
            (plain.0 - wanted).abs() < 1e-12 * wanted.abs().max(1.0),
            "{what}"
        );
    }
}

/// Four steps through the op on the cpu (`gpu` None) or a GPU in `elem`: each step's loss
/// against the cpu reference with the memory the steps before should have left (their rows,
/// newest first, K at most), and the memory left after each step. `with_keys`: each step
/// gives other rows (a momentum encoder's) to keep than those it scores.
fn check_fifo(gpu: Option<&Gpu>, elem: Elem, with_keys: bool, tolerance: f64) {
    let (rows, d, k, t) = (6, 5, 15, 0.2);
    let what = gpu.map_or("cpu".to_string(), |g| format!("{} {elem:?}", g.name()));
    let what = format!("{what}, keys {with_keys}");
    let upload = |rows: &[f32]| match gpu {
        Some(gpu) => Tensor::from_gpu(&[rows.len() / d, d], gpu.upload_as(rows, elem)),
        None => Tensor::from_vec(&[rows.len() / d, d], rows.to_vec()),
    };
    let mut memory = Memory {
        size: k,
        rows: None,
    };
    // The rows every step scored, newest first: what the memory should hold, cut to K.
    let mut history: Vec<f32> = Vec::new();
    for step in 0..4 {
        let z: Vec<f32> = (unit_rows(rows, d, 30 + step).iter())
            .map(|&v| v as f32)
            .collect();
        let z = common::as_stored(elem, z);
        let kept = &history[..history.len().min(k * d)];
        let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let m64: Vec<f64> = kept.iter().map(|&v| v as f64).collect();
        let (want, _) = cpu::ntxent(&z64, &m64, d, t);

        let mut g = Graph::new(true);
        let zv = g.input(upload(&z));
        let (loss, kept) = match with_keys {
            false => (
                ops::ntxent::ntxent_with_memory(&mut g, zv, &mut memory, t),
                z,
            ),
            true => {
                let keys: Vec<f32> = (unit_rows(rows, d, 50 + step).iter())
                    .map(|&v| v as f32)
                    .collect();
                let keys = common::as_stored(elem, keys);
                let loss =
                    ops::ntxent::ntxent_with_keys(&mut g, zv, &mut memory, &upload(&keys), t);
                (loss, keys)
            }
        };
        let got = g.value(loss).item();
        assert!(
            (got - want).abs() < tolerance * want.abs(),
            "{what}, step {step}: loss {got}, want {want}"
        );
        history = [&kept[..], &history[..]].concat();
        let held = memory.rows.as_ref().expect("a memory after a step");
        let n = ((step as usize + 1) * rows).min(k);
        assert_eq!(held.shape, [n, d], "{what}, step {step}");
        assert_eq!(
            held.to_f32_vec(),
            &history[..n * d],
            "{what}, step {step}: the memory's rows"
        );
    }
}

#[test]
fn memory_keeps_the_newest_rows_first_in_first_out() {
    let gpu = Gpu::emu(Schedule::Rr);
    for with_keys in [false, true] {
        check_fifo(None, Elem::F32, with_keys, 1e-6);
        for elem in [Elem::F32, Elem::Bf16] {
            check_fifo(Some(&gpu), elem, with_keys, 1e-5);
        }
    }
}
