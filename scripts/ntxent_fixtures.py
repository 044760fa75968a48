#!/usr/bin/env python3
"""Generate NT-Xent reference fixtures for the Rust tests.

Setup (once):
    python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt
Run (from the repo root):
    scripts/.venv/bin/python scripts/ntxent_fixtures.py
Writes tests/fixtures/ntxent.json.

Loss (as in the official SimCLR(v2) code, but averaged over all 2N anchors):
    h: [2N, d]; rows 0..N are view 1, rows N..2N view 2; positive of row i is (i+N) mod 2N
    z = h / ||h||_2 (per row)
    s_ij = z_i . z_j / T, with s_ii excluded from the denominator
    loss_i = -log( exp(s_i,pos(i)) / sum_{j != i} exp(s_ij) ),  loss = mean_i loss_i
Note: the official TF code returns loss_a + loss_b (each a mean over N anchors),
i.e. exactly 2x this value; gradients scale by the same factor.
Everything is float64 and deterministic (torch.manual_seed(0)).
"""
import json
import os

import torch
import torch.nn.functional as F

CASES = [  # (N, d, T)
    (4, 8, 0.1),
    (5, 3, 0.5),
    (1, 6, 0.1),  # 2 rows only: the denominator holds just the positive -> loss 0
    (16, 128, 0.1),
]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "ntxent.json")


def positives(n):
    """Index of the positive for each of the 2N anchors."""
    return (torch.arange(2 * n) + n) % (2 * n)


def masked_logits(z, t):
    """Similarity logits s = z z^T / T with the diagonal set to -inf (excluded)."""
    s = z @ z.t() / t
    eye = torch.eye(z.shape[0], dtype=torch.bool)
    return s.masked_fill(eye, float("-inf"))


def ntxent_from_z(z, t):
    """Explicit formula: mean_i [ logsumexp_{j!=i} s_ij - s_i,pos(i) ]."""
    n = z.shape[0] // 2
    s = masked_logits(z, t)
    pos = s[torch.arange(2 * n), positives(n)]
    return (torch.logsumexp(s, dim=1) - pos).mean()


def ntxent_from_h(h, t):
    z = h / h.norm(dim=1, keepdim=True)  # L2 normalise each row
    return ntxent_from_z(z, t), z


def flat(x):
    return [float(v) for v in x.detach().reshape(-1).tolist()]


def main():
    torch.manual_seed(0)
    cases = []
    for n, d, t in CASES:
        h = torch.randn(2 * n, d, dtype=torch.float64, requires_grad=True)
        loss, z = ntxent_from_h(h, t)
        (grad_h,) = torch.autograd.grad(loss, h)

        # Gradient w.r.t. z, treating z as the leaf.
        z_leaf = z.detach().clone().requires_grad_(True)
        loss_z = ntxent_from_z(z_leaf, t)
        (grad_z,) = torch.autograd.grad(loss_z, z_leaf)

        # Cross-checks: same loss from z, and equal to cross-entropy on the masked
        # logits with the positive index as the target class.
        ce = F.cross_entropy(masked_logits(z.detach(), t), positives(n))
        assert torch.allclose(loss_z, loss.detach(), rtol=1e-12, atol=1e-12)
        assert torch.allclose(ce, loss.detach(), rtol=1e-12, atol=1e-12), (ce, loss)
        # Chain rule through the normalisation: grad_h = (grad_z - z (z . grad_z)) / ||h||.
        zd = z.detach()
        gh = (grad_z - zd * (zd * grad_z).sum(1, keepdim=True)) / h.detach().norm(dim=1, keepdim=True)
        assert torch.allclose(gh, grad_h, rtol=1e-10, atol=1e-12)
        # Finite-difference check of the autograd gradient.
        assert torch.autograd.gradcheck(lambda x: ntxent_from_h(x, t)[0], (h,))

        cases.append({
            "n": n, "d": d, "temperature": t,
            "h": flat(h), "z": flat(z), "loss": float(loss.detach()),
            "grad_h": flat(grad_h), "grad_z": flat(grad_z),
        })
        print(f"N={n:2d} d={d:3d} T={t}: loss={float(loss.detach()):.17g}")

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generated_by": "scripts/ntxent_fixtures.py",
                   "torch_version": torch.__version__, "cases": cases}, f)
        f.write("\n")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
