//! Host side of `kernels/loss.cu`: softmax, softmax cross-entropy and distillation, one warp
//! per row. Each loss writes one normalised term per row into a workspace that a single block
//! then sums in a fixed order into the 1-float `loss` buffer (deterministic, no atomics).
//! Labels are u32 buffers; `cpu::loss::UNLABELLED` marks rows without one.

use super::{Arg, Buffer, Elem, Gpu};

const THREADS: u32 = 256;
/// One warp per row.
const ROWS_PER_BLOCK: usize = THREADS as usize / 32;

fn row_blocks(rows: usize) -> [u32; 3] {
    [rows.div_ceil(ROWS_PER_BLOCK) as u32, 1, 1]
}

/// loss[0] = Σ terms (one block).
fn sum(gpu: &Gpu, terms: &Buffer, n: usize, loss: &mut Buffer) {
    gpu.launch(
        "loss_sum",
        [1, 1, 1],
        [THREADS, 1, 1],
        0,
        &[terms.into(), (n as i32).into(), loss.into()],
    );
}

/// probs = softmax(logits / temperature), row by row ([rows, classes]).
pub fn softmax(
    gpu: &Gpu,
    rows: usize,
    classes: usize,
    logits: &Buffer,
    temperature: f32,
    probs: &mut Buffer,
) {
    Elem::assert_f32("softmax", [logits, &*probs]);
    assert!(logits.len_f32() >= rows * classes && probs.len_f32() >= rows * classes);
    if rows == 0 {
        return;
    }
    gpu.launch(
        "softmax_rows",
        row_blocks(rows),
        [THREADS, 1, 1],
        0,
        &[
            logits.into(),
            (rows as i32).into(),
            (classes as i32).into(),
            temperature.into(),
            probs.into(),
        ],
    );
}

/// Mean softmax cross-entropy of `logits` [rows, classes] against `labels` (every label
/// < classes) into loss[0]; grad = (softmax − onehot)/rows.
pub fn softmax_cross_entropy(
    gpu: &Gpu,
    rows: usize,
    classes: usize,
    logits: &Buffer,
    labels: &Buffer,
    loss: &mut Buffer,
    grad: &mut Buffer,
) {
    Elem::assert_f32("softmax_cross_entropy", [logits, &*loss, &*grad]);
    assert!(logits.len_f32() >= rows * classes && grad.len_f32() >= rows * classes);
    assert!(labels.len_f32() >= rows && loss.len_f32() >= 1 && rows > 0);
    let terms = gpu.alloc_f32(rows);
    gpu.launch(
        "cross_entropy_rows",
        row_blocks(rows),
        [THREADS, 1, 1],
        0,
        &[
            logits.into(),
            labels.into(),
            (rows as i32).into(),
            (classes as i32).into(),
            (&terms).into(),
            grad.into(),
        ],
    );
    sum(gpu, &terms, rows, loss);
}

/// Distillation of the student `logits` towards `teacher_probs` (softened with `temperature`),
/// mixed with cross-entropy on the labelled rows when alpha > 0 — `cpu::loss::distillation`:
/// loss[0] = (1−α)·mean_rows(−Σ p_T log softmax(logits/τ)) + α·mean_labelled(cross-entropy),
/// grad = (1−α)(p_S − p_T)/(τ·rows) + α·(softmax − onehot)/labelled on labelled rows.
#[allow(clippy::too_many_arguments)]
pub fn distillation(
    gpu: &Gpu,
    rows: usize,
    classes: usize,
    logits: &Buffer,
    teacher_probs: &Buffer,
    temperature: f32,
    labels: &Buffer,
    alpha: f32,
    loss: &mut Buffer,
    grad: &mut Buffer,
) {
    Elem::assert_f32("distillation", [logits, teacher_probs, &*loss, &*grad]);
    let len = rows * classes;
    assert!(logits.len_f32() >= len && teacher_probs.len_f32() >= len && grad.len_f32() >= len);
    assert!(labels.len_f32() >= rows && loss.len_f32() >= 1 && rows > 0);
    // The labelled count stays on the device: no host round trip.
    let labelled = gpu.alloc_f32(1);
    gpu.launch(
        "count_labelled",
        [1, 1, 1],
        [THREADS, 1, 1],
        0,
        &[labels.into(), (rows as i32).into(), (&labelled).into()],
    );
    let terms = gpu.alloc_f32(rows);
    let args: [Arg; 10] = [
        logits.into(),
        teacher_probs.into(),
        labels.into(),
        (rows as i32).into(),
        (classes as i32).into(),
        temperature.into(),
        alpha.into(),
        (&labelled).into(),
        (&terms).into(),
        grad.into(),
    ];
    gpu.launch(
        "distillation_rows",
        row_blocks(rows),
        [THREADS, 1, 1],
        0,
        &args,
    );
    sum(gpu, &terms, rows, loss);
}
