#!/usr/bin/env python3
"""The GPU suite's table, from the lines its parts leave in the output folder.

    python3 scripts/gpu_report.py OUT_DIR      rewrites OUT_DIR/summary.md
    python3 scripts/gpu_report.py --self-test  checks the table maths on made-up lines (CI)

scripts/gpu_suite.sh runs it after every part, so summary.md always holds everything measured so
far. It reads:
  checks.txt  `part | item | result` per test binary, pipeline and sanitizer run;
  rates.txt   what the Rust benches and scripts/bench_pytorch.py print:
                rate | bench | case | impl | 12.345 ms | 1.23 TFLOP/s
                peak | ntxent | case | impl | 123456 B          (extra device memory)
                skip | bench | case | impl | why
              impl is our device (`cuda:0 (NVIDIA H200)`, `emu (rr schedule)`, `cpu`) or
              PyTorch's configuration: `torch-bf16` (autocast + channels_last + cudnn.benchmark,
              the main comparison), `torch-fp32` (fp32 storage, TF32 math as PyTorch's
              defaults allow it for convolutions), `torch` (the peaks: bench `peak`);
  plan.txt    `part | budget s | seconds taken or status` per part.

This file also holds what both sides measure, so that they cannot drift apart: the distinct
convolution shapes of ResNet-50 (mirrored by benches/conv.rs, checked against its case names by
the self-test's caller, gpu_suite.sh --dry-run) and the FLOPs of the ResNet-50 SimCLR step.
"""
import os
import re
import sys
import tempfile

# ---------------------------------------------------------------- what is measured
# The SimCLR step: 256 images, two views each, at 224 px.
VIEWS, IMAGE = 512, 224
STAGES = [3, 4, 6, 3]  # bottleneck blocks per stage (ResNet-50)


