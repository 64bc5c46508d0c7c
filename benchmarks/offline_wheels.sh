#!/usr/bin/env bash
# Wheels for a machine that cannot reach a package index (a cluster's GPU node, a container that
# already holds PyTorch): every dependency of pyproject.toml except torch and torchvision, plus
# its `test` extra (pytest, for benchmarks/gpu_checks.sh's test steps), with all they need, for the
# target's Python and platform, gathered on a machine that can reach an index.
#
#   benchmarks/offline_wheels.sh DIR [HAVE_FILE]
#   PYTHON_VERSION=3.12 EXCLUDE=pulp benchmarks/offline_wheels.sh wheels/ have.txt
#   benchmarks/offline_wheels.sh --dry-run DIR      # print the requirements only
#
# DIR: a new or empty folder.  HAVE_FILE: the target's `python3 -m pip list --format=freeze`:
# the projects it has are left out of DIR, and their versions there constrain the versions
# chosen for the rest (so that pandas is not picked for a numpy newer than the target's).
# Without it DIR holds the whole closure (numpy, scipy, pandas, ...: a few hundred MB).
# Packages published only as source (e.g. snakemake's connection_pool) are built into wheels
# here; one whose wheel is not pure Python is skipped with a warning, and if the target needs it
# the download for the target fails naming it.
#
# On the target, from the repository root:
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/src SLABBENCH_ROOT=$PWD
# then benchmarks/gpu_checks.sh and paper/run_grid.sh as in docs/cluster.md.
#
# Environment: PYTHON (the interpreter whose pip downloads, Python >= 3.11; default python3),
# PYTHON_VERSION (the target's, default 3.12), PLATFORMS (the target's wheel platform tags,
# space-separated; default x86-64 manylinux, e.g. "manylinux_2_28_aarch64 manylinux2014_aarch64"
# for 64-bit Arm), EXTRAS (pyproject extras to include, space-separated; default "test"),
# EXCLUDE (more projects to leave out, space-separated: e.g. "pulp", 16 MB that only Snakemake's
# ILP scheduler needs; paper/run_grid.sh uses the greedy one).
set -euo pipefail
dry=0
if [ "${1:-}" = --dry-run ]; then dry=1; shift; fi
[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 [--dry-run] DIR [HAVE_FILE]" >&2; exit 2; }
dir=$1
have=${2:-}
[ -z "$have" ] || [ -f "$have" ] || { echo "offline_wheels.sh: no file '$have' (HAVE_FILE: the target's pip list --format=freeze)" >&2; exit 2; }
if [ $dry = 0 ] && [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    echo "offline_wheels.sh: '$dir' is not empty (older wheels beside the new ones would stop the install); give a new or empty folder" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
pyver=${PYTHON_VERSION:-3.12}
[[ "$pyver" =~ ^3\.[0-9]+$ ]] || { echo "offline_wheels.sh: PYTHON_VERSION '$pyver' is not of the form 3.N" >&2; exit 2; }
platforms=${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64}

# pyproject's dependencies without torch and torchvision (the target's own CUDA builds serve),
# and those of EXTRAS
reqs=()  # (no mapfile: bash 3 has none)
while IFS= read -r line; do reqs+=("$line"); done < <("$py" - "$root/pyproject.toml" ${EXTRAS-test} <<'EOF'
import re, sys
try:
    import tomllib
except ImportError:
    sys.exit(f"offline_wheels.sh: PYTHON must be Python >= 3.11 (tomllib), not {sys.version.split()[0]}")
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})
bad = [e for e in sys.argv[2:] if e not in extras]
if bad:
    sys.exit(f"offline_wheels.sh: unknown extra(s) {bad} in EXTRAS; pyproject.toml has: {', '.join(extras)}")
for d in project["dependencies"] + [d for e in sys.argv[2:] for d in extras[e]]:
    if re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() not in ("torch", "torchvision"):
        print(d)
EOF
)
[ ${#reqs[@]} -gt 0 ] || exit 1
echo "requirements: ${reqs[*]}"
[ $dry = 0 ] || exit 0

norm() { tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }  # a project name as wheel file names compare
# the projects to leave out (HAVE_FILE's and EXCLUDE), normalised, one per line
skip=$({ if [ -n "$have" ]; then sed -e '/^[#-]/d' -e 's/[ =<>!~;@[].*//' "$have"; fi
         printf '%s\n' ${EXCLUDE:-}; } | sed '/^$/d' | norm | sort -u)
skipped() { [ -n "$skip" ] && printf '%s\n' "$skip" | grep -qxF "$1"; }
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
constraints=()
if [ -n "$have" ]; then
    grep -E '^[A-Za-z0-9._-]+==[^ ;]+$' "$have" > "$tmp/constraints.txt" || true
    constraints=(-c "$tmp/constraints.txt")
fi
# 1. the closure for this interpreter: what comes as source only is built into a wheel
"$py" -m pip download -q --prefer-binary --dest "$tmp/here" "${reqs[@]}"
mkdir -p "$tmp/pure"
for src in "$tmp"/here/*.tar.gz "$tmp"/here/*.zip; do
    [ -e "$src" ] || continue
    base=${src##*/}
    name=$(printf '%s\n' "${base%-*}" | norm)
    if skipped "$name"; then continue; fi
    "$py" -m pip wheel -q --no-deps --wheel-dir "$tmp/built" "$src"
done
for whl in "$tmp"/built/*.whl; do
    [ -e "$whl" ] || continue
    case "$whl" in
        *-none-any.whl) cp "$whl" "$tmp/pure/" ;;
        *) echo "offline_wheels.sh: warning: ${whl##*/} is not pure Python, not kept (the target needs a wheel built for it)" >&2 ;;
    esac
done
# 2. the closure for the target, the wheels just built standing in for their sources
"$py" -m pip download --only-binary=:all: --python-version "$pyver" --implementation cp \
    $(for p in $platforms; do printf -- '--platform %s ' "$p"; done) \
    -q --find-links "$tmp/pure" --dest "$dir" ${constraints[@]+"${constraints[@]}"} "${reqs[@]}"
# 3. leave out what the target has, and EXCLUDE
removed=0 kept=0
for whl in "$dir"/*.whl; do
    [ -e "$whl" ] || continue
    base=${whl##*/}
    if skipped "$(printf '%s\n' "${base%%-*}" | norm)"; then
        rm -f "$whl"
        removed=$((removed + 1))
    else
        kept=$((kept + 1))
    fi
done
echo "left out $removed wheels (HAVE_FILE, EXCLUDE); $kept wheels, $(du -sh "$dir" | cut -f1) in $dir"
