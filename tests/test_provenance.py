"""A record's ``git_dirty`` says whether the code that trained it differs from its ``git_commit``:
a changed tracked file anywhere, or a new file under the code folders (a plugin written from
docs/extending.md and not yet committed), but not an untracked config or an ignored cache."""

import subprocess

import pytest

from slabbench import provenance


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    _git(tmp_path, "init", "-q")
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "dense.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)
    provenance.git_commit.cache_clear()
    yield tmp_path
    provenance.git_commit.cache_clear()


def _dirty():
    provenance.git_commit.cache_clear()
    commit, dirty = provenance.git_commit()
    assert len(commit) == 40
    return dirty


def test_a_clean_checkout_an_untracked_config_and_an_ignored_cache_are_clean(checkout):
    assert not _dirty()
    (checkout / "my.yaml").write_text("seeds: [0]\n")
    (checkout / "methods" / "__pycache__").mkdir()
    (checkout / "methods" / "__pycache__" / "dense.cpython-311.pyc").write_bytes(b"\0")
    assert not _dirty()


def test_a_new_uncommitted_method_file_makes_the_checkout_dirty(checkout):
    (checkout / "methods" / "random_prune.py").write_text("class Method: ...\n")
    assert _dirty()


def test_a_changed_tracked_file_makes_the_checkout_dirty(checkout):
    (checkout / "methods" / "dense.py").write_text("x = 2\n")
    assert _dirty()


def test_outside_a_checkout_the_commit_is_unknown_even_inside_another_repository(checkout, monkeypatch):
    monkeypatch.setattr(provenance, "repo_root", lambda: None)
    monkeypatch.chdir(checkout)  # a git repository, but not a slabbench checkout
    provenance.git_commit.cache_clear()
    assert provenance.git_commit() == ("unknown", False)
