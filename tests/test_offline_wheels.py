"""benchmarks/offline_wheels.sh: the requirements it asks for, and what it keeps, with a
stand-in for pip (no package index is reached): a source-only package built into a wheel, the
target's own projects and EXCLUDE left out, a compiled source-only package refused."""

import os
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "offline_wheels.sh"

# `python -m pip ...` answered by a stand-in: `download` writes the wheels named in $FAKE_WHEELS
# (and, without --only-binary, the sources in $FAKE_SOURCES) into --dest; `wheel` turns a source
# NAME-VER.tar.gz into NAME-VER-$FAKE_TAG.whl; every call is logged.  Anything else: the real Python.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1 $2" != "-m pip" ]; then exec "$REAL_PYTHON" "$@"; fi
shift 2
echo "$*" >> "$PIP_LOG"
cmd=$1; dest=""; binary=0; prev=""
for a in "$@"; do
    case "$prev" in --dest|--wheel-dir) dest=$a ;; esac
    [ "$a" = "--only-binary=:all:" ] && binary=1
    prev=$a
done
mkdir -p "$dest"
if [ "$cmd" = download ]; then
    for w in $FAKE_WHEELS; do touch "$dest/$w"; done
    [ $binary = 1 ] || for s in $FAKE_SOURCES; do touch "$dest/$s"; done
elif [ "$cmd" = wheel ]; then
    src=$(basename "${@: -1}" .tar.gz)
    touch "$dest/$src-$FAKE_TAG.whl"
fi
"""


def _run(tmp_path, *args, sources="connection_pool-0.0.3.tar.gz", tag="py3-none-any", **env_vars):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, PIP_LOG=str(tmp_path / "pip.log"),
               FAKE_WHEELS="snakemake-9.27.1-py3-none-any.whl PyYAML-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl "
                           "python_dateutil-2.9.0-py2.py3-none-any.whl pulp-3.3.2-py3-none-any.whl",
               FAKE_SOURCES=sources, FAKE_TAG=tag, **env_vars)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=60)


def test_it_asks_for_every_dependency_but_torch_and_torchvision(tmp_path):
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    proc = _run(tmp_path, "--dry-run", tmp_path / "wheels")
    assert proc.returncode == 0, proc.stderr
    asked = proc.stdout.splitlines()[0].removeprefix("requirements: ").split()
    assert asked == [d for d in deps if not d.startswith(("torch>", "torchvision>"))]
    assert len(asked) == len(deps) - 2 and any(a.startswith("snakemake") for a in asked)
    assert "--python-version 3.12" in proc.stdout and not (tmp_path / "wheels").exists()


def test_it_builds_the_source_only_package_and_leaves_out_what_the_target_has(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# pip list --format=freeze\npyyaml==6.0.1\npython-dateutil==2.9.0\n")
    proc = _run(tmp_path, tmp_path / "wheels", have, EXCLUDE="pulp")
    assert proc.returncode == 0, proc.stderr
    # PyYAML (case), python_dateutil (- read as _) and pulp (EXCLUDE) left out; connection_pool built
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == [
        "connection_pool-0.0.3-py3-none-any.whl", "snakemake-9.27.1-py3-none-any.whl"]
    assert "left out 3 wheels" in proc.stdout
    calls = (tmp_path / "pip.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["download", "wheel", "download"]
    assert "--only-binary=:all: --python-version 3.12" in calls[2] and f"--find-links {tmp_path / 'wheels'}" in calls[2]


def test_it_refuses_a_compiled_source_only_package_and_bad_arguments(tmp_path):
    proc = _run(tmp_path, tmp_path / "wheels", tag="cp311-cp311-linux_x86_64")
    assert proc.returncode == 1
    assert "connection_pool-0.0.3-cp311-cp311-linux_x86_64.whl is not pure Python" in proc.stderr
    proc = _run(tmp_path, tmp_path / "w", tmp_path / "nothing.txt")
    assert proc.returncode == 2 and "no file" in proc.stderr and "nothing.txt" in proc.stderr
    proc = _run(tmp_path, tmp_path / "w", PYTHON_VERSION="312")
    assert proc.returncode == 2 and "PYTHON_VERSION '312'" in proc.stderr


@pytest.mark.parametrize("args", [("a", "b", "c"), ()])
def test_usage(tmp_path, args):
    proc = _run(tmp_path, *args)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_an_interpreter_without_tomllib_is_named(tmp_path):
    """Python 3.10 has no tomllib (stood in for by a module that fails to import)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tomllib.py").write_text("raise ImportError('no tomllib')\n")
    proc = _run(tmp_path, "--dry-run", tmp_path / "wheels", PYTHONPATH=str(shadow))
    assert proc.returncode == 1 and "PYTHON must be Python >= 3.11 (tomllib)" in proc.stderr
    assert "requirements:" not in proc.stdout
