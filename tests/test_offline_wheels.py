"""benchmarks/offline_wheels.sh: the requirements it asks for, the pip commands it runs and what it
keeps, with a stand-in for pip (no package index is reached): a source-only package built into a
wheel, the target's own projects and EXCLUDE left out (names compared as wheel file names are),
the target's versions passed on as constraints, a compiled source-only package not kept."""

import os
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "offline_wheels.sh"
PLATFORMS = ("manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 "
             "manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64").split()

# `python -m pip ...` answered by a stand-in that logs each call (and the constraints file it is
# given): `download` writes the wheels named in $FAKE_WHEELS into --dest, and the wheels of
# --find-links; without --only-binary also the sources in $FAKE_SOURCES; `wheel` turns a source
# NAME-VER.tar.gz into NAME-VER-$FAKE_TAG.whl.  Anything else: the real Python.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1 $2" != "-m pip" ]; then exec "$REAL_PYTHON" "$@"; fi
shift 2
echo "$*" >> "$PIP_LOG"
cmd=$1; dest=""; links=""; binary=0; prev=""
for a in "$@"; do
    case "$prev" in --dest|--wheel-dir) dest=$a ;; --find-links) links=$a ;; -c) echo "constraints: $(tr '\n' ' ' < "$a")" >> "$PIP_LOG" ;; esac
    [ "$a" = "--only-binary=:all:" ] && binary=1
    prev=$a
done
mkdir -p "$dest"
if [ "$cmd" = download ]; then
    for w in $FAKE_WHEELS; do touch "$dest/$w"; done
    [ -z "$links" ] || cp "$links"/*.whl "$dest/" 2> /dev/null || true
    [ $binary = 1 ] || for s in $FAKE_SOURCES; do touch "$dest/$s"; done
elif [ "$cmd" = wheel ]; then
    src=$(basename "${@: -1}" .tar.gz)
    touch "$dest/$src-$FAKE_TAG.whl"
fi
"""
WHEELS = ("snakemake-9.27.1-py3-none-any.whl PyYAML-6.0.4-cp312-cp312-manylinux_2_17_x86_64.whl "
          "python_dateutil-2.9.0-py2.py3-none-any.whl pulp-3.3.2-py3-none-any.whl ruamel.yaml-0.18.6-py3-none-any.whl")


def _run(tmp_path, *args, sources="connection_pool-0.0.3.tar.gz PyYAML-6.0.4.tar.gz", tag="py3-none-any", **env_vars):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), REAL_PYTHON=sys.executable, PIP_LOG=str(tmp_path / "pip.log"),
               FAKE_WHEELS=WHEELS, FAKE_SOURCES=sources, FAKE_TAG=tag, **env_vars)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=60)


def _requirements(extras=("test",)) -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    deps = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    return [d for d in deps if not d.startswith(("torch>", "torchvision>"))]


def test_it_asks_for_every_dependency_but_torch_and_torchvision_and_the_test_extra(tmp_path):
    proc = _run(tmp_path, "--dry-run", tmp_path / "wheels")
    assert proc.returncode == 0, proc.stderr
    asked = proc.stdout.splitlines()[0].removeprefix("requirements: ").split()
    assert asked == _requirements() and any(a.startswith("snakemake") for a in asked)
    assert any(a.startswith("pytest") for a in asked) and not any(a.startswith("torch") for a in asked)
    assert not (tmp_path / "wheels").exists()
    proc = _run(tmp_path, "--dry-run", tmp_path / "wheels", EXTRAS="")
    assert proc.stdout.splitlines()[0].removeprefix("requirements: ").split() == _requirements(())
    proc = _run(tmp_path, "--dry-run", tmp_path / "wheels", EXTRAS="test gpu")
    assert proc.returncode == 1 and "unknown extra(s) ['gpu'] in EXTRAS; pyproject.toml has: test, slurm" in proc.stderr


def test_it_builds_the_source_only_package_and_leaves_out_what_the_target_has(tmp_path):
    have = tmp_path / "have.txt"
    have.write_text("# pip list --format=freeze\npyyaml==6.0.1\npython-dateutil==2.9.0\nruamel-yaml==0.18.6\n"
                    "-e git+https://example.org/x.git#egg=x\nnumpy==2.5.2\n")
    proc = _run(tmp_path, tmp_path / "wheels", have, EXCLUDE="pulp")
    assert proc.returncode == 0, proc.stderr
    # PyYAML (case), python_dateutil (- as _), ruamel.yaml (. as _) and pulp (EXCLUDE) left out;
    # connection_pool built from its source, PyYAML's source not built (the target has PyYAML)
    assert sorted(p.name for p in (tmp_path / "wheels").iterdir()) == [
        "connection_pool-0.0.3-py3-none-any.whl", "snakemake-9.27.1-py3-none-any.whl"]
    assert "left out 4 wheels (HAVE_FILE, EXCLUDE); 2 wheels" in proc.stdout
    calls = (tmp_path / "pip.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["download", "wheel", "download", "constraints:"]
    here, wheel, target, constraints = calls
    reqs = " ".join(_requirements())
    assert here.startswith("download -q --prefer-binary --dest ") and here.endswith(" " + reqs)
    assert wheel.endswith("/connection_pool-0.0.3.tar.gz")
    expected = ("download --only-binary=:all: --python-version 3.12 --implementation cp "
                + "".join(f"--platform {p} " for p in PLATFORMS) + "-q --find-links ")
    assert target.startswith(expected) and f" --dest {tmp_path / 'wheels'} -c " in target and target.endswith(" " + reqs)
    assert constraints == "constraints: pyyaml==6.0.1 python-dateutil==2.9.0 ruamel-yaml==0.18.6 numpy==2.5.2 "


def test_a_compiled_source_only_package_is_not_kept_and_bad_arguments_are_refused(tmp_path):
    proc = _run(tmp_path, tmp_path / "wheels", tag="cp311-cp311-linux_x86_64")
    assert proc.returncode == 0, proc.stderr
    assert "warning: connection_pool-0.0.3-cp311-cp311-linux_x86_64.whl is not pure Python, not kept" in proc.stderr
    assert not any(p.name.startswith("connection_pool") for p in (tmp_path / "wheels").iterdir())
    proc = _run(tmp_path, tmp_path / "wheels")  # not empty now
    assert proc.returncode == 2 and "is not empty" in proc.stderr
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
