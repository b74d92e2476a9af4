"""RobustBench zoo names: aliases and prefixes say what they loaded, misspellings get the nearest names."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from asmix import AsmixError, load_model
from asmix.errors import AsmixWarning
from asmix.models.zoo import leaderboard_entry, nearest_names

WANG = {"Wang2023Better_WRN-28-10": ("92.44", "67.31"), "Wang2023Better_WRN-70-16": ("93.25", "70.69")}


@pytest.fixture(autouse=True)
def fake_robustbench_loader(tmp_path, monkeypatch):
    """An empty working directory (no ./models, no ./model_info) and RobustBench's loader replaced by one that
    records the name and returns a tiny model, so no checkpoint is read or downloaded."""
    from asmix.compat import import_robustbench

    import_robustbench()
    import robustbench.utils

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASMIX_MODEL_DIR", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    loaded = []

    def fake_load_model(name, **kwargs):
        loaded.append(name)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

    monkeypatch.setattr(robustbench.utils, "load_model", fake_load_model)
    return loaded


def write_model_info(root, entries, dataset="cifar10", threat="Linf"):
    folder = root / "model_info" / dataset / threat
    folder.mkdir(parents=True)
    for name, (clean, robust) in entries.items():
        (folder / f"{name}.json").write_text(json.dumps({"clean_acc": clean, "autoattack_acc": robust}))


def test_alias_says_what_it_loaded_and_what_else_it_could_mean(fake_robustbench_loader):
    write_model_info(Path.cwd(), WANG)
    with pytest.warns(AsmixWarning) as caught:
        load_model("Wang2023", dataset="cifar10")
    assert fake_robustbench_loader == ["Wang2023Better_WRN-70-16"]
    assert [str(warning.message) for warning in caught] == [
        "'Wang2023' loads RobustBench cifar10 Linf Wang2023Better_WRN-70-16 (clean 93.25%, AutoAttack 70.69%); "
        "it could also mean Wang2023Better_WRN-28-10 (clean 92.44%, AutoAttack 67.31%) (name one with rb:NAME)"
    ]


def test_prefix_resolves_with_the_other_candidates_and_without_model_info(fake_robustbench_loader):
    with pytest.warns(AsmixWarning) as caught:
        load_model("rb:Wang2023Better_WRN-28", dataset="cifar10")
    assert fake_robustbench_loader == ["Wang2023Better_WRN-28-10"]
    assert [str(warning.message) for warning in caught] == [
        "'Wang2023Better_WRN-28' loads RobustBench cifar10 Linf Wang2023Better_WRN-28-10; it could also mean "
        "Wang2023Better_WRN-70-16 (name one with rb:NAME)"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AsmixWarning)  # a full name loads without a notice
        load_model("Wang2023Better_WRN-28-10", dataset="cifar10")


def test_misspelling_suggests_the_nearest_names_with_their_accuracies(tmp_path):
    write_model_info(tmp_path / "cwd", WANG)
    with pytest.raises(AsmixError) as refused:
        load_model("Wang2032", dataset="cifar10")
    assert str(refused.value) == (
        "unknown model 'Wang2032' (not an alias, a spec kind or a RobustBench name); closest: "
        "Wang2023Better_WRN-28-10 (clean 92.44%, AutoAttack 67.31%), Wang2023Better_WRN-70-16 (clean 93.25%, "
        "AutoAttack 70.69%)"
    )
    names = ["Wang2020Improving", "Wong2020Fast", "Wang2023Better_WRN-28-10", "Wang2023Better_WRN-70-16"]
    assert nearest_names("Wang2032", names) == ["Wang2023Better_WRN-28-10", "Wang2023Better_WRN-70-16"]
    assert nearest_names("wong2020fast", names) == ["Wong2020Fast"]
    assert nearest_names("Wang2020Improvng", names) == ["Wang2020Improving"]


def test_ambiguous_prefix_lists_the_candidates():
    with pytest.raises(AsmixError, match=r"'Wang2023Better' is ambiguous: Wang2023Better_WRN-28-10, Wang2023Bet"):
        load_model("rb:Wang2023Better", dataset="cifar10")


def test_unreadable_model_info_is_skipped(tmp_path):
    folder = tmp_path / "cwd" / "model_info" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "A.json").write_text("{not json")
    (folder / "B.json").write_text(json.dumps({"clean_acc": "90.1"}))
    assert leaderboard_entry("cifar10", "Linf", "A") is None
    assert leaderboard_entry("cifar10", "Linf", "B") is None
    assert leaderboard_entry("cifar10", "Linf", "C") is None
