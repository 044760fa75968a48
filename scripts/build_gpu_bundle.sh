#!/usr/bin/env bash
# Builds every test and bench binary with the GPU kernels compiled by nvcc, and gathers them into
# a bundle that scripts/gpu_suite.sh runs on a machine with a GPU and no Rust toolchain.
#
#   NVCC=/path/to/nvcc scripts/build_gpu_bundle.sh [--no-data] [BUNDLE_DIR]    (default: bundle)
#
# The bundle:
#   MANIFEST        what was built, from which commit, with which compilers, and the build-time
#                   repository root the binaries have compiled in (CARGO_MANIFEST_DIR)
#   test/<name>     the test executables (simclr_lib = the library's unit tests), stripped
#   bench/<name>    the criterion bench executables, stripped
#   root/           the files the tests open through build-time paths, laid out as in the
#                   repository: target/release/simclr (tests/cli.rs runs it), tests/fixtures/ and,
#                   unless --no-data, data/ (30 MB; the test that reads it skips without it)
#   scripts/        gpu_suite.sh and bench_pytorch.py
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

with_data=1
if [ "${1:-}" = "--no-data" ]; then
    with_data=0
    shift
fi
bundle=${1:-bundle}

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

rm -rf "$bundle"
mkdir -p "$bundle/test" "$bundle/bench" "$bundle/root/target/release" "$bundle/root/tests" \
    "$bundle/scripts"
while read -r role name path; do
    case $role in
    bin) dest=$bundle/root/target/release/$name ;;
    *) dest=$bundle/$role/$name ;;
    esac
    strip -o "$dest" "$path"
done <"$list"

cp -r tests/fixtures "$bundle/root/tests/"
if [ $with_data = 1 ]; then
    cp -rL data "$bundle/root/"
fi
cp scripts/gpu_suite.sh scripts/bench_pytorch.py "$bundle/scripts/"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    commit="$commit+uncommitted changes"
fi
{
    echo "built $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m)"
    echo "commit $commit"
    echo "rustc $(rustc --version)"
    echo "nvcc $("$NVCC" --version | tail -1)"
    echo "root $repo"
    for role in test bench; do
        echo "$role $(cd "$bundle/$role" && echo *)"
    done
} >"$bundle/MANIFEST"

# One archive to carry: the binaries share most of their code, so it packs several times smaller.
tar -cf - -C "$(dirname "$bundle")" "$(basename "$bundle")" | xz -T0 -6 >"$bundle.tar.xz"

cat "$bundle/MANIFEST"
echo "bundle: $bundle ($(du -sh "$bundle" | cut -f1)), packed as $bundle.tar.xz ($(du -sh "$bundle.tar.xz" | cut -f1))"
echo "on the GPU machine: tar -xJf $(basename "$bundle").tar.xz && $(basename "$bundle")/scripts/gpu_suite.sh"
