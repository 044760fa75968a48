"""Checks `simclr export --to torchvision` against PyTorch itself: builds the torchvision
ResNet, loads the exported file with strict=True, runs it on the images `simclr predict`
ran on, and reports the largest relative error of the logits (must be < 1e-4 in f32).

    # train a small RGB checkpoint with the CLI on a synthetic STL-10-format dataset (96 px),
    # fine-tune (fc = head layer 1 + classifier) and distil (torchvision's plain fc), check both
    python scripts/check_export.py --arch resnet18 --width 64

    # or check an existing checkpoint (with a classifier) on synthetic images of its size
    python scripts/check_export.py --ckpt runs/finetune

Needs torch, torchvision and safetensors (scripts/requirements.txt) and a built simclr
(`cargo build --release`). The images are random RGB; the script reproduces simclr's
evaluation preprocessing (src/data/resize.rs: the central 87.5% square, Keys bicubic
a = -0.5 at pixel centres with edges replicated, then standardisation with the training
split's per-channel mean and standard deviation) to feed PyTorch the same input.

`build_resnet` is also the PyTorch module for what torchvision lacks (other widths, SK and
ResNet-D; names in src/train/export.rs): use it to load any exported file.
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAYOUTS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
STL10_SIDE = 96


class AvgPoolSame(nn.Module):
    """TensorFlow's 2x2 'SAME' average pool (the ResNet-D shortcut): padding at the bottom
    and right only where needed, padded elements left out of the mean."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        h, w = x.shape[-2:]
        s = self.stride
        pad_h = max((math.ceil(h / s) - 1) * s + 2 - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + 2 - w, 0)
        ones = torch.ones_like(x[:1, :1])
        total = F.avg_pool2d(F.pad(x, (0, pad_w, 0, pad_h)), 2, s)
        count = F.avg_pool2d(F.pad(ones, (0, pad_w, 0, pad_h)), 2, s)
        return total / count


