//! Steps recorded and replayed as CUDA graphs (device::cuda::graph), on every device under
//! test: the emulator replays a graph launch by launch, a GPU as one graph launch. A toy
//! "training step" (upload, kernels, an in-place update of a persistent buffer, a device copy)
//! must give the same values recorded as eager, and become one graph launch once a step is
//! like the one two back (steps alternate between two sets of upload buffers).

mod common;

use simclr::device::cuda::{elementwise, Buffer, Gpu};

/// w ← w + relu(x)·s + fill, where x is uploaded, and a scratch copy made on the way.
fn step(gpu: &Gpu, w: &mut Buffer, x: &[f32], s: f32) {
    let x = gpu.upload_pinned(x);
    let mut y = gpu.alloc_f32(x.len());
    elementwise::relu_forward(gpu, &x, &mut y);
    let mut scale = gpu.alloc_f32(1);
    elementwise::fill(gpu, &mut scale, s);
    let mut z = gpu.alloc_f32(x.len());
    elementwise::scale_by(gpu, &y, &scale, &mut z);
    let copy = z.clone();
    elementwise::add_assign(gpu, w, &copy);
}

/// `steps` steps on a fresh w; every step's input is new, `scale(i)` its scalar. Returns w and
/// the steps run as graph launches.
fn run(gpu: &Gpu, graphs: bool, steps: usize, scale: impl Fn(usize) -> f32) -> (Vec<f32>, usize) {
    let n = 37;
    let mut w = gpu.upload(&common::random(n, 1));
    let before = gpu.counters();
    for i in 0..steps {
        let x = common::random(n, 100 + i as u64);
        if graphs {
            gpu.begin_step();
        }
        step(gpu, &mut w, &x, scale(i));
        if graphs {
            gpu.end_step();
        }
    }
    gpu.check().unwrap();
    (gpu.download(&w), (gpu.counters() - before).graphs)
}

#[test]
fn recorded_steps_replay_as_graphs_and_match_eager_ones() {
    for (name, gpu) in common::gpus() {
        let (want, none) = run(&gpu, false, 6, |_| 0.5);
        let (got, graphs) = run(&gpu, true, 6, |_| 0.5);
        assert_eq!(got, want, "{name}");
        assert_eq!(none, 0, "{name}");
        // Steps 0 and 1 run as recorded; steps 2 and 3 match steps 0 and 1 and make the graphs
        // of the two sides, which steps 4 and 5 replay.
        assert_eq!(graphs, 4, "{name}");
    }
}

#[test]
fn a_step_unlike_the_graph_runs_eagerly_and_makes_a_new_one() {
    for (name, gpu) in common::gpus() {
        // The scalar (a kernel argument) changes at step 3: steps 3 and 4 are unlike steps 1
        // and 2 and run eagerly; steps 5 and 6 are like them again.
        let scale = |i: usize| if i < 3 { 0.5 } else { 2.0 };
        let (want, _) = run(&gpu, false, 7, scale);
        let (got, graphs) = run(&gpu, true, 7, scale);
        assert_eq!(got, want, "{name}");
        assert_eq!(graphs, 3, "{name}"); // steps 2, 5 and 6
    }
}

#[test]
fn a_download_inside_a_step_ends_its_recording() {
    for (name, gpu) in common::gpus() {
        let mut w = gpu.upload(&[1.0f32; 5]);
        let mut outputs = Vec::new();
        for _ in 0..4 {
            gpu.begin_step();
            step(&gpu, &mut w, &[2.0; 5], 1.0);
            // The host reads w: what was recorded runs first, so it sees this step's update.
            outputs.push(gpu.download::<f32>(&w)[0]);
            gpu.end_step();
        }
        assert_eq!(outputs, vec![3.0, 5.0, 7.0, 9.0], "{name}");
        assert_eq!(gpu.counters().graphs, 0, "{name}");
    }
}
