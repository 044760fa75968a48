//! The emulator's own tests, on the tiny kernels of kernels/emu/selftest.cu: correct kernels
//! give exact results under every schedule, and deliberately broken ones are caught (a wrong
//! answer under rr or warp, or a launch error naming the problem). The tests of documented
//! semantics (shuffles, mma, ldmatrix, cp.async, vector accesses, dynamic shared memory) also
//! run on a real GPU when there is one (scripts/gpu_suite.sh): the hardware checks the
//! emulator's reading of the PTX ISA.

mod common;

use simclr::device::cuda::{Arg, Gpu, GpuError, Schedule};
use simclr::rng::Rng;

/// Whole numbers 1..=8 as f32: sums are exact in any order, and never cancel to the right
/// answer by accident (a dropped term always makes a sum smaller).
fn small_ints(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (1 + rng.below(8)) as f32).collect()
}

/// f32 → bf16 bits, rounding to nearest even (as the kernels' float_to_bf16).
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Block sums of `x` in blocks of 256 threads, by the correct or the barrier-less kernel.
fn block_sums(gpu: &Gpu, kernel: &str, x: &[f32]) -> Vec<f32> {
    let blocks = x.len().div_ceil(256);
    let xb = gpu.upload(x);
    let out = gpu.alloc_f32(blocks);
    let args = [Arg::from(&xb), Arg::from(x.len() as i32), Arg::from(&out)];
    gpu.try_launch(kernel, [blocks as u32, 1, 1], [256, 1, 1], 0, &args)
        .unwrap();
    gpu.download(&out)
}

/// One sum per warp of `x` (a multiple of 128 long, in blocks of 128 threads).
fn warp_sums(gpu: &Gpu, kernel: &str, x: &[f32]) -> Vec<f32> {
    let xb = gpu.upload(x);
    let out = gpu.alloc_f32(x.len() / 32);
    let grid = [(x.len() / 128) as u32, 1, 1];
    gpu.try_launch(
        kernel,
        grid,
        [128, 1, 1],
        0,
        &[Arg::from(&xb), Arg::from(&out)],
    )
    .unwrap();
    gpu.download(&out)
}

/// The launch error of a kernel taking one output pointer (64 threads), as text.
fn launch_error(kernel: &str, block: [u32; 3]) -> String {
    let gpu = Gpu::emu(Schedule::Rr);
    let out = gpu.alloc_f32(1024);
    let x = gpu.upload(&small_ints(1024, 9));
    let args: Vec<Arg> = if kernel == "selftest_warp_sum" {
        vec![Arg::from(&x), Arg::from(&out)]
    } else {
        vec![Arg::from(&out)]
    };
    match gpu.try_launch(kernel, [1, 1, 1], block, 0, &args) {
        Ok(()) => panic!("{kernel} with block {block:?} launched without an error"),
        Err(e @ GpuError::Launch { .. }) => e.to_string(),
        Err(e) => panic!("{kernel}: not a launch error: {e}"),
    }
}

#[test]
fn block_reduction_is_exact_under_every_schedule() {
    let x = small_ints(1000, 1);
    let want: Vec<f32> = x.chunks(256).map(|c| c.iter().sum()).collect();
    for schedule in Schedule::ALL {
        let got = block_sums(&Gpu::emu(schedule), "selftest_block_sum", &x);
        assert_eq!(got, want, "schedule {}", schedule.name());
    }
}

#[test]
fn missing_barrier_gives_a_wrong_sum_under_rr_or_warp() {
    let x = small_ints(1000, 2);
    let want: Vec<f32> = x.chunks(256).map(|c| c.iter().sum()).collect();
    let caught: Vec<&str> = [Schedule::Rr, Schedule::Warp]
        .into_iter()
        .filter(|&s| block_sums(&Gpu::emu(s), "selftest_block_sum_missing_barrier", &x) != want)
        .map(|s| s.name())
        .collect();
    assert!(
        !caught.is_empty(),
        "neither rr nor warp exposed the missing barrier"
    );
}

