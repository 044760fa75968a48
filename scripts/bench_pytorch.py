#!/usr/bin/env python3
"""PyTorch speed baseline for one SimCLR training step (reference for the Rust engine).

Setup (once, from the repo root):
    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
Run:
    scripts/.venv/bin/python scripts/bench_pytorch.py [--batch 64] [--steps 10] [--threads 2]
    scripts/.venv/bin/python scripts/bench_pytorch.py --arch resnet8 --batch 512 --variants ntxent
    scripts/.venv/bin/python scripts/bench_pytorch.py --arch resnet8 --batch 512 --convs
    python3 scripts/bench_pytorch.py --device cuda [--steps 10] [--deadline SECONDS]
    scripts/.venv/bin/python scripts/bench_pytorch.py --smoke     # the cuda mode's code, on the cpu

The default (cpu) mode times the step below and prints a markdown table. The cuda mode times, with
CUDA events after warm-up (median), what the Rust benches time on a GPU, and prints one line per case
in their format, `rate | bench | case | impl | median ms | rate`, which scripts/gpu_report.py
matches with theirs (`skip | ...` where a case did not run, `peak | ...` for memory):
  peak        the device's ceilings: a bf16 8192^3 GEMM and a 1 GiB device-to-device copy
  train_step  the ResNet-50 SimCLR step on 512 views (256 images) at 224x224x3 (stem 7x7/2 +
              max-pool, 4 stages of [3, 4, 6, 3] bottlenecks with the stride on the 3x3,
              projection head 2048-2048-128, NT-Xent, LARS in multi-tensor form), channels_last
  ntxent      NT-Xent forward + backward on 2N = 8192 unit rows of d = 128 (6*(2N)^2*d FLOPs),
              with the full similarity matrix, and its peak memory
  gemm        4096^3 products (2*n^3 FLOPs)
  conv_*      every distinct ResNet-50 convolution shape at the step's 512 views: forward, input
              gradient and weight gradient through cuDNN
each in two configurations: `torch-bf16` (bf16 autocast, or bf16 tensors for the single ops,
channels_last, cudnn.benchmark: how PyTorch users train) and `torch-fp32` (fp32 storage, TF32
math as PyTorch allows it for convolutions by default). Cases past --deadline are skipped.

The cpu mode's model (--arch): ResNet-18 with the small-image stem (3x3/1 conv, 1 -> 64 channels, BN,
ReLU, no max-pool), 4 stages x 2 basic blocks (64/128/256/512, stride 2 + 1x1 conv/BN projection
shortcut at the first block of stages 2-4), global average pool -> 512 features; or the default
preset's ResNet-8: the same with width 16 and 3 stages of one block (16/32/64) -> 64 features.
Variants, each a full step (zero grad, forward, loss, backward, LARS step):
  ntxent: 3-layer projection head (F-F-128, BN; F the feature width) -> NT-Xent (T=0.1), B/2
          positive pairs (the batch counts views)
  xent:   linear F -> 10 -> softmax cross-entropy with random labels
Inputs: random float32 batch x 1 x 28 x 28; timed in contiguous and channels_last formats, in
float32 and in bf16 autocast (where the CPU has bf16 instructions, oneDNN uses them).
With --convs, the cpu mode instead times each distinct convolution of that model at the batch
(forward, input gradient, weight gradient; channels_last, float32 and bf16 tensors), named as
`cargo bench --bench conv` names the same convolutions of the Rust engine.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import gpu_report  # the shapes and FLOP counts the GPU suite compares on


# ---------------------------------------------------------------- model
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:  # 1x1 conv + BN projection shortcut
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.short is None else self.short(x)))


class ResNetSmall(nn.Module):
    """Small-image stem, then stages of basic blocks doubling the width (src/nn/resnet.rs)."""

    def __init__(self, blocks, width, in_ch=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            cout = width << stage
            layers += [BasicBlock(cin, cout, 1 if stage == 0 else 2)]
            layers += [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.features = cin

    def forward(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))  # global average pool -> [B, features]


ARCHS = {"resnet18": ([2, 2, 2, 2], 64), "resnet8": ([1, 1, 1], 16)}


class BNNoBeta(nn.Module):
    """BatchNorm1d with a scale (gamma) but no shift (beta), as the last head layer in SimCLRv2."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.bn(x) * self.weight


