"""The plugin folders stay plain folders, and discovery finds every file in them."""

from slabbench.registry import available, dataset_class, method_class


def test_plugin_folders_have_no_init(root):
    for folder in ("methods", "datasets"):
        assert (root / folder).is_dir()
        assert not (root / folder / "__init__.py").exists(), f"{folder}/ must not be a regular package"


def test_no_top_level_folder_is_a_regular_package(root):
    # a top-level package (e.g. datasets/) would shadow an installed one (HuggingFace datasets)
    packages = [p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert packages == []


def test_discovery_matches_files(root):
    assert available("method") == sorted(p.stem for p in (root / "methods").glob("*.py"))
    assert available("dataset") == sorted(p.stem for p in (root / "datasets").glob("*.py"))
    for name in ("dense", "magnitude"):
        assert method_class(name).name == name
    for name in ("simulation", "friedman", "digits", "diabetes", "mnist5k", "mnist", "fashion_mnist", "cifar10"):
        assert dataset_class(name).name == name


def test_unknown_plugin_names_the_valid_ones():
    import pytest

    with pytest.raises(KeyError, match=r"unknown method 'l1'.*have .*dense.*magnitude"):
        method_class("l1")
    with pytest.raises(KeyError, match=r"unknown dataset 'mnsit' \(did you mean 'mnist'\?\)"):
        dataset_class("mnsit")
