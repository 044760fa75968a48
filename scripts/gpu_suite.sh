#!/usr/bin/env bash
# The GPU check in one command of under 8 minutes, on a machine with a GPU and no Rust toolchain,
# from the bundle scripts/build_gpu_bundle.sh made:
#
#   tar -xJf target/gpu-bundle.tar.xz -C /tmp && OUT=results /tmp/gpu-bundle/scripts/gpu_suite.sh
#   scripts/gpu_suite.sh --dry-run [BUNDLE_DIR]   # anywhere: the plan, and checks the bundle (CI)
#   scripts/gpu_suite.sh --needs                  # the binaries the plan runs (build_gpu_bundle.sh)
#
# The parts run in the order of PLAN below, each under its own time bound; a part cut off at its
# bound leaves what it measured and the suite goes on with the next. Every part appends to the
# files in $OUT (default: results/ in the bundle) as it goes, and summary.md is rewritten after
# each part, so a run killed at any moment still returns everything measured so far:
#   summary.md    the table: checks, device peaks, our time vs PyTorch's, share of the peak
#   plan.txt      each part's budget and what it took      checks.txt  one line per check
#   rates.txt     every bench's `rate | ...` line, ours and PyTorch's
#   tests.log, sanitizer.log, bench.log   full outputs     manifest.txt  bundle and machine
# PARTS="step pytorch" runs only the parts named. Exits 1 when a test or bench failed or a
# sanitizer reported an error, 2 when it could not start.
set -uo pipefail

# One command on the lent GPU machine must end in under 8 minutes; the budgets sum below it,
# leaving time to unpack the bundle and start.
LIMIT_S=480

# part       budget (s)  what
PLAN="
tests        45  every kernel test and the whole-step tests on cuda alone, launches synchronised
pipeline     40  the tiny pipeline on cuda in f32 against cpu, loss by loss; in bf16 against f32
graphs       25  steps as CUDA graphs, augmentation on the device: launches not synchronised
nccl         20  NCCL at world size 1: every collective on the GPU; pretraining by simclr launch = one process
memcheck     40  compute-sanitizer memcheck: every kernel family's tests, one training step
racecheck    45  compute-sanitizer racecheck: the families that share memory within a block
synccheck    15  compute-sanitizer synccheck: one training step
initcheck    15  compute-sanitizer initcheck: one training step
step         60  ours: the ResNet-50 SimCLR step in bf16, 512 views (256 images) at 224 px, NT-Xent, LARS
conv         65  ours: every distinct ResNet-50 convolution in bf16 at 512 views: fwd, dgrad, wgrad
ntxent_gemm  20  ours: fused NT-Xent at 2N = 8192, d = 128 (and its memory); 4096^3 GEMM f32, bf16; augmentation of 512 views at 224 px
pytorch      80  PyTorch: peaks (bf16 GEMM, copy), then bf16 autocast + channels_last, then fp32/TF32
"

# What each part runs: test items are BINARY or BINARY:FILTER (a libtest name filter).
KERNELS="conv batchnorm ntxent gemm loss pool sk normalize elementwise optim augment"
STEP="device:training_step_matches_cpu"
# emu: its tests of documented semantics (shuffles, mma, ldmatrix, cp.async, ...) run on the
# GPU too, which checks the emulator's reading of the PTX ISA against the hardware.
TESTS="$KERNELS device zoo:matches_cpu emu"
PIPELINE="cli:tiny_pipeline_on_the_gpu_device_matches_cpu cli:tiny_pipeline_in_bf16_ends_within_2_percent_of_f32"
# Graphs need launches that are not synchronised one by one (SIMCLR_SYNC_LAUNCHES=1 turns them off).
GRAPHS="graph cli:device_augmentation_and_graphs_match_cpu_augmentation_launch_by_launch"
# NCCL from the machine's own install (the nvidia-nccl-cu13 wheel beside PyTorch).
NCCL="nccl launch:one_nccl_rank_pretrains_as_one_process"
MEMCHECK="$KERNELS $STEP"
RACECHECK="conv batchnorm ntxent gemm loss pool sk normalize optim augment emu"
BENCHES="train_step conv ntxent gemm augment"
# Criterion's times per case: short, as a case is timed with CUDA events over many runs.
BENCH_ARGS=${BENCH_ARGS:---warm-up-time 0.2 --measurement-time 0.5}

