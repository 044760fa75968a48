#!/usr/bin/env python3
"""The kNN monitor's protocol on raw pixels: the floor a learned representation should beat.

Run from the repository root (it needs numpy alone, from scripts/requirements.txt):
    scripts/.venv/bin/python scripts/pixel_knn.py [--data data] [--bank 10000] [--per-class 10]

Like the pretraining stage's kNN monitor (src/train/eval.rs), each test image votes among its k =
min(200, bank) most cosine-similar bank images, each vote weighted by exp(similarity / 0.1); here
the features are the standardised pixels themselves. Printed: top-1 with a bank of --bank
training images (a seeded random subset, as the monitor's 10,000), and with a bank of only
--per-class labelled images per class (the labels the pipeline's fine-tuning sees).
"""
import argparse
import gzip
import os

import numpy as np

K, TEMPERATURE = 200, 0.1


def idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def knn_top1(bank_x, bank_y, queries, labels, classes):
    bank = bank_x / np.linalg.norm(bank_x, axis=1, keepdims=True)
    k = min(K, len(bank))
    correct = 0
    for start in range(0, len(queries), 1000):
        q = queries[start:start + 1000]
        sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ bank.T
        near = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        weight = np.exp(np.take_along_axis(sim, near, 1) / TEMPERATURE)
        votes = np.stack([(weight * (bank_y[near] == c)).sum(1) for c in range(classes)], 1)
        correct += (votes.argmax(1) == labels[start:start + 1000]).sum()
    return correct / len(queries)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="data", help="directory of the idx files (Fashion-MNIST)")
    ap.add_argument("--bank", type=int, default=10000)
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args()
    path = lambda name: os.path.join(args.data, name)
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
        if not os.path.isfile(path(name)):
            raise SystemExit(f"pixel_knn.py: {path(name)} not found (--data: the idx files)")
    x = idx(path("train-images-idx3-ubyte.gz"), 16).reshape(-1, 784).astype(np.float32)
    y = idx(path("train-labels-idx1-ubyte.gz"), 8)
    xt = idx(path("t10k-images-idx3-ubyte.gz"), 16).reshape(-1, 784).astype(np.float32)
    yt = idx(path("t10k-labels-idx1-ubyte.gz"), 8)
    mean, std = x.mean(), x.std()
    x, xt = (x - mean) / std, (xt - mean) / std
    classes = int(y.max()) + 1
    bank = np.random.default_rng(0).permutation(len(x))[:args.bank]
    print(f"raw pixels, bank of {len(bank)} training images: kNN top-1 "
          f"{100 * knn_top1(x[bank], y[bank], xt, yt, classes):.2f}%")
    few = np.concatenate([np.flatnonzero(y == c)[:args.per_class] for c in range(classes)])
    print(f"raw pixels, bank of {args.per_class} labelled images per class: kNN top-1 "
          f"{100 * knn_top1(x[few], y[few], xt, yt, classes):.2f}%")


if __name__ == "__main__":
    main()
