//! SimCLR augmentation of one batch of views: the kernels of `--augment-on device`
//! (kernels/augment.cu) against the loader's CPU path (`render` per view on rayon's threads).
//! Full size: 512 views (two of each of 256 images) at 224 px from 256×256×3 u8 images, the
//! paper's views (bicubic resize, colour jitter of strength 1, grayscale, blur). Without a GPU:
//! 64 views at 64 px from 72×72×3 images (still bicubic, with blur) on the emulator and the cpu.
//! The device cases time the kernels alone: the u8 images and the views are on the device
//! already (their copy is the step's upload, a quarter of the f32 batch's bytes).

mod common;

use common::Work;
use rayon::prelude::*;
use simclr::data::augment::{render, Augment, Normalize, ViewParams};
use simclr::device::cuda::augment::augment;
use simclr::device::Device;
use simclr::rng::Rng;

fn main() {
    let setup = common::setup(
        "augment",
        "512 views at 224 px from 256x256x3",
        "64 views at 64 px from 72x72x3",
    );
    let (views, size, side) = if setup.full {
        (512, 224, 256)
    } else {
        (64, 64, 72)
    };
    let (images, c) = (views / 2, 3);
    let mut crit = common::criterion(&setup);
    let mut rng = Rng::new(7);
    let pixels: Vec<u8> = (0..images * side * side * c)
        .map(|_| rng.below(256) as u8)
        .collect();
    let aug = Augment::simclr(size, 1.0);
    let params: Vec<ViewParams> = (0..views)
        .map(|r| ViewParams {
            image: (r % images) as u32,
            ..aug.sample(side, side, c, &mut Rng::derive(7, &[r as u64]))
        })
        .collect();
    let norm = Normalize {
        mean: vec![0.5; c],
        std: vec![0.25; c],
    };
    let frame = aug.frame();
    let row = size * size * c;
    let work = Work::Images(views as f64);
    for device in &setup.devices {
        let mut time = |case: String, run: &mut dyn FnMut(usize)| {
            common::time(&mut crit, "augment", &case, device, work, run)
        };
        match device {
            Device::Cpu => {
                let mut out = vec![0f32; views * row];
                let image = side * side * c;
                time(format!("f32_v{views}_s{size}"), &mut |_| {
                    out.par_chunks_mut(row).zip(&params).for_each(|(o, v)| {
                        let i = v.image as usize;
                        let img = &pixels[i * image..(i + 1) * image];
                        render(img, side, side, c, v, &frame, &norm, o);
                    })
                });
            }
            Device::Gpu(gpu) => {
                let (u8s, views_buf) = (gpu.upload(&pixels), gpu.upload(&params));
                for dtype in common::precisions(device) {
                    let mut out = gpu.alloc(views * row, dtype.elem());
                    let shape = (side, side, c);
                    time(format!("{}_v{views}_s{size}", dtype.name()), &mut |_| {
                        augment(gpu, &u8s, shape, &views_buf, views, &frame, &norm, &mut out)
                    });
                }
            }
        }
    }
    crit.final_summary();
}
