"""A change of the training core leaves every record bit-identical: the tiny trainings of
``benchmarks/record_digest.py`` (every built-in method, stacked and alone, restarts with
screening, the per-target variant) give the digests committed in ``tests/data/record_digests.json``.

Float results depend on the torch build, the CPU's vector instructions and the CPU model (the
matrix libraries choose kernels by CPU), so the digests are compared where all three match
those the file was made with; elsewhere the test says which differs and skips.  A change that
is meant to change records regenerates the file
(``python benchmarks/record_digest.py --dump /tmp/full.json`` and keep its machine and digests)."""

import importlib.util
import json

import pytest

from conftest import ROOT

FIXTURE = ROOT / "tests" / "data" / "record_digests.json"


def _script():
    spec = importlib.util.spec_from_file_location("record_digest", ROOT / "benchmarks" / "record_digest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_records_of_every_built_in_method_are_bit_identical_to_the_committed_digests():
    script = _script()
    ref = json.loads(FIXTURE.read_text())
    if script.machine() != ref["machine"]:
        pytest.skip(f"digests were made with {ref['machine']}, this machine has {script.machine()}")
    assert set(ref["digests"]) == set(script.CASES)
    differ = [name for name in script.CASES if script.digest(script.run_case(name)) != ref["digests"][name]]
    assert not differ, (f"records changed for {differ}: compare `python benchmarks/record_digest.py --dump` "
                        f"before and after the change")
