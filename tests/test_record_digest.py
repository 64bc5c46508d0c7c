"""A change of the training core leaves every record bit-identical: the tiny trainings of
``benchmarks/record_digest.py`` (every built-in method, stacked and alone, restarts with
screening, the per-target variant) give the digests committed in ``tests/data/record_digests.json``.

Float results depend on the torch build, the CPU's vector instructions and the CPU model (the
matrix libraries choose kernels by CPU), so the file holds one entry per machine and the digests
are compared where all three match an entry; elsewhere the test names the machines it has and
skips.  Another machine is added with ``python benchmarks/record_digest.py --fixture
tests/data/record_digests.json``; a change that is meant to change records regenerates the file
with ``--reset`` added (which drops the other machines' now stale entries)."""

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
    entries = script.fixture_entries(json.loads(FIXTURE.read_text()))
    here = script.machine()
    ref = next((e for e in entries if e["machine"] == here), None)
    if ref is None:
        pytest.skip(f"digests were made on {[e['machine'] for e in entries]}, this machine is {here}; to check "
                    f"records here, add it at a commit whose records are trusted: python benchmarks/record_digest.py "
                    f"--fixture tests/data/record_digests.json")
    assert set(ref["digests"]) == set(script.CASES)
    differ = [name for name in script.CASES if script.digest(script.run_case(name)) != ref["digests"][name]]
    assert not differ, (f"records changed for {differ}: compare `python benchmarks/record_digest.py --dump` "
                        f"before and after the change")


def test_fixture_writing_adds_replaces_and_resets_per_machine_entries(tmp_path):
    script = _script()
    path = tmp_path / "digests.json"
    a, b = {"cpu": "A"}, {"cpu": "B"}
    script.write_fixture(path, a, {"dense": "1"})
    script.write_fixture(path, b, {"dense": "2"})
    script.write_fixture(path, a, {"dense": "3"})          # A's entry replaced, B's kept
    assert script.fixture_entries(json.loads(path.read_text())) == [
        {"machine": b, "digests": {"dense": "2"}}, {"machine": a, "digests": {"dense": "3"}}]
    script.write_fixture(path, b, {"dense": "4"}, reset=True)
    assert script.fixture_entries(json.loads(path.read_text())) == [{"machine": b, "digests": {"dense": "4"}}]
    with pytest.raises(ValueError, match="machines"):
        script.fixture_entries({"machine": a, "digests": {}})
