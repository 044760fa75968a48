//! The `simclr` trainer: one binary for the three SimCLRv2 stages, evaluation and the whole
//! pipeline. Every failure ends in one line on stderr and a non-zero exit.

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use simclr::error::{Error, Result};
use simclr::nn::model::Model;
use simclr::optim::schedule::LrScaling;
use simclr::optim::OptimizerKind;
use simclr::train::budget;
use simclr::train::checkpoint;
use simclr::train::config::{Config, StageConfig};
use simclr::train::metrics::{default_out_dir, prepare_out_dir};
use simclr::train::pipeline::{check_input, evaluate, pipeline};
use simclr::train::trainer::Monitor;
use simclr::train::{stages, Context};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "simclr",
    version,
    about = "SimCLRv2 from scratch: pretrain, fine-tune, distill"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Baseline, pretraining, fine-tuning and distillation in turn; writes report.json.
    Pipeline(Opts),
    /// Contrastive pretraining (NT-Xent, LARS) on the training images, labels unused.
    Pretrain(Opts),
    /// Fine-tune a pretrained checkpoint from head layer 1 on the labelled subset; without
    /// --from, train the same network from scratch (the supervised baseline).
    Finetune {
        /// Pretraining checkpoint (file or run directory).
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Distill a fine-tuned teacher into a student on the unlabelled training images.
    Distill {
        /// Fine-tuned checkpoint (file or run directory).
        #[arg(long)]
        teacher: PathBuf,
        #[command(flatten)]
        opts: Opts,
    },
    /// kNN top-1 of any checkpoint (its encoder), and test top-1 of one with a classifier.
    Eval {
        #[arg(long)]
        ckpt: PathBuf,
        /// Linear evaluation of a pretrained checkpoint: a classifier trained on its frozen
        /// encoder (Nesterov SGD, crop + flip; --epochs/--lr/--batch-size set its recipe)
        #[arg(long)]
        linear: bool,
        #[command(flatten)]
        opts: Opts,
    },
    /// Parameter counts and feature width of an architecture (no data, nothing allocated).
    Info {
        /// resnet8, resnet18, resnet34, resnet50, resnet101 or resnet152
        #[arg(long, default_value = "resnet50")]
        arch: String,
        /// 1x, 2x, 3x or channels of the first stage
        #[arg(long, default_value = "1x", value_parser = parse_width)]
        width: usize,
        /// Selective kernels + ResNet-D
        #[arg(long)]
        sk: bool,
        /// Input images (the stem depends on it: below 64 px, the small-image stem)
        #[arg(long, default_value_t = 224)]
        image_size: usize,
        #[arg(long, default_value_t = 3)]
        in_channels: usize,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// What a dataset directory holds: format, splits, image count and size, classes.
    Data {
        /// Dataset directory [default: the bundled Fashion-MNIST]
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        source: Source,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Write a checkpoint's encoder (+ classifier) with torchvision's ResNet names and OIHW
    /// layout, loadable by torchvision.models.resnetN() with strict=True.
    Export {
        /// Checkpoint (file or run directory)
        #[arg(long)]
        ckpt: PathBuf,
        /// Target naming; only "torchvision"
        #[arg(long)]
        to: String,
        /// Output .safetensors file
        out: PathBuf,
        /// Replace an existing output file
        #[arg(long)]
        force: bool,
    },
    /// Logits and predicted class of every image of a dataset, as JSON lines.
    Predict {
        /// Checkpoint with a classifier (file or run directory)
        #[arg(long)]
        ckpt: PathBuf,
        /// Dataset directory (its test split, or all images when it has none)
        #[arg(long)]
        data: PathBuf,
        /// Output file (JSON lines, in the dataset's order)
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing output file
        #[arg(long)]
        force: bool,
        #[arg(long)]
        format: Option<simclr::data::Format>,
        /// auto, cpu, cuda, cuda:N or emu [default: auto]
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Loss, learning-rate, kNN and top-1 curves of a run (its metrics.jsonl files), as PNG and
    /// SVG under <RUN_DIR>/plots.
    Plot { run_dir: PathBuf },
    /// Write an image folder as tar shards (WebDataset convention: NNNNNN.jpg, .cls, .path;
    /// classes.txt), which --data then reads streamed
    Pack {
        /// The image folder
        #[arg(long)]
        data: PathBuf,
        /// Output directory for the shards
        out: PathBuf,
        /// Shard size in MB
        #[arg(long, default_value_t = 1024)]
        shard_mb: u64,
        /// Write into an existing non-empty output directory
        #[arg(long)]
        force: bool,
    },
    /// Start data-parallel ranks on this machine, torchrun-style, one per GPU:
    /// simclr launch --nproc-per-node 8 -- pretrain --device cuda --out runs/big
    Launch(simclr::dist::launch::Launch),
    /// Images/s, read rate and peak memory of the streaming loader over one epoch of an image
    /// folder (decode + two SimCLR views); writes a synthetic ImageNet-like folder first when
    /// --data does not exist.
    BenchLoader(simclr::train::bench_loader::BenchLoader),
}

/// Flags shared by every command. Unset flags take the preset's value. Number flags accept a
/// negative value, so that the config's check names what is wrong with it.
#[derive(Args)]
struct Opts {
    /// Dataset directory (format detected from the files present) [default: the bundled Fashion-MNIST]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Labelled subset: N per class ("10"), a fraction ("1%" or "0.01"), or "all"
    #[arg(long)]
    labels: Option<String>,
    /// Labelled subset as a file of image file names, one per line (overrides --labels)
    #[arg(long)]
    labels_file: Option<PathBuf>,
    #[command(flatten)]
    source: Source,
    /// default (the CPU run of the README) or tiny (a smoke test under a minute)
    #[arg(long, default_value = "default")]
    preset: String,
    /// Epochs of the stage being run (pretraining, for pipeline)
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size of the stage being run (pretraining, for pipeline; images, not views)
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate of the stage being run (pretraining, for pipeline)
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// NT-Xent temperature
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// Pretraining: keep the last K projections (every view, K a multiple of 2 × the batch) as
    /// extra NT-Xent negatives, SimCLRv2's memory buffer (0: off)
    #[arg(long)]
    memory_size: Option<usize>,
    /// Pretraining: fill the memory buffer from a momentum encoder (MoCo's, as in SimCLRv2's
    /// appendix) whose weights follow the trained network's, w ← m·w + (1 − m)·w_trained after
    /// every step (0: from the trained network itself)
    #[arg(long, allow_negative_numbers = true)]
    memory_momentum: Option<f64>,
    /// Encoder: resnet8 (a small CPU model), resnet18, resnet34, resnet50, resnet101, resnet152
    #[arg(long)]
    arch: Option<String>,
    /// Width: 1x, 2x, 3x (the paper's multipliers of 64 channels) or the first stage's channels
    #[arg(long, value_parser = parse_width)]
    width: Option<usize>,
    /// Selective kernels in every block (ratio 1/16), with the ResNet-D stem and shortcuts
    #[arg(long)]
    sk: bool,
    /// Seed of every random choice: init, subsets, data order, augmentations [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// auto, cpu, cuda, cuda:N or emu (the CUDA kernels on the CPU emulator) [default: auto]
    #[arg(long)]
    device: Option<String>,
    /// bf16: on a GPU, bf16 activations (tensor cores; f32 weights, statistics and losses);
    /// on the cpu, f32 activations and bf16 products in every gemm (AMX tiles where present).
    /// auto = bf16 on cuda, f32 on cpu and emu [default: auto]
    #[arg(long)]
    precision: Option<String>,
    /// Where training views are augmented: device (kernels, from u8 images in page-locked
    /// memory) or cpu (threads); auto = device on cuda, cpu on cpu and emu [default: auto]
    #[arg(long)]
    augment_on: Option<String>,
    /// Run the steady-state training step as one CUDA graph: on or off (launch by launch) [default: on]
    #[arg(long, value_parser = on_off)]
    cuda_graphs: Option<bool>,
    /// Image folders: decode batch by batch with bounded memory (on), all up front into memory
    /// (off), or on when the decoded images would take over 4 GiB (auto) [default: auto]
    #[arg(long)]
    stream: Option<String>,
    /// Decode workers of a streamed image folder [default: all cores but one]
    #[arg(long)]
    workers: Option<usize>,
    /// Output directory [default: runs/<timestamp>]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write into an existing non-empty --out
    #[arg(long)]
    force: bool,
    /// Continue the run in --out from its last checkpoints (same command and flags)
    #[arg(long)]
    resume: bool,
    /// Also checkpoint every N steps (besides every epoch's end)
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Use a seeded subset of N training images
    #[arg(long)]
    train_images: Option<usize>,
    /// Evaluate on the first N test images
    #[arg(long)]
    test_images: Option<usize>,
    /// Pretraining learning-rate scaling with batch size: linear (lr*B/256), sqrt (lr*sqrt(B)) or none
    #[arg(long)]
    lr_scaling: Option<LrScaling>,
    /// Optimizer of the stage being run: lars or sgd
    #[arg(long)]
    optimizer: Option<OptimizerKind>,
    /// Weight decay of the stage being run
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Colour-jitter strength of the pretraining augmentation
    #[arg(long, allow_negative_numbers = true)]
    color_strength: Option<f64>,
    /// Smallest crop area fraction of the random resized crop
    #[arg(long, allow_negative_numbers = true)]
    crop_min: Option<f64>,
    /// Neighbours of the kNN monitor
    #[arg(long)]
    knn_k: Option<usize>,
    /// Training images in the kNN monitor's memory bank
    #[arg(long)]
    knn_bank: Option<usize>,
    /// Wall-clock budget of pipeline, which sets every stage's length from its measured speed:
    /// 90s, 15m, 1h30m, or off (the stages' epochs) [default preset: 15m]
    #[arg(long)]
    budget: Option<String>,
    /// Labelled training images outside the labelled subset that choose pipeline's learning
    /// rates (the validation split) [default: 5000]
    #[arg(long)]
    val_images: Option<usize>,
    /// Baseline epochs (in pipeline)
    #[arg(long)]
    baseline_epochs: Option<usize>,
    /// Baseline learning rate (in pipeline), or several separated by commas, each tried on
    /// the validation split
    #[arg(long)]
    baseline_lr: Option<String>,
    /// Fine-tuning epochs (in pipeline)
    #[arg(long)]
    finetune_epochs: Option<usize>,
    /// Fine-tuning learning rate (in pipeline), or several separated by commas, each tried on
    /// the validation split
    #[arg(long)]
    finetune_lr: Option<String>,
    /// Fine-tuning batch size (in pipeline)
    #[arg(long)]
    finetune_batch_size: Option<usize>,
    /// Distillation epochs (in pipeline)
    #[arg(long)]
    distill_epochs: Option<usize>,
    /// Student encoder
    #[arg(long)]
    student_arch: Option<String>,
    /// Student width (1x, 2x, 3x or channels)
    #[arg(long, value_parser = parse_width)]
    student_width: Option<usize>,
    /// Distillation temperature
    #[arg(long, allow_negative_numbers = true)]
    distill_temperature: Option<f64>,
    /// Weight of the label loss mixed into distillation on labelled images
    #[arg(long, allow_negative_numbers = true)]
    distill_label_weight: Option<f64>,
}

/// `--width`: "1x", "2x", "3x" (multiples of the paper's 64 channels) or a channel count.
fn parse_width(s: &str) -> std::result::Result<usize, String> {
    let bad = || format!("{s}: expected 1x, 2x, 3x or a number of channels");
    match s.strip_suffix('x') {
        Some(m) => m.parse::<usize>().map(|m| m * 64).map_err(|_| bad()),
        None => s.parse().map_err(|_| bad()),
    }
}

/// How to read a dataset directory.
#[derive(Args, Clone)]
struct Source {
    /// Dataset format: idx, cifar10, cifar100, stl10, folder or shards [default: detected]
    #[arg(long)]
    format: Option<simclr::data::Format>,
    /// Resize images to N×N (image folders: 224 unless given) [default: native size]
    #[arg(long)]
    image_size: Option<usize>,
}

impl Source {
    fn load_options(&self) -> simclr::data::LoadOptions {
        simclr::data::LoadOptions {
            format: self.format,
            image_size: self.image_size,
            skip_unlabelled: false,
            ..Default::default()
        }
    }
}

/// The command's stage, which --epochs, --batch-size, --lr, --optimizer and --weight-decay
/// apply to (pretraining's for pipeline).
#[derive(Clone, Copy)]
enum Target {
    Pipeline,
    Pretrain,
    Baseline,
    Finetune,
    Distill,
    Linear,
}

/// `--baseline-lr`, `--finetune-lr`: one rate (the stage's), or several (its grid).
fn set_rates(flag: &str, stage: &mut StageConfig, value: &Option<String>) -> Result<()> {
    let Some(value) = value else {
        return Ok(());
    };
    let rates = value
        .split(',')
        .map(|r| r.trim().parse::<f64>())
        .collect::<std::result::Result<Vec<f64>, _>>()
        .map_err(|_| {
            Error::Config(format!(
                "{flag} {value}: expected a learning rate or several separated by commas"
            ))
        })?;
    match rates[..] {
        [lr] => (stage.lr, stage.lr_grid) = (lr, Vec::new()),
        _ => stage.lr_grid = rates,
    }
    Ok(())
}

/// `on` or `off`, as a flag's value.
fn on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("expected on or off, not {s}")),
    }
}