here=$(cd "$(dirname "$0")" && pwd)
bundle=$(dirname "$here")
mode=run
case ${1:-} in
--dry-run | --list)
    mode=dry
    shift
    ;;
--needs)
    for t in $TESTS $PIPELINE $GRAPHS $NCCL; do echo "test ${t%%:*}"; done | sort -u
    for b in $BENCHES; do echo "bench $b"; done
    exit 0
    ;;
-*) echo "unknown option $1 (expected --dry-run, --list or --needs)" >&2 && exit 2 ;;
esac
[ $# -ge 1 ] && bundle=$(cd "$1" && pwd)

budget_of() { echo "$PLAN" | awk -v p="$1" '$1 == p { print $2 }'; }
parts() { echo "$PLAN" | awk 'NF { print $1 }'; }
total=$(echo "$PLAN" | awk 'NF { s += $2 } END { print s }')

print_plan() {
    echo "GPU suite plan (budget per part, seconds; each part is cut off at its budget):"
    echo "$PLAN" | awk 'NF { printf "  %-12s %4d s  ", $1, $2; for (i = 3; i <= NF; i++) printf "%s ", $i; print "" }'
    echo "  total        $total s of the $LIMIT_S s one command may take"
}

# ---------------------------------------------------------------- dry run
# Shows the plan and checks, without a GPU, that the bundle holds everything the plan runs:
# every binary, every test filter matching at least one test, the same convolution cases on
# both sides, the scripts, and the table maths.
if [ $mode = dry ]; then
    print_plan
    problems=0
    problem() {
        echo "  PROBLEM: $*"
        problems=$((problems + 1))
    }
    [ "$total" -le "$LIMIT_S" ] || problem "the budgets sum to $total s, over $LIMIT_S s"
    [ -f "$bundle/MANIFEST" ] || problem "$bundle has no MANIFEST: not a bundle from scripts/build_gpu_bundle.sh"
    for t in $TESTS $PIPELINE $GRAPHS; do
        bin=$bundle/test/${t%%:*} filter=${t#*:}
        [ "$filter" = "$t" ] && filter=""
        # The whole list first: grep -q closing the pipe early would fail it under pipefail.
        if [ ! -x "$bin" ]; then
            problem "test binary ${t%%:*} missing"
        elif ! grep -q ': test$' <<<"$("$bin" --list $filter 2>/dev/null)"; then
            problem "no test in ${t%%:*} matches '$filter'"
        fi
    done
    for b in $BENCHES; do
        [ -x "$bundle/bench/$b" ] || problem "bench binary $b missing"
    done
    [ -x "$bundle/bin/simclr" ] || problem "bin/simclr missing (the pipeline test runs it)"
    for s in gpu_suite.sh bench_pytorch.py gpu_report.py; do
        [ -f "$bundle/scripts/$s" ] || problem "scripts/$s missing"
    done
    python3 -m py_compile "$bundle/scripts/bench_pytorch.py" "$bundle/scripts/gpu_report.py" ||
        problem "the Python scripts do not compile"
    python3 "$bundle/scripts/gpu_report.py" --self-test || problem "gpu_report.py --self-test failed"
    # benches/conv.rs and gpu_report.py (which bench_pytorch.py uses) must name the same cases:
    # compared at the reduced sizes the conv bench lists without a GPU (batch 1, 56 px). Its
    # cases of the cpu's own steps (resnet18_..., resnet8_...) have no GPU counterpart.
    if [ -x "$bundle/bench/conv" ]; then
        # Hidden from any GPU here, the bench lists its reduced sizes.
        ours=$(CUDA_VISIBLE_DEVICES="" "$bundle/bench/conv" --bench --list 2>/dev/null | sed -n 's|^conv_forward/f32_\(.*\)/cpu: benchmark$|\1|p' | grep -v '^resnet' | sort)
        theirs=$(python3 -c "
import sys; sys.path.insert(0, '$bundle/scripts'); import gpu_report as g
for s in g.resnet50_conv_shapes(56): print(g.conv_case(s[0], s[1], s[2], s[5], 1))" | sort)
        [ -n "$ours" ] && [ "$ours" = "$theirs" ] ||
            problem "benches/conv.rs and gpu_report.py list different convolutions: $(diff <(echo "$ours") <(echo "$theirs") | head -4 | tr '\n' ' ')"
    fi
    if [ $problems -gt 0 ]; then
        echo "dry run: $problems problem(s)"
        exit 1
    fi
    echo "dry run: the bundle at $bundle holds everything the plan runs"
    exit 0
fi

# ---------------------------------------------------------------- the run
out=${OUT:-$bundle/results}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
start=$SECONDS
failed=0
say() { echo "[gpu_suite $((SECONDS - start)) s] $*"; }
check() { echo "$1 | $2 | $3" >>"$out/checks.txt"; }
report() { python3 "$bundle/scripts/gpu_report.py" "$out" || true; }

gpu=$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
if [ -z "$gpu" ]; then
    echo "no GPU (nvidia-smi finds none): nothing to run here; --dry-run checks the plan and the bundle" >&2
    exit 2
fi
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
{
    cat "$bundle/MANIFEST"
    echo "GPU: $gpu"
    echo "compute-sanitizer: ${sanitizer:-not found}"
    echo "run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPU cores"
} >"$out/manifest.txt"
for f in summary.md plan.txt checks.txt rates.txt tests.log sanitizer.log bench.log; do
    rm -f "${out:?}/$f"
done
print_plan
# Criterion's own reports go to a scratch folder, not into $OUT.
export CRITERION_HOME=${CRITERION_HOME:-$(mktemp -d)}
say "GPU: $gpu"

# "passed failed" summed over libtest's "test result:" lines of a log.
counts() {
    awk '/^test result:/ { for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i } }
         END { printf "%d %d\n", p, f }' "$1"
}

# The names of the failed tests, from libtest's "failures:" list.
failures() {
    awk '/^failures:$/ { list = ""; on = 1; next } /^test result/ { on = 0 }
         on && /^    [^ ]/ { list = list " " $1 } END { print substr(list, 2) }' "$1"
}

# Errors in a compute-sanitizer log: its ERROR SUMMARY, else racecheck's "(N errors".
sanitizer_errors() {
    local n
    n=$(grep -o 'ERROR SUMMARY: [0-9]*' "$1" | tail -1 | grep -o '[0-9]*$')
    [ -z "$n" ] && n=$(grep -o 'RACECHECK SUMMARY.*(\([0-9]*\) error' "$1" | tail -1 | grep -o '([0-9]*' | tr -d '(')
    echo "${n:-?}"
}

# run_tests PART LOG DEADLINE [TOOL] ITEMS...: each test item on cuda alone, under
# compute-sanitizer TOOL when given, until the part's deadline; one check line per item. Launches
# are synchronised one by one (a fault is named by its kernel) except in the part graphs.
run_tests() {
    local part=$1 log=$2 deadline=$3 tool=$4
    shift 4
    local item bin filter left t0 tmp code p f result errors
    tmp=$(mktemp)
    for item in "$@"; do
        bin=${item%%:*} filter=${item#*:}
        [ "$filter" = "$item" ] && filter=""
        left=$((deadline - SECONDS))
        if [ $left -lt 3 ]; then
            check "$part" "$item" "not run: the part's budget was spent"
            continue
        fi
        t0=$SECONDS
        if [ -n "$tool" ]; then
            SIMCLR_TEST_DEVICES=cuda timeout -k 5 $left "$sanitizer" --tool "$tool" --print-limit 20 \
                "$bundle/test/$bin" $filter >"$tmp" 2>&1
        else
            SIMCLR_TEST_DEVICES=cuda SIMCLR_SYNC_LAUNCHES=$([ "$part" = graphs ] && echo 0 || echo 1) \
                SIMCLR_BIN=$bundle/bin/simclr \
                timeout -k 5 $left "$bundle/test/$bin" $filter --nocapture >"$tmp" 2>&1
        fi
        code=$?
        { echo "==== $part $item (exit $code, $((SECONDS - t0)) s)"; head -c 2000000 "$tmp"; } >>"$out/$log"
        read -r p f < <(counts "$tmp")
        result="$p passed, $f failed"
        [ "$f" -gt 0 ] && result="$result: $(failures "$tmp")"
        if [ -n "$tool" ]; then
            errors=$(sanitizer_errors "$tmp")
            result="$errors errors ($result)"
            [ "$errors" != 0 ] && failed=1
        fi
        case $code in
        0) ;;
        124 | 137) result="$result; cut off at the part's budget" ;;
        # A test binary that exits non-zero with no failed test died: say its last words.
        *) [ "$f" -eq 0 ] && result="$result; exited $code: $(grep -v '^\s*$' "$tmp" | tail -1 | cut -c1-160 | tr '|' '/')" ;;
        esac
        [ $code -ne 0 ] && failed=1
        check "$part" "$item" "$result ($((SECONDS - t0)) s)"
    done
    rm -f "$tmp"
}

# stream LOG DEADLINE COMMAND...: runs COMMAND until the deadline, its output appended to LOG
# and its rate lines to rates.txt as they are printed.
stream() {
    local log=$1 left=$(($2 - SECONDS))
    shift 2
    if [ $left -lt 3 ]; then
        echo "==== not run (budget spent): $*" >>"$out/$log"
        return 0
    fi
    echo "==== $*" >>"$out/$log"
    timeout -k 5 $left "$@" 2>&1 | tee -a "$out/$log" | grep --line-buffered -E '^(rate|peak|skip) \|' >>"$out/rates.txt"
    local code=${PIPESTATUS[0]}
    echo "==== exit $code" >>"$out/$log"
    return "$code"
}

for part in $(parts); do
    if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $part "* ]]; then
        continue
    fi
    budget=$(budget_of "$part")
    deadline=$((SECONDS + budget))
    t0=$SECONDS
    say "part $part (budget $budget s)"
    status=done
    case $part in
    tests) run_tests tests tests.log $deadline "" $TESTS ;;
    pipeline) run_tests pipeline tests.log $deadline "" $PIPELINE ;;
    graphs) run_tests graphs tests.log $deadline "" $GRAPHS ;;
    nccl) run_tests nccl tests.log $deadline "" $NCCL ;;
    memcheck | racecheck | synccheck | initcheck)
        if [ -z "$sanitizer" ]; then
            status="skipped: compute-sanitizer not found"
        else
            case $part in
            memcheck) items=$MEMCHECK ;;
            racecheck) items=$RACECHECK ;;
            *) items=$STEP ;;
            esac
            # shellcheck disable=SC2086 # lists of words
            run_tests "$part" sanitizer.log $deadline "$part" $items
        fi
        ;;
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of words
    step) stream bench.log $deadline "$bundle/bench/train_step" --bench resnet50 $BENCH_ARGS || status="exit $?" ;;
    conv) stream bench.log $deadline "$bundle/bench/conv" --bench $BENCH_ARGS || status="exit $?" ;;
    ntxent_gemm)
        # shellcheck disable=SC2086
        for b in ntxent gemm augment; do
            stream bench.log $deadline "$bundle/bench/$b" --bench $BENCH_ARGS || status="exit $? ($b)"
        done
        ;;
    pytorch)
        if why=$(timeout 30 python3 -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"' 2>&1); then
            # The script starts no case past its own deadline: what is left of the bound, less
            # a margin for importing torch and for the last case it starts.
            stream bench.log $deadline env PYTHONUNBUFFERED=1 python3 "$bundle/scripts/bench_pytorch.py" \
                --device cuda --deadline $((deadline - SECONDS - 20)) || status="exit $?"
        else
            status="skipped: $(echo "$why" | tail -1 | tr '|' '/')"
        fi
        ;;
    esac
    # A part cut off at its budget is reported as such; a bench that failed fails the suite.
    case $status in
    *"exit 124"* | *"exit 137"*) status="$status (cut off at the budget)" ;;
    exit*) failed=1 ;;
    esac
    echo "$part | $budget s | $status, took $((SECONDS - t0)) s" >>"$out/plan.txt"
    report
done

say "done in $((SECONDS - start)) s; results in $out"
cat "$out/summary.md"
exit $failed
