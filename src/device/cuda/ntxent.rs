//! Host side of `kernels/ntxent.cu` (f32) and `kernels/ntxent_tc.cu` (bf16 rows, tensor cores):
//! the fused NT-Xent forward+backward, by z's element type. See ntxent.cu's top comment for the
//! algorithm, why its extra memory is O(N), and how a rank of several scores its rows against
//! every rank's and the memory's past rows: the workspace here is the 2N log-sum-exps (and, in
//! bf16 when d is not a multiple of 16, a zero-padded copy of the candidate rows, O(N·d)).

use super::{Arg, Buffer, Elem, Gpu};
use std::borrow::Cow;

/// Rows (of i, and of j per step) one block handles (NT_TILE in the kernel), 256 threads.
const TILE: usize = 64;
/// Gradient columns per block of `ntxent_grad` (NT_DC) and `ntxent_grad_bf16` (COLS); the
/// bf16 kernels also take 64-row tiles, in 128-thread blocks.
const COLS: usize = 128;
/// The widest (padded) rows the tensor-core kernels take: three 64-row tiles of them must fit
/// in shared memory (3 · 64 · (256 + 8) bf16 = 99 KiB).
const TC_MAX_DIM: usize = 256;

/// NT-Xent over `rows` = 2N L2-normalised rows z [rows, d] (row i's positive is (i + N) mod 2N):
/// loss[0] = the mean loss over the 2N anchors, grad [rows, d] = dL/dz — `cpu::ntxent::ntxent`.
pub fn ntxent(
    gpu: &Gpu,
    rows: usize,
    d: usize,
    z: &Buffer,
    temperature: f32,
    loss: &mut Buffer,
    grad: &mut Buffer,
) {
    assert!(z.len() == rows * d, "NT-Xent: z is not [{rows}, {d}]");
    // One process: z is every candidate, and its log-sum-exps are every candidate's.
    let shard = Shard::new(gpu, z, z, 0, 0, d, temperature);
    let mut lse = gpu.alloc_f32(rows);
    shard.lse(&mut lse);
    shard.loss(&lse, loss);
    shard.grad(&lse, grad);
}

/// One rank's NT-Xent among W (data parallelism, docs/ARCHITECTURE.md): its `rows` = 2n
/// L2-normalised rows z [rows, d] are rows first..first + 2n of the candidates `all` [cols, d],
/// every rank's rows gathered rank-major (first = rank · 2n), followed by `queued` rows of the
/// memory (past rows: negatives only). Three steps, between which the caller gathers the ranks'
/// log-sum-exps: `lse` of this rank's anchors, `loss`, and `grad` with every rank's lse. In one
/// process without a memory (`ntxent`) `all` is z and nothing is gathered.
pub struct Shard<'a> {
    gpu: &'a Gpu,
    /// This rank's rows, which the loss reads (its positives are among them).
    z: &'a Buffer,
    /// The candidates as the kernels read them: `all`, or in bf16 rows zero-padded to dp.
    all: Cow<'a, Buffer>,
    rows: usize,
    cols: usize,
    first: usize,
    /// The memory's rows, the last of the candidates.
    queued: usize,
    d: usize,
    /// The candidates' row stride: d, or in bf16 d rounded up to the mma's 16.
    dp: usize,
    inv_t: f32,
}