#[test]
fn warp_sum_is_exact_under_every_schedule() {
    let x = small_ints(256, 3);
    let want: Vec<f32> = x.chunks(32).map(|c| c.iter().sum()).collect();
    for schedule in Schedule::ALL {
        let got = warp_sums(&Gpu::emu(schedule), "selftest_warp_sum", &x);
        assert_eq!(got, want, "schedule {}", schedule.name());
    }
}

#[test]
fn wrong_shuffle_width_gives_a_wrong_sum() {
    let x = small_ints(256, 4);
    let want: Vec<f32> = x.chunks(32).map(|c| c.iter().sum()).collect();
    for schedule in [Schedule::Rr, Schedule::Warp] {
        let got = warp_sums(&Gpu::emu(schedule), "selftest_warp_sum_width16", &x);
        assert_ne!(got, want, "schedule {}", schedule.name());
    }
}

/// Shuffles with sub-warp widths and out-of-range sources, ballot, any and all, against the
/// CUDA Programming Guide's description of each.
#[test]
fn shuffle_variants_follow_the_cuda_documentation() {
    let x: Vec<i32> = small_ints(32, 5).iter().map(|&v| v as i32).collect();
    let ballot = (0..32)
        .filter(|&l| x[l] % 3 == 0)
        .fold(0u32, |b, l| b | 1 << l);
    let any = x.iter().any(|&v| v == x[7]) as i32;
    let all = x.iter().all(|&v| v > 0) as i32;
    let mut want = Vec::new();
    for lane in 0..32usize {
        // __shfl_sync(v, 5·lane + 3, width 8): srcLane modulo width, within the lane's segment.
        let idx = lane / 8 * 8 + (lane * 5 + 3) % 8;
        // __shfl_up_sync(v, 3, 16): the lowest 3 lanes of each segment keep their own value.
        let up = if lane % 16 >= 3 { lane - 3 } else { lane };
        // __shfl_down_sync(v, 5, 8): the highest 5 lanes of each segment keep their own value.
        let down = if lane % 8 + 5 < 8 { lane + 5 } else { lane };
        // __shfl_xor_sync(v, 20, 16): a source in a later segment gives the lane its own value.
        let xor = if lane ^ 20 < (lane / 16 + 1) * 16 {
            lane ^ 20
        } else {
            lane
        };
        want.extend([x[idx], x[up], x[down], x[xor], ballot as i32, any + 2 * all]);
    }
    for (name, gpu) in common::gpus() {
        let xb = gpu.upload(&x);
        let out = gpu.alloc_f32(32 * 6);
        gpu.try_launch(
            "selftest_shuffles",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &[Arg::from(&xb), Arg::from(&out)],
        )
        .unwrap();
        assert_eq!(gpu.download::<i32>(&out), want, "{name}");
    }
}

#[test]
fn dynamic_shared_memory_is_per_block_and_starts_as_0xff() {
    let (threads, blocks) = (96usize, 3usize);
    let x = common::random(threads * blocks, 6);
    for schedule in Schedule::ALL {
        let gpu = Gpu::emu(schedule);
        let xb = gpu.upload(&x);
        let y = gpu.alloc_f32(x.len());
        let fill = gpu.zeros_f32(x.len());
        let args = [Arg::from(&xb), Arg::from(&y), Arg::from(&fill)];
        gpu.try_launch(
            "selftest_dynamic_shared",
            [blocks as u32, 1, 1],
            [threads as u32, 1, 1],
            4 * threads as u32,
            &args,
        )
        .unwrap();
        let want: Vec<f32> = x
            .chunks(threads)
            .flat_map(|c| c.iter().rev().map(|v| 2.0 * v))
            .collect();
        assert_eq!(
            gpu.download::<f32>(&y),
            want,
            "schedule {}",
            schedule.name()
        );
        assert!(gpu.download::<u32>(&fill).iter().all(|&w| w == 0xffff_ffff));
    }
}

