#!/usr/bin/env python3
"""PyTorch speed baseline for one SimCLR training step (reference for the Rust engine).

Setup (once, from the repo root):
    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
Run:
    scripts/.venv/bin/python scripts/bench_pytorch.py [--batch 64] [--steps 10] [--threads 2]
    python3 scripts/bench_pytorch.py --device cuda [--batch 32] [--steps 10]

The default (cpu) mode times the step below and prints a markdown table. The cuda mode times, with
CUDA events after warm-up (median), what the Rust benches time on a GPU, and prints one line per case
in their format, `rate | bench | case | device | median ms | rate`, which scripts/gpu_suite.sh
matches with theirs:
  train_step  the ResNet-50 SimCLR step at 224x224x3 (stem 7x7/2 + max-pool, 4 stages of
              [3, 4, 6, 3] bottlenecks with the stride on the 3x3, projection head 2048-2048-128,
              NT-Xent, LARS), float32 channels_last
  ntxent      NT-Xent forward + backward on 2N = 8192 unit rows of d = 128 (6*(2N)^2*d FLOPs)
  gemm        4096^3 products: float32 (no TF32) and bfloat16 A @ B.T (2*n^3 FLOPs)
TF32 is off throughout, as the Rust kernels compute in float32.

The cpu mode's model: ResNet-18 with the small-image stem (3x3/1 conv, 1 -> 64 channels, BN, ReLU, no
max-pool), 4 stages x 2 basic blocks (64/128/256/512, stride 2 + 1x1 conv/BN projection
shortcut at the first block of stages 2-4), global average pool -> 512 features.
Variants, each a full step (zero grad, forward, loss, backward, LARS step):
  ntxent: 3-layer projection head (512-512-128, BN) -> NT-Xent (T=0.1), B/2 positive pairs
  xent:   linear 512 -> 10 -> softmax cross-entropy with random labels
Inputs: random float32 batch x 1 x 28 x 28; timed in contiguous and channels_last formats.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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


class ResNet18Small(nn.Module):
    def __init__(self, in_ch=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(self.stem(x)).mean(dim=(2, 3))  # global average pool -> [B, 512]


class BNNoBeta(nn.Module):
    """BatchNorm1d with a scale (gamma) but no shift (beta), as the last head layer in SimCLRv2."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.bn(x) * self.weight


def projection_head(dim=512):
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
def bench(variant, channels_last, batch, steps, warmup=3):
    torch.manual_seed(0)
    backbone = ResNet18Small()
    head = projection_head() if variant == "ntxent" else nn.Linear(512, 10)
    model = nn.Sequential(backbone, head).train()
    x = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = LARS(model.parameters(), lr=0.3 * batch / 256)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = ntxent(out, 0.1) if variant == "ntxent" else F.cross_entropy(out, labels)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------- cuda mode
# Inputs rotate through copies spanning at least 256 MiB (at most 16), as in benches/common, so
# that no timed run finds its inputs in the L2 cache left by the previous one.
ROTATE_BYTES, MAX_COPIES = 256 << 20, 16


def copies(nbytes):
    return max(1, min(MAX_COPIES, -(-ROTATE_BYTES // nbytes)))


def cuda_median_ms(run, steps, warmup=3):
    """Median time of run(i) in ms, each timed alone with CUDA events after `warmup` runs."""
    for i in range(warmup):
        run(i)
    torch.cuda.synchronize()
    times = []
    for i in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(warmup + i)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rate_line(bench, case, ms, work, unit):
    """One line in the format of the Rust benches (benches/common/mod.rs)."""
    per_s = work / (ms / 1e3)
    if unit == "FLOP":
        rate = f"{per_s / 1e12:.2f} TFLOP/s" if per_s >= 1e12 else f"{per_s / 1e9:.2f} GFLOP/s"
    else:
        rate = f"{per_s:.1f} images/s"
    device = f"torch {torch.__version__} {torch.cuda.get_device_name()}"
    print(f"rate | {bench} | {case} | {device} | {ms:.3f} ms | {rate}", flush=True)


def cuda_train_step(batch, steps):
    torch.manual_seed(0)
    model = nn.Sequential(ResNet50(), projection_head(2048)).cuda().train()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    opt = LARS(model.parameters(), lr=0.3 * batch / 256)

    def step(_):
        opt.zero_grad(set_to_none=True)
        ntxent(model(x), 0.1).backward()
        opt.step()

    ms = cuda_median_ms(step, steps)
    rate_line("train_step", f"resnet50_224x224x3_b{batch}_ntxent", ms, batch, "images")


def cuda_ntxent(steps, rows=8192, d=128):
    zs = [F.normalize(torch.randn(rows, d, device="cuda"), dim=1).requires_grad_()
          for _ in range(copies(rows * d * 4))]

    def run(i):
        z = zs[i % len(zs)]
        torch.autograd.grad(ntxent_normalized(z, 0.1), z)  # loss and dL/dz, as the fused kernel

    ms = cuda_median_ms(run, steps)
    rate_line("ntxent", f"r{rows}_d{d}", ms, 6 * rows * rows * d, "FLOP")


def cuda_gemm(steps, n=4096):
    for name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        size = dtype.itemsize * n * n
        sets = [(torch.rand(n, n, device="cuda").to(dtype), torch.rand(n, n, device="cuda").to(dtype))
                for _ in range(copies(2 * size))]

        def run(i):
            # f32: A @ B as the Rust SGEMM; bf16: A @ B.T as its mma.sync GEMM (output bf16 here).
            a, b = sets[i % len(sets)]
            return a @ b if a.dtype == torch.float32 else a @ b.t()

        ms = cuda_median_ms(run, steps)
        rate_line("gemm", f"{name}_{n}x{n}x{n}", ms, 2 * n ** 3, "FLOP")


def main_cuda(args):
    if not torch.cuda.is_available():
        raise SystemExit("bench_pytorch.py --device cuda: torch sees no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # PyTorch at its best: cuDNN picks each conv's fastest kernel
    batch = args.batch or 32
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}: median of {args.steps} runs "
          f"after 3 warm-up runs, CUDA events, float32 without TF32", flush=True)
    cuda_train_step(batch, args.steps)
    cuda_ntxent(args.steps)
    cuda_gemm(args.steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 64 on the cpu, 32 on cuda")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2, help="cpu mode only")
    args = ap.parse_args()
    assert args.batch is None or args.batch % 2 == 0, "batch must be even (B/2 positive pairs)"
    if args.device == "cuda":
        return main_cuda(args)
    args.batch = args.batch or 64
    torch.set_num_threads(args.threads)

    print(f"batch {args.batch}, {args.steps} timed steps after 3 warm-up, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| variant | memory format | median ms/step | images/s | torch | threads |")
    print("|---|---|---:|---:|---|---:|")
    for variant in ["ntxent", "xent"]:
        for cl in [False, True]:
            med = bench(variant, cl, args.batch, args.steps)
            fmt = "channels_last" if cl else "contiguous (NCHW)"
            print(f"| {variant} | {fmt} | {med * 1e3:.1f} | {args.batch / med:.1f} | "
                  f"{torch.__version__} | {torch.get_num_threads()} |", flush=True)


if __name__ == "__main__":
    main()