impl<'a> Shard<'a> {
    /// This rank's rows `z` among the candidates `all`, at row `first` of them, the last
    /// `queued` of which are the memory's; in bf16 this packs `all` to a multiple of 16 columns
    /// when d is not one.
    pub fn new(
        gpu: &'a Gpu,
        z: &'a Buffer,
        all: &'a Buffer,
        first: usize,
        queued: usize,
        d: usize,
        temperature: f32,
    ) -> Shard<'a> {
        let elem = Elem::common("ntxent", &[z, all]);
        assert!(
            d > 0 && z.len().is_multiple_of(d) && all.len().is_multiple_of(d),
            "NT-Xent needs rows of width d > 0"
        );
        let (rows, cols) = (z.len() / d, all.len() / d);
        assert!(
            rows >= 2 && rows.is_multiple_of(2),
            "NT-Xent needs 2N rows, got {rows}"
        );
        assert!(
            first + rows + queued <= cols,
            "NT-Xent: the anchors lie outside the candidates"
        );
        let dp = match elem {
            Elem::F32 => d,
            // The tensor-core path (kernels/ntxent_tc.cu) on rows zero-padded to a multiple of 16.
            Elem::Bf16 => d.next_multiple_of(16),
        };
        assert!(
            dp <= TC_MAX_DIM || elem == Elem::F32,
            "NT-Xent in bf16: d = {d} over {TC_MAX_DIM}"
        );
        let all = if dp == d {
            Cow::Borrowed(all)
        } else {
            let packed = gpu.alloc(cols * dp, Elem::Bf16);
            let args = [
                all.into(),
                (cols as i32).into(),
                (d as i32).into(),
                (dp as i32).into(),
                (&packed).into(),
            ];
            gpu.launch_1d("ntxent_pack_bf16", cols * dp, &args);
            Cow::Owned(packed)
        };
        Shard {
            gpu,
            z,
            all,
            rows,
            cols,
            first,
            queued,
            d,
            dp,
            inv_t: 1.0 / temperature,
        }
    }

    /// Launches a pass over 64-row tiles of anchors: blocks of 256 threads in f32, of 128 with
    /// the three bf16 tiles in dynamic shared memory on the tensor cores.
    fn launch(&self, kernel: &'static str, grid_y: usize, args: &[Arg]) {
        let grid = [self.rows.div_ceil(TILE) as u32, grid_y as u32, 1];
        match self.z.elem() {
            Elem::F32 => self.gpu.launch(kernel, grid, [256, 1, 1], 0, args),
            Elem::Bf16 => {
                let shared = (3 * TILE * (self.dp + 8) * 2) as u32;
                self.gpu.launch(kernel, grid, [128, 1, 1], shared, args)
            }
        }
    }

    /// The (rows, cols, first) arguments the kernels share.
    fn shape(&self) -> [Arg; 3] {
        [
            (self.rows as i32).into(),
            (self.cols as i32).into(),
            (self.first as i32).into(),
        ]
    }

    /// lse [rows] = this rank's anchors' log-sum-exps over every candidate but themselves.
    pub fn lse(&self, lse: &mut Buffer) {
        Elem::assert_f32("ntxent", [&*lse]);
        assert!(lse.len() == self.rows);
        let [rows, cols, first] = self.shape();
        let args = [
            (&*self.all).into(),
            rows,
            cols,
            first,
            (self.dp as i32).into(),
            self.inv_t.into(),
            lse.into(),
        ];
        let kernel = self.z.elem().pick("ntxent_lse", "ntxent_lse_bf16");
        self.launch(kernel, 1, &args);
    }

    /// loss[0] = the mean loss over this rank's anchors, from their `lse` [rows].
    pub fn loss(&self, lse: &Buffer, loss: &mut Buffer) {
        Elem::assert_f32("ntxent", [lse, &*loss]);
        assert!(lse.len() == self.rows && loss.len_f32() >= 1);
        let args = [
            self.z.into(),
            (self.rows as i32).into(),
            (self.d as i32).into(),
            self.inv_t.into(),
            lse.into(),
            loss.into(),
        ];
        let kernel = self.z.elem().pick("ntxent_loss", "ntxent_loss_bf16");
        self.gpu.launch(kernel, [1, 1, 1], [256, 1, 1], 0, &args);
    }

    /// grad [rows, d] = this rank's rows' gradient of the sum of the ranks' losses, from every
    /// rank's candidate's log-sum-exps `lse_all` [cols − queued] (rank-major, as `all`).
    pub fn grad(&self, lse_all: &Buffer, grad: &mut Buffer) {
        Elem::common("ntxent", &[self.z, grad]);
        Elem::assert_f32("ntxent", [lse_all]);
        assert!(lse_all.len() == self.cols - self.queued && grad.len() == self.rows * self.d);
        let [rows, cols, first] = self.shape();
        let elem = self.z.elem();
        let mut args = vec![
            (&*self.all).into(),
            rows,
            cols,
            first,
            (self.queued as i32).into(),
            (self.d as i32).into(),
        ];
        // The tensor-core kernel reads the candidates padded: their row stride too.
        if elem == Elem::Bf16 {
            args.push((self.dp as i32).into());
        }
        args.extend([Arg::from(self.inv_t), lse_all.into(), grad.into()]);
        let kernel = elem.pick("ntxent_grad", "ntxent_grad_bf16");
        self.launch(kernel, self.dp.div_ceil(COLS), &args);
    }
}