def resnet50_conv_shapes(image=IMAGE):
    """(name, c, k, r, stride, hw) of each distinct convolution, as benches/conv.rs lists them:
    the 7x7/2 stem, each stage's 1x1 reduce, 3x3 and 1x1 expand, and the stride-2 3x3 and 1x1
    shortcut that open stages 2-4 (v1.5: the stride sits on the 3x3); hw is the input map."""
    shapes = [("stem_7x7s2", 3, 64, 7, 2, image)]
    for stage in range(1, 5):
        w, div = 64 << (stage - 1), 4 << (stage - 1)
        hw = -(-image // div)
        shapes += [(f"s{stage}_1x1_reduce", 4 * w, w, 1, 1, hw), (f"s{stage}_3x3", w, w, 3, 1, hw),
                   (f"s{stage}_1x1_expand", w, 4 * w, 1, 1, hw)]
        if stage > 1:
            prev = -(-image // (div // 2))
            shapes += [(f"s{stage}_3x3s2", w, w, 3, 2, prev), (f"s{stage}_1x1s2_shortcut", 2 * w, 4 * w, 1, 2, prev)]
    return shapes


def conv_case(name, c, k, hw, n):
    """The case name both sides print for one convolution shape."""
    return f"{name}_c{c}_k{k}_hw{hw}_n{n}"


def conv_flops(c, k, r, stride, hw, n):
    out = (hw + 2 * (r // 2) - r) // stride + 1
    return 2 * n * out * out * k * r * r * c


def resnet50_step_flops(views=VIEWS, image=IMAGE, proj=128):
    """Model FLOPs of one SimCLR step: 3x the forward (forward, input and weight gradients) of
    every convolution of ResNet-50 and the 2048-2048-2048-128 projection head; BN, pooling and
    the loss are left out, as FLOP counts usually do."""
    def conv(c, k, r, stride, hw):
        return conv_flops(c, k, r, stride, hw, views)

    total, hw, cin = conv(3, 64, 7, 2, image), image // 4, 64  # stem, then the 3x3/2 max pool
    for stage, blocks in enumerate(STAGES):
        w = 64 << stage
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            total += conv(cin, w, 1, 1, hw) + conv(w, w, 3, stride, hw)
            out = hw // stride
            total += conv(w, 4 * w, 1, 1, out)
            if b == 0:
                total += conv(cin, 4 * w, 1, stride, hw)
            hw, cin = out, 4 * w
    total += 2 * views * (2048 * 2048 * 2 + 2048 * proj)
    return 3 * total


def step_case(views=VIEWS):
    return f"resnet50_{IMAGE}x{IMAGE}x3_b{views}_ntxent"


# ---------------------------------------------------------------- reading the lines
UNITS = {"GFLOP/s": ("FLOP", 1e9), "TFLOP/s": ("FLOP", 1e12), "GB/s": ("B", 1e9),
         "images/s": ("images", 1.0)}


def parse_rate(text):
    """'1.23 TFLOP/s' -> ('FLOP', 1.23e12)."""
    value, unit = text.split()
    kind, scale = UNITS[unit]
    return kind, float(value) * scale


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path, errors="replace") as f:
        return [[field.strip() for field in line.rstrip("\n").split(" | ")] for line in f]


def problem(bench, case):
    """The problem a case solves, whatever the precision: ours `gemm f32_4096x...` and
    `gemm bf16_4096x...` both compare with PyTorch's `gemm 4096x...` (likewise the
    convolutions, NT-Xent and the step, which our benches prefix with their precision)."""
    return bench, re.sub(r"^(f32|bf16)_", "", case)


def is_torch(impl):
    return impl.startswith("torch")


def load(out):
    """Rates, peaks and skips keyed by (bench, case, impl)."""
    rates, peaks, skips = {}, {}, {}
    for f in read_lines(os.path.join(out, "rates.txt")):
        try:
            if f[0] == "rate" and len(f) == 6:
                rates[(f[1], f[2], f[3])] = (float(f[4].split()[0]), parse_rate(f[5]))
            elif f[0] == "peak" and len(f) == 5:
                peaks[(f[1], f[2], f[3])] = int(f[4].split()[0])
            elif f[0] == "skip" and len(f) == 5:
                skips[(f[1], f[2], f[3])] = f[4]
        except (ValueError, KeyError, IndexError):
            pass  # a line cut short or of an unknown unit: the rest of the table still counts
    return rates, peaks, skips


# ---------------------------------------------------------------- the table
def fmt_bytes(n):
    return f"{n} B" if n < 2**10 else f"{n / 2**10:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def fmt_ms(ms):
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.1f} ms"


def fraction(kind, per_s, peak_flops, peak_bytes):
    """Share of the measured device peak: FLOPs over the bf16 tensor-core GEMM rate, bytes
    over the copy bandwidth; blank where the peak was not measured."""
    peak = {"FLOP": peak_flops, "B": peak_bytes}.get(kind)
    return f"{100 * per_s / peak:.1f}%" if peak else ""


def performance_rows(rates, peaks, skips):
    peak_flops = next((r[1][1] for k, r in rates.items() if k[0] == "peak" and k[1].startswith("gemm")), None)
    peak_bytes = next((r[1][1] for k, r in rates.items() if k[0] == "peak" and k[1].startswith("copy")), None)
    torch_by_problem = {}
    for (bench, case, impl), r in rates.items():
        if is_torch(impl):
            torch_by_problem[problem(bench, case) + (impl,)] = r
    rows = []
    ours = [k for k in rates if not is_torch(k[2]) and k[0] != "peak"]
    for bench, case, impl in sorted(ours, key=order):
        ms, (kind, per_s) = rates[(bench, case, impl)]
        if problem(bench, case) == ("train_step", step_case()):
            kind, per_s = "FLOP", resnet50_step_flops() / (ms / 1e3)  # model FLOPs utilisation
        cells = [bench, case, impl, f"{fmt_ms(ms)}", fraction(kind, per_s, peak_flops, peak_bytes)]
        for config in ["torch-bf16", "torch-fp32"]:
            key = problem(bench, case) + (config,)
            if key in torch_by_problem:
                tms, (tkind, tper_s) = torch_by_problem[key]
                if problem(bench, case) == ("train_step", step_case()):
                    tkind, tper_s = "FLOP", resnet50_step_flops() / (tms / 1e3)
                cells += [fmt_ms(tms), f"{tms / ms:.2f}×", fraction(tkind, tper_s, peak_flops, peak_bytes)]
            else:
                cells += [skips.get(key, "—"), "", ""]
        rows.append(cells)
    # PyTorch cases with no line of ours (ours not run, or cut off), so nothing measured is lost.
    ours_problems = {problem(b, c) for b, c, _ in ours}
    for (bench, case, impl), (ms, (kind, per_s)) in sorted(rates.items(), key=lambda kv: order(kv[0])):
        if is_torch(impl) and bench != "peak" and problem(bench, case) not in ours_problems:
            rows.append([bench, case, impl, "not run", "", fmt_ms(ms), "", fraction(kind, per_s, peak_flops, peak_bytes), "", "", ""])
    memory = []
    for (bench, case, impl), extra in sorted(peaks.items()):
        memory.append(f"| {bench} | {case} | {impl} | {fmt_bytes(extra)} |")
    peak_lines = [f"| {case} | {impl} | {fmt_ms(ms)} | {per_s / (1e12 if kind == 'FLOP' else 1e9):.1f} "
                  f"{'TFLOP/s' if kind == 'FLOP' else 'GB/s'} |"
                  for (bench, case, impl), (ms, (kind, per_s)) in sorted(rates.items()) if bench == "peak"]
    return rows, memory, peak_lines


BENCH_ORDER = ["train_step", "conv_forward", "conv_backward_input", "conv_backward_weight", "ntxent", "gemm"]


LAYER_ORDER = [shape[0] for shape in resnet50_conv_shapes()]


def order(key):
    """Benches in BENCH_ORDER, convolutions in the network's order, then by name."""
    bench, case, impl = key
    layer = problem(bench, case)[1].split("_c")[0]
    return (BENCH_ORDER.index(bench) if bench in BENCH_ORDER else len(BENCH_ORDER),
            LAYER_ORDER.index(layer) if layer in LAYER_ORDER else -1, case, impl)


def summary(out):
    rates, peaks, skips = load(out)
    rows, memory, peak_lines = performance_rows(rates, peaks, skips)
    lines = ["# GPU suite", ""]
    manifest = os.path.join(out, "manifest.txt")
    if os.path.exists(manifest):
        with open(manifest) as f:
            lines += ["```", f.read().rstrip(), "```", ""]
    plan = read_lines(os.path.join(out, "plan.txt"))
    if plan:
        lines += ["## Parts", "", "| part | budget | result |", "|---|---:|---|"]
        lines += [f"| {' | '.join(p)} |" for p in plan if len(p) == 3] + [""]
    checks = read_lines(os.path.join(out, "checks.txt"))
    if checks:
        lines += ["## Checks", "", "| part | item | result |", "|---|---|---|"]
        lines += [f"| {' | '.join(c)} |" for c in checks if len(c) == 3] + [""]
    if peak_lines:
        lines += ["## Device peaks (measured in this run)", "", "| what | by | median | rate |", "|---|---|---:|---:|"]
        lines += peak_lines + [""]
    if rows:
        lines += ["## Speed", "",
                  "Times are medians after warm-up, timed with CUDA events. Speed = PyTorch's time / ours "
                  "(above 1×: ours is faster). Peak: FLOPs over the measured bf16 GEMM rate (the train step "
                  f"counts {resnet50_step_flops() / 1e12:.2f} TFLOP of model FLOPs), bytes over the copy bandwidth.", "",
                  "| bench | case | ours on | ours | ours % peak | PyTorch bf16 | speed | PyTorch bf16 % peak "
                  "| PyTorch fp32/TF32 | speed | PyTorch fp32 % peak |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {' | '.join(r)} |" for r in rows] + [""]
    if memory:
        lines += ["## Extra device memory", "", "| bench | case | by | peak beyond inputs and outputs |",
                  "|---|---|---|---:|"] + memory + [""]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))