def projection_head(dim):
    # Linear layers followed by BN carry no bias (BN makes it redundant).
    return nn.Sequential(
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(),
        nn.Linear(dim, 128, bias=False), BNNoBeta(128),
    )


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck, as src/nn/resnet.rs: 1x1, 3x3 carrying the stride, 1x1 to 4x width."""

    def __init__(self, cin, mid, stride):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.short is None else self.short(x)))


class ResNet50(nn.Module):
    def __init__(self, in_ch=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for s, count in enumerate([3, 4, 6, 3]):
            mid = 64 << s
            for b in range(count):
                layers.append(Bottleneck(cin, mid, 2 if s > 0 and b == 0 else 1))
                cin = 4 * mid
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))  # global average pool -> [B, 2048]


# ---------------------------------------------------------------- loss
def ntxent(h, t=0.1):
    """NT-Xent: rows i and (i+N) mod 2N are positives; self-similarity masked out; mean over 2N."""
    return ntxent_normalized(F.normalize(h, dim=1), t)


def ntxent_normalized(z, t=0.1):
    """NT-Xent of rows z already L2-normalised (the input of the Rust fused kernel)."""
    n2 = z.shape[0]
    s = (z @ z.t() / t).masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    target = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(s, target)


# ---------------------------------------------------------------- optimizer
class LARS(torch.optim.Optimizer):
    """LARS as in the official SimCLR code (momentum, non-Nesterov).

    Parameters with ndim <= 1 (BN gammas/betas, biases) get neither weight decay nor the
    layer-wise trust ratio. For the others: g += wd * w;
    lr_eff = lr * eta * ||w|| / ||g|| (1 if either norm is 0); v = m * v + lr_eff * g; w -= v.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                lr = group["lr"]
                if p.ndim > 1:  # conv / linear weights only
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = p.norm(), g.norm()
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    lr = lr * trust
                state = self.state[p]
                if "v" not in state:
                    state["v"] = torch.zeros_like(p)
                v = state["v"]
                v.mul_(group["momentum"]).add_(g * lr)
                p.sub_(v)


# ---------------------------------------------------------------- benchmark
def bench(arch, variant, channels_last, bf16, batch, steps, warmup=3):
    torch.manual_seed(0)
    backbone = ResNetSmall(*ARCHS[arch])
    f = backbone.features
    head = projection_head(f) if variant == "ntxent" else nn.Linear(f, 10)
    model = nn.Sequential(backbone, head).train()
    x = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = LARS(model.parameters(), lr=0.3 * batch / 256)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = ntxent(out, 0.1) if variant == "ntxent" else F.cross_entropy(out, labels)
        loss.backward()
        opt.step()
        return loss.item()

    return median_s(step, steps, warmup)


