"""The paper's CIFAR-10 pair at its full size, with random weights (issue 21, item 4): BiT-R152x2 at 128 px as g
and RobustBench's WideResNet-70-16 of ``Wang2023Better_WRN-70-16`` as h, through the real loaders (state dicts
given with --std-weights/--rob-weights), on 2 images. Nothing here is about accuracy: it checks that the pair
builds, that the default taps exist in both networks, and that sweep-alpha, one train-mixer step and evaluate
run end to end on CPU. About 2 GB of weight files and several minutes on two cores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

pytestmark = pytest.mark.slow

STD, ROB = "bit-r152", "Wang2023Better_WRN-70-16"


@pytest.fixture(scope="module")
def paper_pair(tmp_path_factory):
    """Random-weight state dicts of both architectures as safetensors files, and 4 CIFAR-sized images (2 to
    train a mixer on, 2 held out)."""
    import timm
    from safetensors.torch import save_file

    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    folder = tmp_path_factory.mktemp("paper_pair")
    torch.manual_seed(0)
    std = timm.create_model("resnetv2_152x2_bit", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in std.state_dict().items()}, folder / "g.safetensors")
    del std
    rob = model_dicts[BenchmarkDataset("cifar10")][ThreatModel("Linf")][ROB]["model"]()
    save_file({k: v.contiguous() for k, v in rob.state_dict().items()}, folder / "h.safetensors")
    del rob
    rng = np.random.default_rng(0)
    np.savez(folder / "images.npz", x=rng.random((4, 3, 32, 32), dtype=np.float32), y=np.array([3, 8, 0, 6]))
    return folder


def _pair_args(folder) -> list[str]:
    return [
        *("--std", STD, "--rob", ROB, "--dataset", "cifar10", "--data", str(folder / "images.npz")),
        *("--std-weights", str(folder / "g.safetensors"), "--rob-weights", str(folder / "h.safetensors")),
        *("--n-examples", "2", "--batch-size", "2", "--device", "cpu"),
    ]


def test_the_paper_pair_builds_at_full_size_with_its_default_taps(paper_pair):
    from asmix.mixer import MixingNetwork
    from asmix.mixer.taps import default_layers
    from asmix.mixing import MixedClassifier
    from asmix.models import load_model
    from asmix.models.adapters import InputAdapter

    std = load_model(STD, dataset="cifar10", weights=paper_pair / "g.safetensors")
    rob = load_model(ROB, dataset="cifar10", weights=paper_pair / "h.safetensors")
    assert sum(p.numel() for p in std.parameters()) == pytest.approx(232.3e6, rel=1e-3)  # BiT-R152x2
    assert sum(p.numel() for p in rob.parameters()) == pytest.approx(266.8e6, rel=1e-3)  # WRN-70-16
    assert isinstance(std, InputAdapter) and std.preprocessing.resize == (128, 128)  # g sees 128 px, as the paper's
    assert default_layers(std) == ("stages.0", "stages.1") and default_layers(rob) == ("layer.0", "layer.1")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits, alpha = MixedClassifier(std, rob, MixingNetwork.build(std, rob, x)).eval()(x, return_alpha=True)
    assert logits.shape == (2, 10) and alpha.shape == (2,) and bool(((alpha >= 0) & (alpha <= 1)).all())


def test_sweep_train_and_evaluate_run_on_the_paper_pair(monkeypatch, capsys, tmp_path, paper_pair):
    pair = _pair_args(paper_pair)
    sweep = ["sweep-alpha", *pair, "--alphas", "0.5", "--steps", "1", "--attacks", "mix"]
    code, _, err = run_cli(monkeypatch, capsys, *sweep, "--out", str(tmp_path / "sweep"))
    assert code in (0, None), err
    sweep_result = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep_result["config"]["n_examples"] == 2 and [row["alpha"] for row in sweep_result["rows"]] == [0.5]

    train = ["train-mixer", *pair, "--n-train", "2", "--n-val", "2", "--val-split", "train", "--epochs", "1"]
    train += ["--setting", "A", "--steps-range", "1:1", "--val-steps", "1", "--no-head-choice", "--no-verdict"]
    code, _, err = run_cli(monkeypatch, capsys, *train, "--out", str(tmp_path / "mixer"))
    assert code in (0, None), err
    card = json.loads((tmp_path / "mixer" / "mixer.json").read_text())
    assert card["architecture"]["std_layers"] == ["stages.0", "stages.1"]
    assert card["architecture"]["rob_layers"] == ["layer.0", "layer.1"]
    assert card["architecture"]["std_channels"] == [512, 1024] and card["architecture"]["rob_channels"] == [256, 512]
    assert len(card["history"]) == 1 and np.isfinite(card["history"][0]["train_loss"])

    evaluate = ["evaluate", *pair, "--mixer", str(tmp_path / "mixer"), "--attack", "clean,pgd", "--steps", "1"]
    code, _, err = run_cli(monkeypatch, capsys, *evaluate, "--out", str(tmp_path / "eval"))
    assert code in (0, None), err
    result = json.loads((tmp_path / "eval" / "evaluate.json").read_text())
    assert result["config"]["n_examples"] == 2 and set(result["rows"]["mixed"]) == {"clean", "pgd"}