# ---------------------------------------------------------------- self-test (CI, no GPU)
def self_test():
    shapes = resnet50_conv_shapes()
    assert len(shapes) == 19 and len({s[0] for s in shapes}) == 19, shapes
    assert shapes[1] == ("s1_1x1_reduce", 256, 64, 1, 1, 56), shapes[1]
    assert shapes[-1] == ("s4_1x1s2_shortcut", 1024, 2048, 1, 2, 14), shapes[-1]
    # ResNet-50's forward at 224 px is 4.09 GMACs (convolutions and the classifier): the
    # convolutions alone come to 8.18 GFLOP per image.
    per_image = (resnet50_step_flops(views=1) / 3 - 2 * (2048 * 2048 * 2 + 2048 * 128)) / 1e9
    assert abs(per_image - 8.18) < 0.05, per_image
    with tempfile.TemporaryDirectory() as out:
        case = conv_case("s2_3x3", 128, 128, 28, 512)
        with open(os.path.join(out, "rates.txt"), "w") as f:
            f.write("rate | peak | gemm_bf16_8192 | torch | 1.400 ms | 785.4 TFLOP/s\n"
                    "rate | peak | copy_1GiB | torch | 0.500 ms | 4295 GB/s\n"
                    f"rate | conv_forward | bf16_{case} | cuda:0 (GPU) | 4.000 ms | 100 TFLOP/s\n"
                    f"rate | conv_forward | {case} | torch-bf16 | 1.000 ms | 400 TFLOP/s\n"
                    "rate | gemm | f32_4096x4096x4096 | cuda:0 (GPU) | 10.000 ms | 13.7 TFLOP/s\n"
                    "rate | gemm | 4096x4096x4096 | torch-fp32 | 2.500 ms | 55.0 TFLOP/s\n"
                    "skip | gemm | 4096x4096x4096 | torch-bf16 | out of time\n"
                    "rate | ntxent | r8192_d128 | torch-bf16 | 3.000 ms | 268 TFLOP/s\n"
                    "peak | ntxent | r8192_d128 | torch-bf16 | 268435456 B\n"
                    "rate | conv_forward | half a line\n"
                    "rate | gemm | odd | cuda:0 (GPU) | 1.0 ms | 3 furlongs/s\n")
        with open(os.path.join(out, "checks.txt"), "w") as f:
            f.write("tests | conv | 3 passed, 0 failed\n")
        summary(out)
        with open(os.path.join(out, "summary.md")) as f:
            text = f.read()
    row = next(line for line in text.splitlines() if line.startswith(f"| conv_forward | bf16_{case}"))
    assert "| 4.000 ms | 12.7% | 1.000 ms | 0.25× | 50.9% |" in row, row
    row = next(line for line in text.splitlines() if line.startswith("| gemm | f32_"))
    assert "| out of time |" in row and "| 2.500 ms | 0.25× |" in row, row
    row = next(line for line in text.splitlines() if line.startswith("| ntxent |"))
    assert "| not run |" in row and "3.000 ms" in row, row
    assert "| ntxent | r8192_d128 | torch-bf16 | 256.0 MiB |" in text, text
    assert "| tests | conv | 3 passed, 0 failed |" in text, text
    print("gpu_report.py self-test: ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    elif len(sys.argv) == 2:
        summary(sys.argv[1])
    else:
        sys.exit(__doc__)
