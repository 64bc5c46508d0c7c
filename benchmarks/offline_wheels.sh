#!/usr/bin/env bash
# Wheels for a machine that cannot reach a package index (a cluster's GPU node, a container that
# already holds PyTorch): every dependency of pyproject.toml except torch and torchvision, with all
# they need, built on a machine that can reach one, for the target's Python and platform.
#
#   benchmarks/offline_wheels.sh DIR [HAVE_FILE]
#   PYTHON_VERSION=3.12 benchmarks/offline_wheels.sh wheels/ have.txt
#   benchmarks/offline_wheels.sh --dry-run DIR      # print the requirements and pip commands only
#
# HAVE_FILE: the target's `python3 -m pip list --format=freeze` (or one project name per line):
# the projects it has are left out of DIR (their versions are not checked against pyproject's
# ranges).  Without it DIR holds the whole closure (numpy, scipy, pandas, ...: a few hundred MB).
# Packages published only as source (e.g. snakemake's connection_pool) are built into wheels
# here; one that is not pure Python stops the script with its name.
#
# On the target, from the repository root:
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/src SLABBENCH_ROOT=$PWD
# then benchmarks/gpu_checks.sh and paper/run_grid.sh as in docs/cluster.md.
#
# Environment: PYTHON (the interpreter whose pip downloads; default python3), PYTHON_VERSION
# (the target's, default 3.12), PLATFORMS (the target's wheel platform tags, space-separated;
# default x86-64 manylinux), EXCLUDE (more projects to leave out, space-separated: e.g. "pulp",
# 16 MB that only Snakemake's ILP scheduler imports; paper/run_grid.sh uses the greedy one).
set -euo pipefail
dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 [--dry-run] DIR [HAVE_FILE]" >&2; exit 2; }
dir=$1
have=${2:-}
[ -z "$have" ] || [ -f "$have" ] || { echo "offline_wheels.sh: no file '$have' (HAVE_FILE: the target's pip list --format=freeze)" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
pyver=${PYTHON_VERSION:-3.12}
[[ "$pyver" =~ ^3\.[0-9]+$ ]] || { echo "offline_wheels.sh: PYTHON_VERSION '$pyver' is not of the form 3.N" >&2; exit 2; }
platforms=${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64}

# pyproject's dependencies without torch and torchvision (the target's own CUDA builds serve)
reqs=()  # (no mapfile: bash 3 has none)
while IFS= read -r line; do reqs+=("$line"); done < <("$py" - "$root/pyproject.toml" <<'EOF'
import re, sys
try:
    import tomllib
except ImportError:
    sys.exit(f"offline_wheels.sh: PYTHON must be Python >= 3.11 (tomllib), not {sys.version.split()[0]}")
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for d in deps:
    if re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() not in ("torch", "torchvision"):
        print(d)
EOF
)
[ ${#reqs[@]} -gt 0 ] || exit 1
plat=()
for p in $platforms; do plat+=(--platform "$p"); done
target=(download --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}")
echo "requirements: ${reqs[*]}"
if [ $dry = 1 ]; then
    echo "pip download --dest TMP ${reqs[*]}   # source-only packages found here are built into wheels"
    echo "pip ${target[*]} --find-links $dir --dest $dir ${reqs[*]}"
    exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# 1. the closure for this interpreter: whatever comes as source only is built into a wheel
"$py" -m pip download -q --dest "$tmp/here" "${reqs[@]}"
for src in "$tmp"/here/*.tar.gz "$tmp"/here/*.zip; do
    [ -e "$src" ] || continue
    "$py" -m pip wheel -q --no-deps --wheel-dir "$tmp/built" "$src"
done
for whl in "$tmp"/built/*.whl; do
    [ -e "$whl" ] || continue
    case "$whl" in
        *-none-any.whl) cp "$whl" "$dir/" ;;
        *) echo "offline_wheels.sh: $(basename "$whl") is not pure Python: build it on the target's platform" >&2; exit 1 ;;
    esac
done
# 2. the closure for the target, the wheels just built standing in for their sources
"$py" -m pip "${target[@]}" -q --find-links "$dir" --dest "$dir" "${reqs[@]}"
# 3. leave out what the target has, and EXCLUDE
removed=0
shopt -s nocaseglob
while read -r name; do
    for whl in "$dir"/"$name"-[0-9]*.whl; do
        [ -e "$whl" ] && rm -f "$whl" && removed=$((removed + 1))
    done
done < <({ [ -z "$have" ] || cat "$have"; printf '%s\n' ${EXCLUDE:-}; } \
         | sed -e 's/[ =<>@].*//' -e '/^#/d' -e '/^$/d' | tr 'A-Z' 'a-z' | tr -- '-.' '__')
echo "left out $removed wheels (HAVE_FILE, EXCLUDE)"
echo "$(ls "$dir"/*.whl | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir"
