#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a GPU and no Rust toolchain, from the
# bundle that scripts/build_gpu_bundle.sh made:
#   1. tests      every test binary (they test the real GPU when there is one, and the emulator);
#   2. sanitizer  compute-sanitizer memcheck and racecheck on the kernel tests, real GPU only;
#   3. bench      every criterion bench (full sizes on the GPU);
#   4. pytorch    scripts/bench_pytorch.py --device cuda: the same ResNet-50 SimCLR step,
#                 NT-Xent and GEMMs in PyTorch;
# then prints one table and, when OUT is set, writes it to $OUT/gpu_suite.md with the logs in
# $OUT/gpu_suite_logs.tar.gz. Without a GPU it says so and runs what runs without one.
#
#   scripts/gpu_suite.sh [BUNDLE_DIR]      (default: the bundle this script sits in, else ./bundle)
# Environment: PARTS (default "tests sanitizer bench pytorch") picks parts, to split the suite over
# several shorter runs; BENCH_ARGS are passed to every bench (e.g. "--measurement-time 1");
# TEST_TIMEOUT (default 1200) bounds each test binary in seconds. Exits 1 when a test or bench
# failed or a sanitizer reported an error.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ge 1 ]; then
    bundle=$1
elif [ -f "$here/../MANIFEST" ]; then
    bundle=$here/..
else
    bundle=bundle
fi
bundle=$(cd "$bundle" 2>/dev/null && pwd) || { echo "no bundle at ${1:-bundle}: run scripts/build_gpu_bundle.sh first" >&2; exit 2; }
[ -f "$bundle/MANIFEST" ] || { echo "$bundle has no MANIFEST: not a bundle from scripts/build_gpu_bundle.sh" >&2; exit 2; }
parts=" ${PARTS:-tests sanitizer bench pytorch} "
logs=$bundle/results
rm -rf "$logs"
mkdir -p "$logs"
table=$logs/table.md # rows, appended part by part
failed=0
start=$SECONDS

say() { echo "[gpu_suite $((SECONDS - start))s] $*"; }
row() { echo "| $1 | $2 | $3 | $4 | ${5:-} | ${6:-} |" >>"$table"; }

# ---------------------------------------------------------------- what this machine has
gpu=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
fi
if [ -n "$gpu" ]; then
    say "GPU: $gpu"
else
    say "no GPU (nvidia-smi finds none): the tests and benches run on the emulator and the cpu only"
fi

# The binaries open some files through the repository root they were built in (tests/cli.rs runs
# target/release/simclr, a test reads tests/fixtures/): link any of them missing on this machine
# to the bundle's copy.
root=$(sed -n 's/^root //p' "$bundle/MANIFEST")
linked=0
while IFS= read -r file; do
    if [ ! -e "$root/$file" ]; then
        mkdir -p "$(dirname "$root/$file")" && ln -sf "$bundle/root/$file" "$root/$file" && linked=$((linked + 1))
    fi
done < <(cd "$bundle/root" && find . -type f | sed 's|^\./||')
if [ $linked -gt 0 ]; then
    say "linked $linked files the tests open at their build-time paths under $root"
fi

# ---------------------------------------------------------------- 1. tests
# "passed failed ignored" summed over libtest's "test result:" lines of a log.
counts() {
    awk '/^test result:/ { for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i; if ($(i + 1) ~ /^failed/) f += $i; if ($(i + 1) ~ /^ignored/) g += $i } }
         END { printf "%d %d %d\n", p, f, g }' "$1"
}

if [[ $parts == *" tests "* ]]; then
    total_p=0 total_f=0
    for t in "$bundle"/test/*; do
        name=$(basename "$t")
        say "test $name"
        timeout "${TEST_TIMEOUT:-1200}" "$t" >"$logs/test_$name.log" 2>&1
        code=$?
        read -r p f g < <(counts "$logs/test_$name.log")
        total_p=$((total_p + p)) total_f=$((total_f + f))
        result="$p passed, $f failed, $g ignored"
        if [ "$f" -gt 0 ]; then
            # libtest ends with the names of the failed tests, indented, under "failures:".
            result="$result: $(awk '/^failures:$/ { list = ""; on = 1; next } /^test result/ { on = 0 }
                on && /^    [^ ]/ { list = list " " $1 } END { print substr(list, 2) }' "$logs/test_$name.log")"
        elif [ $code -ne 0 ]; then
            result="$result; exited $code: $(grep -v '^\s*$' "$logs/test_$name.log" | tail -1 | cut -c1-120 | tr '|' '/')"
        fi
        [ $code -ne 0 ] && failed=1
        row test "$name" "" "$result"
    done
    row test total "" "$total_p passed, $total_f failed"
fi

# ---------------------------------------------------------------- 2. compute-sanitizer
kernel_tests="conv batchnorm elementwise pool normalize optim gemm loss ntxent"
sanitizer=$(command -v compute-sanitizer)
for candidate in /usr/local/cuda*/bin/compute-sanitizer; do
    [ -z "$sanitizer" ] && [ -x "$candidate" ] && sanitizer=$candidate
done

# Errors in a compute-sanitizer log: its ERROR SUMMARY, else racecheck's "(N errors", else why none.
sanitizer_errors() {
    local n
    n=$(grep -o 'ERROR SUMMARY: [0-9]*' "$1" | tail -1 | grep -o '[0-9]*$')
    [ -z "$n" ] && n=$(grep -o 'RACECHECK SUMMARY.*(\([0-9]*\) error' "$1" | tail -1 | grep -o '([0-9]*' | tr -d '(')
    if [ -n "$n" ]; then
        echo "$n"
    else
        echo "no summary: $(grep -v '^\s*$' "$1" | tail -1 | cut -c1-100 | tr '|' '/')"
    fi
}