impl Opts {
    fn config(&self, target: Target) -> Result<Config> {
        let mut c = Config::preset(&self.preset)?;
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut c.data, &self.data);
        set(&mut c.labels, &self.labels);
        set(&mut c.temperature, &self.temperature);
        set(&mut c.memory_size, &self.memory_size);
        set(&mut c.memory_momentum, &self.memory_momentum);
        set(&mut c.arch, &self.arch);
        set(&mut c.width, &self.width);
        c.sk |= self.sk;
        set(&mut c.seed, &self.seed);
        set(&mut c.device, &self.device);
        set(&mut c.precision, &self.precision);
        set(&mut c.augment_on, &self.augment_on);
        set(&mut c.cuda_graphs, &self.cuda_graphs);
        set(&mut c.stream, &self.stream);
        set(&mut c.workers, &self.workers);
        set(&mut c.pretrain.lr_scaling, &self.lr_scaling);
        set(&mut c.color_strength, &self.color_strength);
        set(&mut c.crop_min, &self.crop_min);
        set(&mut c.knn_k, &self.knn_k);
        set(&mut c.knn_bank, &self.knn_bank);
        set(&mut c.val_images, &self.val_images);
        set(&mut c.baseline.epochs, &self.baseline_epochs);
        set_rates("--baseline-lr", &mut c.baseline, &self.baseline_lr)?;
        set(&mut c.finetune.epochs, &self.finetune_epochs);
        set_rates("--finetune-lr", &mut c.finetune, &self.finetune_lr)?;
        set(&mut c.finetune.batch_size, &self.finetune_batch_size);
        set(&mut c.distill.epochs, &self.distill_epochs);
        set(&mut c.student_arch, &self.student_arch);
        set(&mut c.student_width, &self.student_width);
        set(&mut c.distill_temperature, &self.distill_temperature);
        set(&mut c.distill_label_weight, &self.distill_label_weight);
        set(&mut c.checkpoint_every, &self.checkpoint_every);
        if self.source.format.is_some() {
            c.format = self.source.format;
        }
        if self.source.image_size.is_some() {
            c.image_size = self.source.image_size;
        }
        if self.labels_file.is_some() {
            c.labels_file = self.labels_file.clone();
        }
        c.resume = self.resume;
        if self.train_images.is_some() {
            c.train_images = self.train_images;
        }
        if self.test_images.is_some() {
            c.test_images = self.test_images;
        }
        self.set_budget(&mut c, target)?;
        let stage = match target {
            Target::Pipeline | Target::Pretrain => &mut c.pretrain,
            Target::Baseline => &mut c.baseline,
            Target::Finetune => &mut c.finetune,
            Target::Distill => &mut c.distill,
            Target::Linear => &mut c.linear,
        };
        set(&mut stage.epochs, &self.epochs);
        set(&mut stage.batch_size, &self.batch_size);
        set(&mut stage.lr, &self.lr);
        set(&mut stage.optimizer, &self.optimizer);
        set(&mut stage.weight_decay, &self.weight_decay);
        Ok(c)
    }

    /// `--budget` (pipeline's alone). An explicit stage length turns the preset's budget off;
    /// with an explicit budget it is refused, as both would set the stages' lengths.
    fn set_budget(&self, c: &mut Config, target: Target) -> Result<()> {
        if !matches!(target, Target::Pipeline) {
            if self.budget.is_some() {
                return Err(Error::Config(
                    "--budget is pipeline's: the other commands run their --epochs".into(),
                ));
            }
            c.budget_s = None;
            return Ok(());
        }
        let lengths = [
            self.epochs,
            self.baseline_epochs,
            self.finetune_epochs,
            self.distill_epochs,
        ];
        let lengths = lengths.iter().any(Option::is_some);
        match self.budget.as_deref().map(budget::parse).transpose()? {
            Some(Some(_)) if lengths => Err(Error::Config(
                "--budget and --epochs, --baseline-epochs, --finetune-epochs or --distill-epochs \
                 both set the stages' lengths: give one or the other (or --budget off)"
                    .into(),
            )),
            Some(budget_s) => {
                c.budget_s = budget_s;
                Ok(())
            }
            None if lengths => {
                c.budget_s = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The run's directory, prepared by `ctx`'s rank 0 (the one that writes); the ranks of a
    /// data-parallel run must be given it (a default name would differ between them).
    fn out_dir(&self, ctx: &Context) -> Result<PathBuf> {
        if ctx.comm.size() > 1 && self.out.is_none() {
            return Err(Error::Config(
                "a data-parallel run needs --out: every rank must name the same directory".into(),
            ));
        }
        if self.resume {
            // A resumed run writes into its own directory, which must hold a run.
            let dir = self.out.clone().ok_or_else(|| {
                Error::Config("--resume needs --out <the run's directory>".into())
            })?;
            if !dir.is_dir() {
                return Err(Error::Config(format!(
                    "--resume: {} is not a run directory",
                    dir.display()
                )));
            }
            return Ok(dir);
        }
        let dir = self.out.clone().unwrap_or_else(default_out_dir);
        if ctx.is_main() {
            prepare_out_dir(&dir, self.force)?;
        }
        Ok(dir)
    }
}

/// An output file that exists is replaced only with --force: nothing is lost by accident.
fn keep_existing(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        return Err(Error::Config(format!(
            "{}: exists (pass --force to replace it)",
            out.display()
        )));
    }
    Ok(())
}

/// `--arch`/`--width` given with a checkpoint must agree with it.
fn check_arch(opts: &Opts, ckpt: &Path, model: &Model) -> Result<()> {
    let a = &model.spec.arch;
    let arch_differs = opts.arch.as_ref().is_some_and(|x| *x != a.name);
    let width_differs = opts.width.is_some_and(|w| w != a.width);
    if arch_differs || width_differs {
        return Err(Error::Checkpoint(format!(
            "{} holds a {} of width {}, not the --arch/--width asked for",
            ckpt.display(),
            a.name,
            a.width
        )));
    }
    Ok(())
}

/// The commands that neither train nor evaluate (`info`, `data`, `export`, `predict`, `plot`)
/// run in one process: on W ranks each would do, and write, the same thing W times. A process
/// that a launcher started as a rank is refused without joining the world (no MPI, no NCCL).
fn one_process(command: &str) -> Result<()> {
    match simclr::dist::launched_world() {
        1 => Ok(()),
        w => Err(Error::Config(format!(
            "`simclr {command}` runs in one process, not on {w} ranks: start it without \
             mpirun, srun or `simclr launch` (the commands that run on ranks are pipeline, \
             pretrain, finetune, distill and eval)"
        ))),
    }
}

fn run(cli: Cli) -> Result<()> {
    simclr::device::cpu::keep_freed_memory();
    match cli.command {
        Command::Pack {
            data,
            out,
            shard_mb,
            force,
        } => {
            one_process("pack")?;
            if shard_mb == 0 {
                return Err(Error::Config("--shard-mb must be at least 1".into()));
            }
            prepare_out_dir(&out, force)?;
            let packed = simclr::data::shards::pack(&data, &out, shard_mb << 20)?;
            println!(
                "packed {} images into {} shards ({} MB) in {}",
                packed.images,
                packed.shards,
                packed.bytes >> 20,
                out.display()
            );
        }
        Command::Launch(launch) => {
            simclr::dist::launch::run(&launch).map_err(Error::Config)?;
        }
        Command::Pipeline(opts) => {
            let mut ctx = Context::new(opts.config(Target::Pipeline)?)?;
            let out = opts.out_dir(&ctx)?;
            pipeline(&mut ctx, &out)?;
            println!("report: {}", out.join("report.json").display());
        }
        Command::Pretrain(opts) => {
            let ctx = Context::new(opts.config(Target::Pretrain)?)?;
            let out = opts.out_dir(&ctx)?;
            let pre = stages::pretrain(&ctx, &out)?;
            println!(
                "pretrain: final loss {:.4}, kNN top-1 {:.4}; checkpoint in {}",
                pre.outcome.final_loss,
                pre.knn_top1,
                out.display()
            );
        }
        Command::Finetune { from, opts } => {
            let target = match from {
                Some(_) => Target::Finetune,
                None => Target::Baseline,
            };
            let mut ctx = Context::new(opts.config(target)?)?;
            let (model, stage) = match &from {
                Some(from) => {
                    let (pretrained, meta) = checkpoint::load(from)?;
                    check_arch(&opts, from, &pretrained)?;
                    check_input(&ctx, &pretrained)?;
                    ctx.normalize_as(&meta);
                    (stages::from_pretrained(&ctx, &pretrained)?, "finetune")
                }
                None => {
                    let arch = ctx.arch(&ctx.cfg.arch, ctx.cfg.width, ctx.cfg.sk);
                    let spec = stages::classifier_spec(&ctx, arch);
                    (Model::new(&spec, ctx.cfg.seed)?, "baseline")
                }
            };
            let out = opts.out_dir(&ctx)?;
            let recipe = match stage {
                "baseline" => &ctx.cfg.baseline,
                _ => &ctx.cfg.finetune,
            };
            let run = stages::supervised_stage(&ctx, stage, recipe, Monitor::Top1)?;
            let ft = stages::supervised(&ctx, model, run, &out)?;
            println!(
                "{stage}: test top-1 {:.4}; checkpoint in {}",
                ft.top1,
                out.display()
            );
        }
        Command::Distill { teacher, opts } => {
            let mut ctx = Context::new(opts.config(Target::Distill)?)?;
            let (mut model, meta) = checkpoint::load(&teacher)?;
            check_input(&ctx, &model)?;
            ctx.normalize_as(&meta);
            if model.spec.num_classes.is_none() {
                return Err(Error::Checkpoint(format!(
                    "{}: has no classifier; distill from a fine-tuned checkpoint",
                    teacher.display()
                )));
            }
            let out = opts.out_dir(&ctx)?;
            let st = stages::distill(&ctx, &mut model, &out)?;
            println!(
                "distill: student test top-1 {:.4}; checkpoint in {}",
                st.top1,
                out.display()
            );
        }
        Command::Eval {
            ckpt,
            linear: false,
            opts,
        } => {
            let ctx = Context::new(opts.config(Target::Pretrain)?)?;
            evaluate(&ctx, &ckpt)?;
        }
        Command::Eval {
            ckpt,
            linear: true,
            opts,
        } => {
            let mut ctx = Context::new(opts.config(Target::Linear)?)?;
            let (pretrained, meta) = checkpoint::load(&ckpt)?;
            check_input(&ctx, &pretrained)?;
            ctx.normalize_as(&meta);
            let model = stages::linear_classifier(&ctx, &pretrained)?;
            let out = opts.out_dir(&ctx)?;
            let stage = stages::supervised_stage(&ctx, "linear", &ctx.cfg.linear, Monitor::Top1)?;
            let lin = stages::supervised(&ctx, model, stage, &out)?;
            println!(
                "linear evaluation: test top-1 {:.4}; classifier in {}",
                lin.top1,
                out.display()
            );
        }
        Command::Info {
            arch,
            width,
            sk,
            image_size,
            in_channels,
            json,
        } => {
            one_process("info")?;
            let arch = simclr::nn::resnet::Arch {
                name: arch,
                width,
                in_channels,
                image_size,
                sk,
            };
            let info = simclr::nn::info::info(&arch)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).expect("serialises")
                );
            } else {
                print!("{info}");
            }
        }
        Command::Data { data, source, json } => {
            one_process("data")?;
            let dir = data.unwrap_or_else(|| Config::preset("default").expect("preset").data);
            let info = simclr::data::describe(&dir, &source.load_options())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).expect("serialises")
                );
            } else {
                print!("{}", simclr::data::render(&info));
            }
        }
        Command::Export {
            ckpt,
            to,
            out,
            force,
        } => {
            one_process("export")?;
            keep_existing(&out, force)?;
            if to != "torchvision" {
                return Err(Error::Config(format!(
                    "--to {to}: unknown target (expected torchvision)"
                )));
            }
            let summary = simclr::train::export::export_torchvision(&ckpt, &out)?;
            println!("{}", serde_json::to_string(&summary).expect("serialises"));
        }
        Command::Predict {
            ckpt,
            data,
            out,
            format,
            device,
            force,
        } => {
            one_process("predict")?;
            keep_existing(&out, force)?;
            let (device, why) = simclr::device::Device::select(&device)?;
            println!("{why}");
            let n = simclr::train::export::predict(&ckpt, &data, format, &device, &out)?;
            println!("predictions for {n} images in {}", out.display());
        }
        Command::BenchLoader(opts) => {
            one_process("bench-loader")?;
            println!("{}", simclr::train::bench_loader::run(&opts)?);
        }
        Command::Plot { run_dir } => {
            one_process("plot")?;
            for path in simclr::train::plot::plot(&run_dir)? {
                println!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into `head` ends the program quietly, as other command-line tools do,
    // instead of a panic on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("error: missing subcommand (pipeline, pretrain, finetune, distill, eval, info, data, plot, export, predict, launch or bench-loader; see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            // clap's message on one line: the problem and what it names, without usage.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => {
            simclr::dist::finished();
            ExitCode::SUCCESS
        }
        Err(e) => {
            match simclr::dist::launcher_rank() {
                Some(rank) => eprintln!("error: rank {rank}: {e}"),
                None => eprintln!("error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
