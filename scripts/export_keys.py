"""Writes tests/fixtures/torchvision_keys/resnet{18,34,50,101,152}.txt: the state-dict keys
of torchvision's ResNets (num_classes=1000, the default), one per line as
"name dtype shape", shape as comma-separated sizes ("-" for a scalar), in state-dict order;
and resnet18_sk.txt, resnet50_2x_sk.txt: those of check_export.build_resnet's modules for
what torchvision lacks (ResNet-D basic blocks; a 2x-wide SK ResNet-50).
tests/export.rs checks that `simclr export --to torchvision` writes exactly these names and
shapes, so CI runs the check without PyTorch.

    python scripts/export_keys.py            # needs torch and torchvision (requirements.txt)
"""

import pathlib

import torch
import torchvision

from check_export import build_resnet

DTYPES = {torch.float32: "F32", torch.int64: "I64"}
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "torchvision_keys"


def write(name, model):
    lines = []
    for key, t in model.state_dict().items():
        shape = ",".join(str(s) for s in t.shape) or "-"
        lines.append(f"{key} {DTYPES[t.dtype]} {shape}\n")
    (OUT / f"{name}.txt").write_text("".join(lines))
    print(f"{name}: {len(lines)} tensors (torchvision {torchvision.__version__})")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for depth in (18, 34, 50, 101, 152):
        # weights=None: the architecture only, nothing is downloaded.
        write(f"resnet{depth}", getattr(torchvision.models, f"resnet{depth}")(weights=None))
    write("resnet18_sk", build_resnet(18, 64, sk=True))
    write("resnet50_2x_sk", build_resnet(50, 128, sk=True))


if __name__ == "__main__":
    main()
