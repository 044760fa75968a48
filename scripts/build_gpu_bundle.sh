#!/usr/bin/env bash
# Builds the test and bench binaries scripts/gpu_suite.sh runs, with the GPU kernels compiled by
# nvcc, and packs them for a machine with a GPU and no Rust toolchain:
#
#   NVCC=/path/to/nvcc scripts/build_gpu_bundle.sh      # writes target/gpu-bundle.tar.xz
#
# The bundle (target/gpu-bundle/, packed as target/gpu-bundle.tar.xz):
#   MANIFEST        what was built, from which commit, with which compilers
#   test/<name>     the test executables the suite's plan names (`gpu_suite.sh --needs`), stripped
#   bench/<name>    the criterion bench executables it names, stripped
#   bin/simclr      the CLI, which the pipeline test runs (through SIMCLR_BIN)
#   scripts/        gpu_suite.sh, bench_pytorch.py and gpu_report.py
# Nothing else: the tests the suite runs write their own data. A lent GPU machine takes the
# repository's working tree plus what is carried, 64 MiB in all: the script prints that total
# and fails when it is over.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=target/gpu-bundle
archive=$bundle.tar.xz
LIMIT_MIB=64

: "${NVCC:?set NVCC to the path of nvcc: the bundle is for a GPU, so the kernels must be compiled}"
# build.rs fails instead of warning if it cannot use nvcc.
export NVCC SIMCLR_REQUIRE_NVCC=1

# Cargo names each executable it builds in its JSON messages (fresh ones too). Prints
# "<role> <name> <path>" per executable: role bin (the CLI), test or bench.
executables() {
    cargo "$@" --no-run --message-format=json | python3 -c '
import json, sys, tomllib
# A bench not declared with harness = false is given the libtest main, not the criterion one.
benches = tomllib.load(open("Cargo.toml", "rb")).get("bench", [])
criterion = {b["name"] for b in benches if b.get("harness") is False}
missing = []
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    kind, name, test = m["target"]["kind"][0], m["target"]["name"], m["profile"]["test"]
    if kind == "bench" and name not in criterion:
        missing.append(name)
    elif kind == "bench":
        print("bench", name, m["executable"])
    elif kind == "test":
        print("test", name, m["executable"])
    elif test:  # the unit tests of the library or of the binary
        print("test", f"{name}_{kind}", m["executable"])
    elif kind == "bin":
        print("bin", name, m["executable"])
for name in missing:
    print(f"Cargo.toml lacks [[bench]] name = \"{name}\" harness = false", file=sys.stderr)
sys.exit(1 if missing else 0)
'
}

echo "building the tests and benches with NVCC=$NVCC (one cargo command at a time)" >&2
list=$(mktemp)
trap 'rm -f "$list"' EXIT
executables test --release >"$list"
# cargo bench also rebuilds the unit tests in its profile: keep only the benches from it.
executables bench | grep '^bench ' >>"$list"

rm -rf "$bundle" "$archive"
mkdir -p "$bundle/test" "$bundle/bench" "$bundle/bin" "$bundle/scripts"
# The plan's binaries, and the CLI.
while read -r role name; do
    path=$(awk -v r="$role" -v n="$name" '$1 == r && $2 == n { print $3 }' "$list")
    [ -n "$path" ] || { echo "cargo built no $role named $name" >&2 && exit 1; }
    strip -o "$bundle/$role/$name" "$path"
done < <(scripts/gpu_suite.sh --needs; echo "bin simclr")
cp scripts/gpu_suite.sh scripts/bench_pytorch.py scripts/gpu_report.py "$bundle/scripts/"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    commit="$commit+uncommitted changes"
fi
{
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m)"
    echo "commit $commit"
    echo "rustc $(rustc --version)"
    echo "nvcc $("$NVCC" --version | tail -1)"
    # The newest C library symbols the binaries need: the GPU machine's must be at least these.
    echo "needs $(objdump -T "$bundle"/test/* "$bundle"/bench/* "$bundle"/bin/simclr |
        grep -o 'GLIBC_[0-9.]*\|GLIBCXX_[0-9.]*' | sort -uV | awk -F_ '{ v[$1] = $0 } END { print v["GLIBC"], v["GLIBCXX"] }')"
    for role in test bench; do
        echo "$role $(cd "$bundle/$role" && echo *)"
    done
} >"$bundle/MANIFEST"

tar -cf - -C "$(dirname "$bundle")" "$(basename "$bundle")" | xz -T0 -6 >"$archive"

# What a lent GPU machine receives: the working tree (tracked files and untracked ones git does
# not ignore) plus the carried archive.
# (A tracked file deleted from the working tree does not travel: stat skips it.)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
    awk '{ s += $1 } END { print s + 0 }') || true
packed=$(stat -c %s "$archive")
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
cat "$bundle/MANIFEST"
echo "bundle: $bundle ($(du -sh "$bundle" | cut -f1) unpacked), packed as $archive ($(mib "$packed"))"
echo "travels to a GPU machine: working tree $(mib "$tree") + $archive $(mib "$packed") = $(mib $((tree + packed))) (limit $LIMIT_MIB MiB)"
if [ $((tree + packed)) -gt $((LIMIT_MIB << 20)) ]; then
    echo "over the $LIMIT_MIB MiB a GPU machine takes: carry less" >&2
    exit 1
fi
echo "on the GPU machine: tar -xJf $archive -C /tmp && /tmp/gpu-bundle/scripts/gpu_suite.sh"