def median_s(run, steps, warmup=3):
    """Median seconds of `steps` calls of run() after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def conv_name(module_name, conv, width):
    """The name `cargo bench --bench conv` gives this convolution (small_image_convs)."""
    if module_name.startswith("stem"):
        return "stem_3x3"
    stage = (conv.out_channels // width).bit_length()
    if conv.kernel_size[0] == 1:
        return f"s{stage}_1x1s2_shortcut"
    return f"s{stage}_3x3s2" if conv.stride[0] == 2 else f"s{stage}_3x3"


def bench_convs(arch, batch, steps, precisions):
    """Each distinct convolution of the model at `batch`: forward, input gradient and weight
    gradient (aten.convolution_backward, what autograd calls), channels_last, median ms."""
    blocks, width = ARCHS[arch]
    model = ResNetSmall(blocks, width)
    shapes = {}

    def hook(name):
        def record(conv, inputs, _):
            key = conv_name(name, conv, width)
            shapes.setdefault(key, (conv, tuple(inputs[0].shape)))
        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook(name))
    with torch.no_grad():
        model(torch.randn(batch, 1, 28, 28))

    def median_ms(run):
        return median_s(run, steps) * 1e3

    print("| conv | C -> K | px | precision | forward ms | input gradient ms | weight gradient ms |")
    print("|---|---|---:|---|---:|---:|---:|")
    for key, (conv, shape) in shapes.items():
        stride, pad = conv.stride, conv.padding
        for dtype in [torch.bfloat16 if p == "bf16" else torch.float32 for p in precisions]:
            x = torch.randn(shape).to(dtype).to(memory_format=torch.channels_last)
            w = conv.weight.detach().to(dtype).to(memory_format=torch.channels_last)
            dy = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad))

            def backward(mask):
                return lambda: torch.ops.aten.convolution_backward(
                    dy, x, w, None, stride, pad, [1, 1], False, [0, 0], 1, mask)

            fwd = median_ms(lambda: F.conv2d(x, w, stride=stride, padding=pad))
            dgrad = median_ms(backward([True, False, False])) if shape[1] > 1 else float("nan")
            wgrad = median_ms(backward([False, True, False]))
            prec = "bf16" if dtype == torch.bfloat16 else "float32"
            print(f"| {key} | {conv.in_channels} -> {conv.out_channels} | {shape[2]} | {prec} | "
                  f"{fwd:.2f} | {dgrad:.2f} | {wgrad:.2f} |", flush=True)


# ---------------------------------------------------------------- cuda mode
# Inputs rotate through copies spanning at least 256 MiB (at most 16), as in benches/common, so
# that no timed run finds its inputs in the L2 cache left by the previous one.
ROTATE_BYTES, MAX_COPIES = 256 << 20, 16

# The configurations timed, in order: bf16 autocast + channels_last + cudnn.benchmark is how
# PyTorch users train (the main comparison); fp32 storage with TF32 math, as PyTorch allows it
# for convolutions by default, is the extra row.
CONFIGS = ["torch-bf16", "torch-fp32"]


def copies(nbytes):
    return max(1, min(MAX_COPIES, -(-ROTATE_BYTES // nbytes)))


class Clock:
    """Median of timed runs: CUDA events on a GPU; perf_counter on the CPU (--smoke)."""

    def __init__(self, device, steps, deadline):
        self.device, self.steps, self.deadline = device, steps, deadline

    def out_of_time(self):
        return time.time() > self.deadline

    def median_ms(self, run, warmup=3):
        for i in range(warmup):
            run(i)
        cuda = self.device.type == "cuda"
        times = []
        for i in range(self.steps):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run(warmup + i)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                run(warmup + i)
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def line(kind, bench, case, impl, value):
    print(f"{kind} | {bench} | {case} | {impl} | {value}", flush=True)


def rate_line(bench, case, impl, ms, work, unit):
    """One line in the format of the Rust benches (benches/common/mod.rs)."""
    per_s = work / (ms / 1e3)
    if unit == "FLOP":
        rate = f"{per_s / 1e12:.2f} TFLOP/s" if per_s >= 1e12 else f"{per_s / 1e9:.2f} GFLOP/s"
    elif unit == "B":
        rate = f"{per_s / 1e9:.1f} GB/s"
    else:
        rate = f"{per_s:.1f} images/s"
    line("rate", bench, case, impl, f"{ms:.3f} ms | {rate}")


def timed(clock, bench, case, impl, work, unit, run):
    """Times run(i) as one case; a case that does not fit the deadline or fails says so in a
    `skip` line (the suite's table shows it) and the script goes on."""
    if clock.out_of_time():
        return line("skip", bench, case, impl, "PyTorch part out of time")
    try:
        ms = clock.median_ms(run)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        torch.cuda.empty_cache() if clock.device.type == "cuda" else None
        return line("skip", bench, case, impl, str(e).splitlines()[0][:150].replace("|", "/"))
    rate_line(bench, case, impl, ms, work, unit)


def set_precision(config):
    """TF32 on for the fp32 rows (PyTorch's default for convolutions; for matmuls too here)."""
    tf32 = config == "torch-fp32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return torch.bfloat16 if config == "torch-bf16" else torch.float32


def peaks(clock, n=8192, copy_bytes=1 << 30):
    """The device's two ceilings, measured here: a large bf16 GEMM and a device-to-device copy
    (bytes read + written)."""
    dev = clock.device
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    timed(clock, "peak", f"gemm_bf16_{n}", "torch", 2 * n ** 3, "FLOP", lambda i: a @ b)
    del a, b
    src = torch.randn(copy_bytes // 4, device=dev)
    dst = torch.empty_like(src)
    timed(clock, "peak", f"copy_{copy_bytes >> 20}MiB", "torch", 2 * copy_bytes, "B", lambda i: dst.copy_(src))


def lars(params, lr, momentum=0.9, weight_decay=1e-6, eta=0.001):
    """LARS as class LARS above, in multi-tensor (foreach) form: a handful of launches for all
    parameters rather than several per tensor, which is how a fast PyTorch step does it."""
    decay = [p for p in params if p.ndim > 1]
    other = [p for p in params if p.ndim <= 1]
    state = {"v": [torch.zeros_like(p) for p in decay + other]}

    @torch.no_grad()
    def step():
        gd = torch._foreach_add([p.grad for p in decay], decay, alpha=weight_decay)
        w_norm, g_norm = torch.stack(torch._foreach_norm(decay)), torch.stack(torch._foreach_norm(gd))
        trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
        torch._foreach_mul_(gd, list((lr * trust).unbind()))
        scaled = gd + torch._foreach_mul([p.grad for p in other], lr)
        torch._foreach_mul_(state["v"], momentum)
        torch._foreach_add_(state["v"], scaled)
        torch._foreach_sub_(decay + other, state["v"])

    return step


def train_step(clock, config, views, image):
    """The ResNet-50 SimCLR step: forward (autocast in bf16), NT-Xent, backward, LARS."""
    dtype = set_precision(config)
    torch.manual_seed(0)
    model = nn.Sequential(ResNet50(), projection_head(2048)).to(clock.device).train()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(views, 3, image, image, device=clock.device).to(memory_format=torch.channels_last)
    params = list(model.parameters())
    opt = lars(params, lr=0.3 * views / 256)

    def run(_):
        for p in params:
            p.grad = None
        with torch.autocast(clock.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = ntxent(model(x), 0.1)
        loss.backward()
        opt()

    timed(clock, "train_step", f"resnet50_{image}x{image}x3_b{views}_ntxent", config, views, "images", run)
    del model, x, params


def ntxent_case(clock, config, rows, d=128):
    """NT-Xent forward + backward as PyTorch users write it: the full 2N x 2N similarity matrix
    and cross-entropy, under autocast; and the memory it takes beyond its input and output."""
    dtype = set_precision(config)
    dev = clock.device
    zs = [F.normalize(torch.randn(rows, d, device=dev), dim=1).requires_grad_()
          for _ in range(copies(rows * d * 4))]

    def run(i):
        z = zs[i % len(zs)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = ntxent_normalized(z, 0.1)
        torch.autograd.grad(loss, z)  # the loss and dL/dz, as the fused kernel computes

    case = f"r{rows}_d{d}"
    timed(clock, "ntxent", case, config, 6 * rows * rows * d, "FLOP", run)
    if dev.type == "cuda" and not clock.out_of_time():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run(0)
        torch.cuda.synchronize()
        line("peak", "ntxent", case, config, f"{torch.cuda.max_memory_allocated() - before} B")


def gemm_case(clock, config, n):
    """n^3 products: bf16 A @ B.T (as the Rust mma.sync GEMM); fp32 (TF32) A @ B (as its SGEMM)."""
    dtype = set_precision(config)
    size = dtype.itemsize * n * n
    sets = [(torch.rand(n, n, device=clock.device).to(dtype), torch.rand(n, n, device=clock.device).to(dtype))
            for _ in range(copies(2 * size))]

    def run(i):
        a, b = sets[i % len(sets)]
        return a @ b.t() if dtype == torch.bfloat16 else a @ b

    timed(clock, "gemm", f"{n}x{n}x{n}", config, 2 * n ** 3, "FLOP", run)


def conv_cases(clock, config, views, image):
    """Every distinct ResNet-50 convolution shape through cuDNN: forward (F.conv2d), input
    gradient and weight gradient (aten.convolution_backward, what autograd calls), in the
    configuration's dtype, channels_last."""
    dtype = set_precision(config)
    dev = clock.device
    for name, c, k, r, stride, hw in gpu_report.resnet50_conv_shapes(image):
        case = gpu_report.conv_case(name, c, k, hw, views)
        flops = gpu_report.conv_flops(c, k, r, stride, hw, views)
        pad, out = r // 2, (hw + 2 * (r // 2) - r) // stride + 1

        def tensor(*shape):
            return torch.randn(*shape, device=dev, dtype=dtype).to(memory_format=torch.channels_last)

        if clock.out_of_time():
            for bench in ["conv_forward", "conv_backward_input", "conv_backward_weight"]:
                line("skip", bench, case, config, "PyTorch part out of time")
            continue
        nbytes = dtype.itemsize * (views * c * hw * hw + views * k * out * out + k * c * r * r)
        sets = [(tensor(views, c, hw, hw), tensor(k, c, r, r), tensor(views, k, out, out))
                for _ in range(copies(nbytes))]

        def backward(i, mask):
            x, w, dy = sets[i % len(sets)]
            return torch.ops.aten.convolution_backward(dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False,
                                                       [0, 0], 1, mask)

        timed(clock, "conv_forward", case, config, flops, "FLOP",
              lambda i: F.conv2d(sets[i % len(sets)][0], sets[i % len(sets)][1], stride=stride, padding=pad))
        timed(clock, "conv_backward_input", case, config, flops, "FLOP", lambda i: backward(i, [True, False, False]))
        timed(clock, "conv_backward_weight", case, config, flops, "FLOP", lambda i: backward(i, [False, True, False]))
        del sets


def main_cuda(args):
    """What the Rust benches time on a GPU, in their line format, the main configuration first
    so that a run cut short still has it: the peaks, then per configuration the step, NT-Xent,
    GEMM and the convolutions."""
    smoke = args.smoke  # the same code on the CPU at toy sizes
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench_pytorch.py --device cuda: torch sees no CUDA device")
    dev = torch.device("cpu" if smoke else "cuda")
    clock = Clock(dev, 2 if smoke else args.steps, time.time() + args.deadline)
    torch.backends.cudnn.benchmark = True  # cuDNN picks each convolution's fastest algorithm
    views, image = (4, 32) if smoke else (gpu_report.VIEWS, gpu_report.IMAGE)
    name = "cpu (smoke test)" if smoke else torch.cuda.get_device_name()
    cudnn = torch.backends.cudnn.version() if not smoke else None
    print(f"torch {torch.__version__}, cuDNN {cudnn}, on {name}: median of {clock.steps} runs after 3 "
          f"warm-up runs, CUDA events; configurations {', '.join(CONFIGS)}; deadline {args.deadline:.0f} s",
          flush=True)
    peaks(clock, *((256, 1 << 20) if smoke else ()))
    for config in CONFIGS:
        train_step(clock, config, views, image)
        ntxent_case(clock, config, 64 if smoke else 8192)
        gemm_case(clock, config, 64 if smoke else 4096)
        conv_cases(clock, config, views, image)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="resnet18", help="cpu mode: the network")
    ap.add_argument("--variants", default="ntxent,xent", help="cpu mode: comma-separated")
    ap.add_argument("--batch", type=int, default=64, help="cpu mode: images (views) per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2, help="cpu mode only")
    ap.add_argument("--deadline", type=float, default=600,
                    help="cuda mode: seconds from the start after which cases are skipped")
    ap.add_argument("--convs", action="store_true",
                    help="cpu mode: time each distinct convolution of --arch at --batch instead")
    ap.add_argument("--precisions", default="float32,bf16",
                    help="cpu mode (steps and --convs): comma-separated, of float32 and bf16 (on a "
                         "processor without bf16 instructions bf16 is emulated, 10-20x slower)")
    ap.add_argument("--smoke", action="store_true",
                    help="run the cuda mode's code on the cpu at toy sizes (checks the script)")
    args = ap.parse_args()
    assert args.batch % 2 == 0, "batch must be even (B/2 positive pairs)"
    if not set(args.precisions.split(",")) <= {"float32", "bf16"}:
        ap.error(f"--precisions {args.precisions}: expected float32 and/or bf16")
    args.precisions = args.precisions.split(",")
    if args.device == "cuda" or args.smoke:
        return main_cuda(args)
    torch.set_num_threads(args.threads)
    if args.convs:
        print(f"{args.arch} convolutions, batch {args.batch}, median of {args.steps} runs after 3 "
              f"warm-up, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
        return bench_convs(args.arch, args.batch, args.steps, args.precisions)

    print(f"{args.arch}, batch {args.batch}, {args.steps} timed steps after 3 warm-up, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| variant | memory format | precision | median ms/step | images/s | torch | threads |")
    print("|---|---|---|---:|---:|---|---:|")
    for variant in args.variants.split(","):
        for bf16 in [p == "bf16" for p in args.precisions]:
            for cl in [False, True]:
                med = bench(args.arch, variant, cl, bf16, args.batch, args.steps)
                fmt = "channels_last" if cl else "contiguous (NCHW)"
                prec = "bf16 autocast" if bf16 else "float32"
                print(f"| {variant} | {fmt} | {prec} | {med * 1e3:.1f} | {args.batch / med:.1f} | "
                      f"{torch.__version__} | {torch.get_num_threads()} |", flush=True)


if __name__ == "__main__":
    main()