/// The emulated mma.sync equals the f32 product of the bf16-rounded inputs: products of two
/// bf16 are exact in f32, so only the order of the 16 additions may differ.
#[test]
fn mma_tile_equals_the_product_of_the_bf16_inputs() {
    let a: Vec<u16> = common::random(16 * 16, 7)
        .into_iter()
        .map(bf16_bits)
        .collect();
    let bt: Vec<u16> = common::random(8 * 16, 8)
        .into_iter()
        .map(bf16_bits)
        .collect();
    let c = common::random(16 * 8, 9);
    for (name, gpu) in common::gpus() {
        let (ab, bb, cb) = (gpu.upload(&a), gpu.upload(&bt), gpu.upload(&c));
        let d = gpu.alloc_f32(16 * 8);
        let args = [
            Arg::from(&ab),
            Arg::from(&bb),
            Arg::from(&cb),
            Arg::from(&d),
        ];
        gpu.try_launch("selftest_mma", [1, 1, 1], [32, 1, 1], 0, &args)
            .unwrap();
        let got = gpu.download::<f32>(&d);
        for row in 0..16 {
            for col in 0..8 {
                let (mut want, mut scale) =
                    (c[row * 8 + col] as f64, c[row * 8 + col].abs() as f64);
                for k in 0..16 {
                    let p =
                        bf16_value(a[row * 16 + k]) as f64 * bf16_value(bt[col * 16 + k]) as f64;
                    want += p;
                    scale += p.abs();
                }
                let err = (got[row * 8 + col] as f64 - want).abs();
                assert!(
                    err <= 1e-6 * scale,
                    "{name}: D[{row}][{col}] = {} but A·B + C = {want}",
                    got[row * 8 + col]
                );
            }
        }
    }
}

#[test]
fn threads_and_blocks_are_numbered_x_fastest() {
    let (block, grid) = ([5u32, 3, 2], [3u32, 2, 2]);
    let (per_block, blocks) = (5 * 3 * 2, 3 * 2 * 2);
    let pack = |v: [u32; 3]| v[0] | v[1] << 10 | v[2] << 20;
    let gpu = Gpu::emu(Schedule::Warp);
    let out = gpu.alloc_f32(4 * per_block * blocks);
    gpu.try_launch("selftest_indices", grid, block, 0, &[Arg::from(&out)])
        .unwrap();
    let got = gpu.download::<u32>(&out);
    for i in 0..per_block * blocks {
        let (t, b) = ((i % per_block) as u32, (i / per_block) as u32);
        let thread = [t % 5, t / 5 % 3, t / 15];
        let block_idx = [b % 3, b / 3 % 2, b / 6];
        assert_eq!(
            got[4 * i..4 * i + 4],
            [pack(thread), pack(block_idx), pack(block), pack(grid)]
        );
    }
}

#[test]
fn atomics_from_many_blocks_add_up() {
    let x = small_ints(100_000, 10);
    let gpu = Gpu::emu(Schedule::Rr);
    let xb = gpu.upload(&x);
    let sum = gpu.zeros_f32(1);
    let count = gpu.zeros_f32(1);
    let args = [
        Arg::from(&xb),
        Arg::from(x.len() as i32),
        Arg::from(&sum),
        Arg::from(&count),
    ];
    gpu.try_launch(
        "selftest_atomics",
        [x.len().div_ceil(128) as u32, 1, 1],
        [128, 1, 1],
        0,
        &args,
    )
    .unwrap();
    assert_eq!(gpu.download::<f32>(&sum)[0], x.iter().sum::<f32>());
    assert_eq!(gpu.download::<u32>(&count)[0], x.len() as u32);
}

#[test]
fn early_return_before_a_barrier_is_a_deadlock() {
    let e = launch_error("selftest_early_return", [64, 1, 1]);
    assert!(
        e.contains("deadlock") && e.contains("exited") && e.contains("__syncthreads"),
        "{e}"
    );
}

#[test]
fn different_barriers_are_a_deadlock() {
    let e = launch_error("selftest_divergent_barriers", [64, 1, 1]);
    assert!(e.contains("deadlock"), "{e}");
}

#[test]
fn partial_warp_mask_is_refused() {
    let e = launch_error("selftest_partial_mask", [64, 1, 1]);
    assert!(e.contains("mask 0x0000ffff"), "{e}");
}