if [[ $parts == *" sanitizer "* ]]; then
    if [ -z "$gpu" ]; then
        say "compute-sanitizer skipped: no GPU"
        row "memcheck, racecheck" all "" "skipped: no GPU"
    elif [ -z "$sanitizer" ]; then
        say "compute-sanitizer skipped: not found (PATH, /usr/local/cuda*/bin)"
        row "memcheck, racecheck" all "" "skipped: compute-sanitizer not found"
    else
        for tool in memcheck racecheck; do
            for name in $kernel_tests; do
                [ -x "$bundle/test/$name" ] || continue
                say "$tool $name"
                log=$logs/${tool}_$name.log
                # SIMCLR_TEST_DEVICES=cuda: the tests skip the emulator, which the sanitizer cannot see.
                SIMCLR_TEST_DEVICES=cuda timeout "${TEST_TIMEOUT:-1200}" \
                    "$sanitizer" --tool "$tool" --print-limit 20 "$bundle/test/$name" >"$log" 2>&1
                errors=$(sanitizer_errors "$log")
                read -r p f _ < <(counts "$log")
                if [ "$errors" != 0 ] || [ "$f" -ne 0 ]; then
                    failed=1
                fi
                case $errors in
                [0-9]*) row "$tool" "$name" cuda "$errors errors ($p tests passed, $f failed)" ;;
                *) row "$tool" "$name" cuda "$errors" ;;
                esac
            done
        done
    fi
fi

# ---------------------------------------------------------------- 3. benches
if [[ $parts == *" bench "* ]]; then
    for b in "$bundle"/bench/*; do
        name=$(basename "$b")
        say "bench $name"
        # Criterion writes its reports under CRITERION_HOME.
        # shellcheck disable=SC2086 # BENCH_ARGS is a list of words
        CRITERION_HOME=$logs/criterion "$b" --bench ${BENCH_ARGS:-} >"$logs/bench_$name.log" 2>&1
        code=$?
        if [ $code -ne 0 ]; then
            failed=1
            row bench "$name" "" "exited $code: $(tail -1 "$logs/bench_$name.log" | cut -c1-120 | tr '|' '/')"
        fi
        # The bench's first line says which devices it timed at which sizes.
        echo "  $(head -1 "$logs/bench_$name.log")"
    done
fi

# ---------------------------------------------------------------- 4. PyTorch
if [[ $parts == *" pytorch "* ]]; then
    if [ -z "$gpu" ]; then
        say "PyTorch cuda run skipped: no GPU"
        row pytorch all "" "skipped: no GPU"
    elif ! why=$(python3 -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"' 2>&1); then
        say "PyTorch cuda run skipped: $(echo "$why" | tail -1)"
        row pytorch all "" "skipped: $(echo "$why" | tail -1 | tr '|' '/')"
    else
        say "PyTorch: bench_pytorch.py --device cuda"
        python3 "$bundle/scripts/bench_pytorch.py" --device cuda >"$logs/pytorch.log" 2>&1 ||
            row pytorch all "" "exited $?: $(tail -1 "$logs/pytorch.log" | cut -c1-120 | tr '|' '/')"
    fi
fi

# ---------------------------------------------------------------- the table
# Each bench rate line, "rate | bench | case | device | T ms | rate", with PyTorch's line for the
# same bench and case beside it when ours ran on the GPU (device cuda:N); speed = PyTorch's time /
# ours (above 1: faster than PyTorch).
grep -h '^rate | ' "$logs"/pytorch.log 2>/dev/null >"$logs/rates_pytorch.txt"
grep -h '^rate | ' "$logs"/bench_*.log 2>/dev/null >"$logs/rates.txt"
awk -F' [|] ' '
    FILENAME ~ /pytorch/ { torch[$2 "|" $3] = $5 ", " $6; torch_ms[$2 "|" $3] = $5 + 0; next }
    {
        key = $2 "|" $3; theirs = ""; speed = ""
        if ((key in torch) && $4 ~ /^cuda/) { theirs = torch[key]; speed = sprintf("%.2f×", torch_ms[key] / ($5 + 0)) }
        printf "| bench %s | %s | %s | %s, %s | %s | %s |\n", $2, $3, $4, $5, $6, theirs, speed
    }' "$logs/rates_pytorch.txt" "$logs/rates.txt" >>"$table"

{
    echo "# GPU suite"
    echo
    echo "Machine: ${gpu:-no GPU}. Bundle: $(sed -n 's/^built //p' "$bundle/MANIFEST"), commit" \
        "$(sed -n 's/^commit //p' "$bundle/MANIFEST"), nvcc $(sed -n 's/^nvcc //p' "$bundle/MANIFEST")." \
        "Parts:${parts% }; $((SECONDS - start)) s. The tests run on the emulator and, when there is" \
        "one, the GPU; the benches on the GPU at full sizes, else on the emulator and the cpu at reduced sizes."
    echo
    echo "| part | item | device | result | PyTorch | speed vs PyTorch |"
    echo "|---|---|---|---|---|---|"
    cat "$table"
} >"$logs/gpu_suite.md"
echo
cat "$logs/gpu_suite.md"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp "$logs/gpu_suite.md" "$OUT/gpu_suite.md"
    tar -czf "$OUT/gpu_suite_logs.tar.gz" -C "$logs" --exclude criterion .
    echo "wrote $OUT/gpu_suite.md and $OUT/gpu_suite_logs.tar.gz"
fi
exit $failed
