#!/usr/bin/env python3
"""PyTorch CPU speed baseline for one SimCLR training step (reference for the Rust engine).

Setup (once, from the repo root):
    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
Run:
    scripts/.venv/bin/python scripts/bench_pytorch.py [--batch 64] [--steps 10] [--threads 2]

Model: ResNet-18 with the small-image stem (3x3/1 conv, 1 -> 64 channels, BN, ReLU, no
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


def projection_head():
    # Linear layers followed by BN carry no bias (BN makes it redundant).
    return nn.Sequential(
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
        nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
        nn.Linear(512, 128, bias=False), BNNoBeta(128),
    )


# ---------------------------------------------------------------- loss
def ntxent(h, t=0.1):
    """NT-Xent: rows i and (i+N) mod 2N are positives; self-similarity masked out; mean over 2N."""
    n2 = h.shape[0]
    z = F.normalize(h, dim=1)
    s = (z @ z.t() / t).masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    target = (torch.arange(n2) + n2 // 2) % n2
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    assert args.batch % 2 == 0, "batch must be even (B/2 positive pairs)"
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