class SelectiveKernel(nn.Module):
    """Mixes the two streams [N, 2C, H, W] of a selective-kernel conv into C channels:
    softmax over the streams of logits computed from their pooled sum."""

    def __init__(self, c):
        super().__init__()
        mid = max(c // 16, 32)
        self.fc_reduce = nn.Conv2d(c, mid, 1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.fc_select = nn.Conv2d(mid, 2 * c, 1, bias=False)

    def forward(self, x):
        n, c2, h, w = x.shape
        streams = x.view(n, 2, c2 // 2, h, w)
        z = streams.sum(1).mean((2, 3), keepdim=True)
        z = torch.relu(self.bn(self.fc_reduce(z)))
        weights = self.fc_select(z).view(n, 2, c2 // 2, 1, 1).softmax(1)
        return (streams * weights).sum(1)


class SKBottleneck(Bottleneck):
    """torchvision's bottleneck whose conv2/bn2 make two streams, mixed by `sk`."""

    def __init__(self, inplanes, planes, stride=1, *args, **kwargs):
        super().__init__(inplanes, planes, stride, *args, **kwargs)
        self.conv2 = nn.Conv2d(planes, 2 * planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * planes)
        self.sk = SelectiveKernel(planes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.sk(self.relu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def conv_bn_relu(cin, cout, stride):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build_resnet(depth, width=64, sk=False, num_classes=1000, fc="linear"):
    """The PyTorch module an exported file loads into with strict=True. fc: "linear"
    (distilled), "head" (fine-tuned: head layer 1 + classifier) or "none" (encoder only)."""
    block, layers = LAYOUTS[depth]
    if width == 64 and not sk:
        model = getattr(torchvision.models, f"resnet{depth}")(num_classes=num_classes)
    else:
        if sk and block is Bottleneck:
            block = SKBottleneck
        model = ResNet(block, layers, num_classes=num_classes)
        # Rebuilt at this width from torchvision's own blocks, as ResNet.__init__ does.
        model.inplanes = width
        if sk:
            half = width // 2
            stem = conv_bn_relu(3, half, 2) + conv_bn_relu(half, half, 1)
            model.conv1 = nn.Sequential(*stem, nn.Conv2d(half, width, 3, 1, 1, bias=False))
        else:
            model.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        for i, n in enumerate(layers):
            layer = model._make_layer(block, width << i, n, stride=1 if i == 0 else 2)
            setattr(model, f"layer{i + 1}", layer)
        model.fc = nn.Linear((width << 3) * block.expansion, num_classes)
    if sk:
        # ResNet-D shortcut: average pool (the block's stride), then a stride-1 1x1 conv.
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            for b in layer:
                if b.downsample is not None:
                    conv, bn = b.downsample
                    stride = conv.stride[0]
                    conv.stride = (1, 1)
                    b.downsample = nn.Sequential(AvgPoolSame(stride), conv, bn)
    d = model.fc.in_features
    if fc == "head":
        model.fc = nn.Sequential(
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(), nn.Linear(d, num_classes)
        )
    elif fc == "none":
        model.fc = nn.Identity()
    return model


def run(cmd):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def random_images(n, side, seed):
    """Random RGB images, smooth enough to look like something, noisy enough to use every
    weight."""
    rng = np.random.default_rng(seed)
    blocks = -(-side // 8)
    coarse = rng.integers(0, 256, (n, blocks, blocks, 3)).repeat(8, 1).repeat(8, 2)[:, :side, :side]
    noise = rng.integers(-40, 41, (n, side, side, 3))
    return np.clip(coarse + noise, 0, 255).astype(np.uint8)


def write_stl10(root, train, train_labels, test, test_labels):
    """The STL-10 binary layout: three planes per image, column-major; labels 1..10."""
    root.mkdir(parents=True, exist_ok=True)
    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        (root / f"{split}_X.bin").write_bytes(images.transpose(0, 3, 2, 1).tobytes())
        (root / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())


def write_folder(root, train, train_labels, test, test_labels):
    """An image folder of PNGs (lossless): train/<class>/, test/<class>/."""
    from PIL import Image

    for split, images, labels in (("train", train, train_labels), ("test", test, test_labels)):
        for i, (img, label) in enumerate(zip(images, labels)):
            path = root / split / f"class{label:02d}" / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "RGB").save(path)


def taps(size, length):
    """simclr's resampling weights (src/data/resize.rs) as a [size, length] matrix."""
    scale = length / size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    m = np.zeros((size, length), np.float64)
    for o in range(size):
        centre = (o + 0.5) * scale - 0.5
        row = {}
        for i in range(math.ceil(centre - support), math.floor(centre + support) + 1):
            t = abs((i - centre) / stretch)
            a = -0.5
            if t <= 1:
                w = ((a + 2) * t - (a + 3)) * t * t + 1
            elif t < 2:
                w = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
            else:
                w = 0.0
            j = min(max(i, 0), length - 1)
            row[j] = row.get(j, 0.0) + w
        total = sum(row.values())
        for j, w in row.items():
            m[o, j] = w / total
    return m.astype(np.float32)


def eval_inputs(images, train, size):
    """simclr's evaluation input, NCHW f32: central 87.5% square, bicubic to size, [0, 1],
    standardised with the training images' per-channel statistics."""
    pixels = train.reshape(-1, 3).astype(np.float64) / 255.0
    mean = pixels.mean(0)
    std = np.maximum(np.sqrt(np.maximum((pixels**2).mean(0) - mean**2, 0.0)), 1e-3)
    h = images.shape[1]
    side = min(max(round(0.875 * h), 1), h)
    y = (h - side + 1) // 2
    crop = images[:, y : y + side, y : y + side, :].astype(np.float32)
    w = taps(size, side)
    x = np.einsum("oi,niwc->nowc", w, crop)
    x = np.einsum("pj,nojc->nopc", w, x)
    x = np.clip(x / np.float32(255.0), 0.0, 1.0)
    x = (x - mean.astype(np.float32)) / std.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), np.float32))


def check(simclr, ckpt, data, images, train, work, device):
    """Exports ckpt, predicts data's test split, compares with PyTorch; returns the error."""
    name = ckpt.resolve().parent.name
    exported, predictions = work / f"{name}.safetensors", work / f"{name}.jsonl"
    run([simclr, "export", "--ckpt", ckpt, "--to", "torchvision", exported, "--force"])
    run([simclr, "predict", "--ckpt", ckpt, "--data", data, "--out", predictions,
         "--device", device, "--force"])
    with safe_open(exported, "pt") as f:
        s = json.loads(f.metadata()["simclr_export"])
    depth = int(s["arch"].removeprefix("resnet"))
    model = build_resnet(depth, s["width"], s["sk"], s["num_classes"], s["fc"])
    model.load_state_dict(load_file(exported), strict=True)
    model.eval()
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    # Image folders are read class by class: their lines name the file, whose stem is the
    # image's number here.
    order = [int(pathlib.Path(x["path"]).stem) if "path" in x else x["index"] for x in lines]
    ours = torch.tensor([line["logits"] for line in lines])
    with torch.no_grad():
        theirs = model(eval_inputs(images[order], train, s["image_size"]))
    # Per image: the largest logit difference relative to the largest logit magnitude.
    rel = ((ours - theirs).abs().amax(1) / theirs.abs().amax(1)).max().item()
    agree = sum(int(line["class"]) == int(t) for line, t in zip(lines, theirs.argmax(1)))
    print(
        f"{s['arch']} width {s['width']} sk {s['sk']} fc {s['fc']}: {len(lines)} images, "
        f"max relative error of the logits {rel:.3g}, classes agree {agree}/{len(lines)}"
    )
    return rel


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simclr", default=ROOT / "target/release/simclr", type=pathlib.Path)
    p.add_argument("--ckpt", type=pathlib.Path, help="an existing checkpoint with a classifier")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", default="64")
    p.add_argument("--sk", action="store_true")
    p.add_argument("--train-images", type=int, default=100)
    p.add_argument("--test-images", type=int, default=20)
    p.add_argument("--device", default="cpu", help="simclr's device for predict")
    p.add_argument("--work", type=pathlib.Path, help="keep the files here")
    args = p.parse_args()
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="simclr-check-export-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    labels = np.arange(args.train_images) % 10
    test_labels = np.arange(args.test_images) % 10
    if args.ckpt:
        ckpt = args.ckpt / "checkpoint.safetensors" if args.ckpt.is_dir() else args.ckpt
        meta = json.loads((ckpt.parent / "checkpoint.json").read_text())
        side = meta["spec"]["arch"]["image_size"]
        write = write_folder
    else:
        side = STL10_SIDE
        write = write_stl10
    train = random_images(args.train_images, side, 1)
    test = random_images(args.test_images, side, 2)
    write(data, train, labels, test, test_labels)
    if args.ckpt:
        ckpts = [ckpt]
    else:
        common = ["--preset", "tiny", "--data", data, "--device", "cpu", "--force"]
        arch = ["--arch", args.arch, "--width", args.width] + (["--sk"] if args.sk else [])
        student = ["--student-arch", args.arch, "--student-width", args.width]
        teacher = work / "finetune"
        run([args.simclr, "finetune", *common, *arch, "--out", teacher])
        run([args.simclr, "distill", *common, *student, "--teacher", teacher,
             "--out", work / "distill"])
        ckpts = [work / d / "checkpoint.safetensors" for d in ("finetune", "distill")]
    worst = max(check(args.simclr, c, data, test, train, work, args.device) for c in ckpts)
    verdict = "ok" if worst < 1e-4 else "FAILED"
    print(f"export check: max relative error {worst:.3g} ({verdict}, limit 1e-4)")
    sys.exit(0 if worst < 1e-4 else 1)


if __name__ == "__main__":
    main()