#[test]
fn shuffle_in_a_partial_warp_is_refused() {
    let e = launch_error("selftest_warp_sum", [48, 1, 1]);
    assert!(e.contains("partial last warp"), "{e}");
}

#[test]
fn more_than_1024_threads_is_refused() {
    let e = launch_error("selftest_early_return", [64, 32, 1]);
    assert!(e.contains("1024"), "{e}");
}

#[test]
fn unknown_kernel_is_an_error() {
    let e = launch_error("selftest_no_such_kernel", [32, 1, 1]);
    assert!(e.contains("unknown kernel"), "{e}");
}

#[test]
fn vector_accesses_copy_16_bytes_and_refuse_misaligned_addresses() {
    let x = common::random(4 * 64 + 4, 20);
    for (name, gpu) in common::gpus() {
        let (xb, y) = (gpu.upload(&x), gpu.alloc_f32(4 * 64));
        let args = |offset: i32| [Arg::from(&xb), offset.into(), Arg::from(&y)];
        gpu.try_launch("selftest_copy_16B", [2, 1, 1], [32, 1, 1], 0, &args(4))
            .unwrap();
        assert_eq!(gpu.download::<f32>(&y), x[4..], "{name}");
        // A float offset of 1: the 16-byte load's address is 4 bytes past a multiple of 16. (On
        // a GPU that is a fault that ends the context: the emulator alone checks it.)
        if !gpu.is_emulated() {
            continue;
        }
        let e = gpu
            .try_launch("selftest_copy_16B", [2, 1, 1], [32, 1, 1], 0, &args(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("misaligned 16-byte load"), "{e}");
    }
}

/// ldmatrix gives each lane the b16 pair the PTX ISA's layout names: of matrix i, row lane/4
/// and columns 2·(lane%4), +1, or the same of the transpose; x1, x2 and x4.
#[test]
fn ldmatrix_follows_the_ptx_fragment_layout() {
    let m: Vec<u16> = (0..4 * 64).map(|e| 0x1000 + e as u16).collect();
    for (name, gpu) in common::gpus() {
        let mb = gpu.upload(&m);
        for count in [1usize, 2, 4] {
            for trans in [false, true] {
                let out = gpu.alloc_f32(32 * 4);
                let args = [
                    Arg::from(&mb),
                    (count as i32).into(),
                    (trans as i32).into(),
                    8i32.into(),
                    Arg::from(&out),
                ];
                gpu.try_launch("selftest_ldmatrix", [1, 1, 1], [32, 1, 1], 0, &args)
                    .unwrap();
                let got = gpu.download::<u32>(&out);
                for lane in 0..32 {
                    for i in 0..count {
                        let (r, c) = (lane / 4, 2 * (lane % 4));
                        let at = |row: usize, col: usize| m[64 * i + 8 * row + col] as u32;
                        let want = match trans {
                            false => at(r, c) | at(r, c + 1) << 16,
                            true => at(c, r) | at(c + 1, r) << 16,
                        };
                        assert_eq!(
                            got[4 * lane + i],
                            want,
                            "{name}: x{count}, trans {trans}, lane {lane}, matrix {i}"
                        );
                    }
                }
            }
        }
        // Rows 9 b16 apart: row addresses are not 16-byte aligned (the emulator alone).
        if !gpu.is_emulated() {
            continue;
        }
        let out = gpu.alloc_f32(32 * 4);
        let args = [
            Arg::from(&mb),
            4i32.into(),
            0i32.into(),
            9i32.into(),
            Arg::from(&out),
        ];
        let e = gpu
            .try_launch("selftest_ldmatrix", [1, 1, 1], [32, 1, 1], 0, &args)
            .unwrap_err()
            .to_string();
        assert!(e.contains("misaligned ldmatrix row"), "{e}");
    }
}

/// cp.async: the copied and the zero-filled bytes arrive at the wait; a thread that reads
/// before its neighbour has waited reads NaN, under every schedule.
#[test]
fn cp_async_lands_at_the_wait_and_a_missing_wait_shows() {
    let n = 64;
    let x = common::random(4 * n, 21);
    for (name, gpu) in common::gpus() {
        let xb = gpu.upload(&x);
        for src_bytes in [16, 8, 0] {
            let y = gpu.alloc_f32(4 * n);
            let args = [Arg::from(&xb), src_bytes.into(), 1i32.into(), Arg::from(&y)];
            gpu.try_launch("selftest_cp_async", [1, 1, 1], [n as u32, 1, 1], 0, &args)
                .unwrap();
            let got = gpu.download::<f32>(&y);
            for t in 0..n {
                let u = (t + 1) % n;
                for k in 0..4 {
                    let want = if 4 * k < src_bytes as usize {
                        x[4 * u + k]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        got[4 * t + k],
                        want,
                        "{name}: src_bytes {src_bytes}, thread {t}"
                    );
                }
            }
        }
        // Without the wait, every thread reads its neighbour's copy still in flight (on a GPU
        // it may or may not have landed: the emulator alone checks it).
        if !gpu.is_emulated() {
            continue;
        }
        let y = gpu.alloc_f32(4 * n);
        let args = [Arg::from(&xb), 16i32.into(), 0i32.into(), Arg::from(&y)];
        gpu.try_launch("selftest_cp_async", [1, 1, 1], [n as u32, 1, 1], 0, &args)
            .unwrap();
        assert!(gpu.download::<f32>(&y).iter().all(|v| v.is_nan()));
    }
}

/// cp_async_wait<1> completes all but the most recent group: a double-buffered pipeline's
/// next stage is still in flight while the current one is read.
#[test]
fn cp_async_wait_leaves_the_most_recent_groups_in_flight() {
    let n = 96;
    let (x, z) = (common::random(n, 22), common::random(n, 23));
    for (name, gpu) in common::gpus() {
        let (xb, zb, y) = (gpu.upload(&x), gpu.upload(&z), gpu.alloc_f32(3 * n));
        let args = [Arg::from(&xb), Arg::from(&zb), Arg::from(&y)];
        let (grid, block) = ([1, 1, 1], [n as u32, 1, 1]);
        gpu.try_launch("selftest_cp_async_groups", grid, block, 0, &args)
            .unwrap();
        let got = gpu.download::<f32>(&y);
        assert_eq!(got[..n], x[..], "{name}");
        assert_eq!(got[2 * n..], z[..], "{name}");
        // On a GPU the second group may have landed early; on the emulator it has not.
        if gpu.is_emulated() {
            assert!(got[n..2 * n].iter().all(|v| v.is_nan()), "{name}");
        }
    }
}

/// Above 48 KiB of dynamic shared memory a kernel must opt in, as on a GPU; up to the 163 KiB
/// an sm_80 GPU allows.
#[test]
fn dynamic_shared_memory_above_48_kib_needs_the_opt_in() {
    let n = 20_000; // 80 KB
    let x = common::random(n, 24);
    let want: Vec<f32> = x.iter().rev().map(|v| 2.0 * v).collect();
    for (name, gpu) in common::gpus_one_schedule() {
        let (xb, y) = (gpu.upload(&x), gpu.alloc_f32(n));
        let args = [Arg::from(&xb), (n as i32).into(), Arg::from(&y)];
        let launch = || {
            let shared = 4 * n as u32;
            gpu.try_launch("selftest_big_shared", [1, 1, 1], [128, 1, 1], shared, &args)
                .map_err(|e| e.to_string())
        };
        if gpu.is_emulated() {
            let e = launch().unwrap_err();
            assert!(e.contains("48 KiB") && e.contains("opt-in"), "{e}");
            let e = gpu
                .allow_dynamic_shared("selftest_big_shared", 200 * 1024)
                .unwrap_err()
                .to_string();
            assert!(e.contains("sm_80"), "{e}");
        }
        gpu.allow_dynamic_shared("selftest_big_shared", 4 * n as u32)
            .unwrap();
        launch().unwrap();
        assert_eq!(gpu.download::<f32>(&y), want, "{name}");
    }
}
