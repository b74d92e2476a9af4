"""Training the mixing network: eq. 4.2 loss, pseudo-labels, attacks, resume, range selection."""

from __future__ import annotations

import json
import math

import pytest
import torch

from asmix.errors import AsmixError
from asmix.experiments.train import (TrainConfig, attack_batch, composite_loss, fixed_alpha_robustness, mixed_objective,
                                     pseudo_labels, select_alpha_range, train_mixer, validate)
from asmix.mixer import MixingNetwork, load_mixer
from asmix.mixing import MixedClassifier
from asmix.models.demo import DemoCNN
from asmix.runtime import batch_generator

TINY = dict(width=8, blocks=1, stages=1)


def _pair(seed: int = 1):
    torch.manual_seed(seed)
    return DemoCNN(width=2).eval(), DemoCNN(width=4).eval()


def _data(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _config(**overrides) -> TrainConfig:
    settings = dict(epochs=2, batch_size=8, steps_range=(1, 2), val_steps=1, eps_max=0.3, **TINY)
    return TrainConfig(**(settings | overrides))


def test_composite_loss_matches_hand_computation():
    mixed_logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]))
    alpha_logit = torch.tensor([0.0, math.log(3.0)])  # alpha 0.5 and 0.75
    y = torch.tensor([0, 1])
    pseudo = torch.tensor([1.0, 0.0])
    ce = torch.tensor([math.log(2.0), -math.log(0.8)])
    bce = torch.tensor([math.log(2.0), -math.log(0.25)])
    loss = composite_loss(mixed_logits, alpha_logit, y, pseudo)  # defaults 0, 1.5, 0.2
    assert torch.allclose(loss, torch.tensor([1.135811, 2.141311]), atol=1e-5)
    loss = composite_loss(mixed_logits, alpha_logit, y, pseudo, c_ce=1.0, c_bce=0.5, c_prod=0.1)
    assert torch.allclose(loss, ce + 0.5 * bce + 0.1 * ce * bce, atol=1e-6)


def test_pseudo_labels():
    y = torch.tensor([0, 0, 0, 0, 0, 0])
    right, wrong = [5.0, 0.0], [0.0, 5.0]
    std = torch.tensor([right, wrong, right, right, wrong, wrong])
    rob = torch.tensor([right, right, wrong, right, right, wrong])
    attacked = torch.tensor([False, False, False, True, True, True])
    # clean: both right -> 0, g wrong h right -> 1, g right h wrong -> 0; attacked: 1 unless g right h wrong
    assert pseudo_labels(std, rob, y, attacked).tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert pseudo_labels(std[2:3], rob[2:3], y[:1], torch.tensor([True])).tolist() == [0.0]


def test_attack_objective_pushes_alpha_down_and_gray_box_detaches_alpha():
    std, rob = _pair()
    x, y = _data(6)
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    with torch.no_grad():
        base = mixed_objective("B", 0.0)(mixed, x, y)
        pushed = mixed_objective("B", 2.0)(mixed, x, y)
        _, _, alpha = mixer.run(x, std, rob)
    assert torch.allclose(pushed - base, -2.0 * torch.log(alpha), atol=1e-5)
    x_a = x.clone().requires_grad_(True)
    (grad_a,) = torch.autograd.grad(mixed_objective("A")(mixed, x_a, y).sum(), x_a)
    x_b = x.clone().requires_grad_(True)
    (grad_b,) = torch.autograd.grad(mixed_objective("B")(mixed, x_b, y).sum(), x_b)
    _, _, alpha = mixer.run(x, std, rob)
    expected = torch.autograd.grad(
        torch.nn.functional.cross_entropy(mixed.mix(std(x_a), rob(x_a), alpha.detach()), y, reduction="sum"), x_a)[0]
    assert torch.allclose(grad_a, expected, atol=1e-6)
    assert not torch.allclose(grad_a, grad_b, atol=1e-6)  # B also follows alpha's gradient


def test_training_attack_stays_in_ball_and_is_seeded():
    std, rob = _pair()
    x, y = _data(8)
    mixer = MixingNetwork.build(std, rob, x, **TINY).train()
    mixed = MixedClassifier(std, rob, alpha=mixer)
    config = _config(eps_max=0.1, steps_range=(2, 4))
    first = attack_batch(mixed, x, y, config, batch_generator(0, "t"))
    second = attack_batch(mixed, x, y, config, batch_generator(0, "t"))
    assert mixer.training  # restored after the attack
    assert torch.equal(first, second)
    assert (first - x).abs().max() <= 0.1 + 1e-6 and (first - x).abs().max() > 0.02
    assert first.min() >= 0 and first.max() <= 1
    # a shard of the batch gets the same examples as the whole batch
    shard = attack_batch(mixed, x[4:], y[4:], config, batch_generator(0, "t"), offset=4, total=8)
    assert torch.allclose(shard, first[4:], atol=1e-6)


def test_setting_c_uses_apgd():
    std, rob = _pair()
    x, y = _data(4)
    mixer = MixingNetwork.build(std, rob, x, **TINY)
    mixed = MixedClassifier(std, rob, alpha=mixer)
    state = torch.get_rng_state()
    x_adv = attack_batch(mixed, x, y, _config(setting="C", eps_max=0.1, steps_range=(2, 2)), batch_generator(0, "c"))
    assert torch.equal(torch.get_rng_state(), state)  # APGD's reseeding does not leak
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_config_validation():
    with pytest.raises(AsmixError, match="setting"):
        TrainConfig(setting="D")
    with pytest.raises(AsmixError, match="steps range"):
        TrainConfig(steps_range=(3, 2))
    with pytest.raises(AsmixError, match="EMA"):
        TrainConfig(ema_decay=1.0)
    std, rob = _pair()
    x, y = _data(4)
    with pytest.raises(AsmixError, match="full batch"):
        train_mixer(std, rob, x, y, x, y, _config(batch_size=8))


def _state(mixer):
    return {name: value.clone() for name, value in mixer.state_dict().items()}


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    std, rob = _pair()
    x, y = _data(16)
    x_val, y_val = _data(8, seed=1)
    config = _config(epochs=2)
    full = train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "full")

    class Stop(Exception):
        pass

    def interrupt(epoch, step):
        if epoch == 1 and step == 0:
            raise Stop

    with pytest.raises(Stop):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut", on_step=interrupt)
    assert json.loads((tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()[0])["epoch"] == 1
    assert not (tmp_path / "cut" / "mixer.json").exists()
    with pytest.raises(AsmixError, match="unfinished run: pass --resume"):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut")
    resumed = train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut", resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2]
    expected, got = _state(full.mixer), _state(resumed.mixer)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert resumed.history[1].train_loss == full.history[1].train_loss
    loaded, stored = load_mixer(tmp_path / "cut")
    assert stored["training"]["epochs"] == 2 and len(stored["data_fingerprint"]) == 64
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name])
    with pytest.raises(AsmixError, match="other settings.*lr"):
        train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=2, lr=0.5), out_dir=tmp_path / "cut", resume=True)
    with pytest.raises(AsmixError, match="no checkpoint"):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "none", resume=True)


def test_select_alpha_range_meets_target():
    std, rob = _pair()
    x, y = _data(24)
    with torch.no_grad():
        y = std(x).argmax(1)  # g is right everywhere: alpha 0 gives 100 % clean accuracy
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    rob_acc = (rob(x).argmax(1) == y).float().mean().item()
    assert rob_acc < 1.0
    selection = select_alpha_range(mixed, x, y, 1.0, eps=0.05, steps=1, batch_size=12)
    assert selection.met and selection.clean_acc == 1.0
    assert 0.0 <= selection.alpha_min <= selection.alpha_max <= 1.0
    assert (mixer.alpha_min, mixer.alpha_max) == (0.0, 1.0)  # restored
    mixer.set_alpha_range(selection.alpha_min, selection.alpha_max)
    with torch.no_grad():
        assert (mixed(x).argmax(1) == y).float().mean().item() == 1.0


def test_range_selection_scores_a_range_by_its_fixed_alpha_floor():
    std, rob = _pair()
    x, y = _data(24)
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    settings = dict(eps=0.3, steps=3, norm="linf", batch_size=12, seed=0, device=torch.device("cpu"))
    floors = fixed_alpha_robustness(mixed, x, y, [0.0, 0.5, 1.0], **settings)
    for alpha, accuracy in floors.items():  # each floor is the end-to-end PGD accuracy of that fixed alpha
        fixed = MixedClassifier(std, rob, alpha)
        assert accuracy == validate(fixed, x, y, **settings)[1]
    selection = select_alpha_range(mixed, x, y, 0.0, floor_grid=0.5, **settings)
    assert selection.floor_attacked_acc == floors[0.5 if selection.alpha_min >= 0.5 else 0.0]
    trusting = select_alpha_range(mixed, x, y, 0.0, floor_grid=0.5, floor_weight=0.0, **settings)
    cautious = select_alpha_range(mixed, x, y, 0.0, floor_grid=0.5, floor_weight=1.0, **settings)
    assert trusting.estimated_attacked_acc >= cautious.estimated_attacked_acc  # weight 0: the best PGD estimate
    assert cautious.floor_attacked_acc >= trusting.floor_attacked_acc          # weight 1: the best worst case
    assert cautious.floor_attacked_acc == max(floors[0.0], floors[0.5])  # alpha_min < 1 for every candidate range


@pytest.mark.slow
def test_short_demo_training_lowers_loss_and_separates_alpha():
    from asmix.data import load_data
    from asmix.models import load_model

    std, rob = load_model("demo-std"), load_model("demo-rob")
    x, y = load_data("demo", split="train")
    config = TrainConfig(epochs=3, batch_size=32, steps_range=(2, 4), val_steps=5, width=16, blocks=1, stages=1,
                         lr=3e-3)
    result = train_mixer(std, rob, x[:192], y[:192], x[-64:], y[-64:], config)
    first, last = result.history[0], result.history[-1]
    assert last.train_loss < first.train_loss
    assert last.alpha_attacked > last.alpha_clean + 0.05
    assert last.train_alpha_attacked > last.train_alpha_clean


def test_target_clean_acc_sets_saved_range(tmp_path):
    std, rob = _pair()
    x, y = _data(16)
    x_val, _ = _data(12, seed=2)
    with torch.no_grad():
        y_val = std(x_val).argmax(1)
    result = train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=1, target_clean_acc=1.0), out_dir=tmp_path)
    selection = result.selection
    assert selection is not None and selection.met and selection.clean_acc == 1.0
    assert result.alpha_range == (selection.alpha_min, selection.alpha_max)
    loaded, stored = load_mixer(tmp_path)
    assert (loaded.alpha_min, loaded.alpha_max) == result.alpha_range
    assert stored["selection"]["target_clean_acc"] == 1.0


def test_train_data_splits_are_disjoint(tmp_path):
    import numpy as np

    from asmix.experiments.inputs import PairSource
    from asmix.experiments.train import load_train_data

    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(20 * 4, dtype=np.uint8).reshape(20, 1, 2, 2), y=np.arange(20) % 10)
    data = load_train_data(PairSource(data=str(path)), 8, 5)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (8, 5, 7)
    firsts = [set((t[:, 0, 0, 0] * 255).round().int().tolist()) for t in (data.x_train, data.x_val, data.x_test)]
    assert not (firsts[0] & firsts[1]) and not (firsts[0] & firsts[2]) and not (firsts[1] & firsts[2])
    with pytest.raises(AsmixError, match="cannot hold"):
        load_train_data(PairSource(data=str(path)), 16, 5)
    demo = load_train_data(PairSource(), 64, 100)
    assert (len(demo.x_train), len(demo.x_val), len(demo.x_test)) == (64, 100, 1900)
    with pytest.raises(AsmixError, match="val split"):
        load_train_data(PairSource(), 64, 100, "dev")


def test_cli_json_holds_the_training_result_and_the_comparison(tmp_path, monkeypatch, capsys):
    import sys

    from asmix.cli import main

    monkeypatch.setattr(sys, "argv", [
        "asmix", "train-mixer", "--n-train", "64", "--n-val", "32", "--epochs", "1", "--batch-size", "32",
        "--steps-range", "1:1", "--val-steps", "1", "--mixer-width", "8", "--mixer-stages", "1", "--mixer-blocks", "1",
        "--device", "cpu", "--compare", "--n-examples", "20", "--out", str(tmp_path / "run"),
        "--json", str(tmp_path / "result.json")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["config"]["epochs"] == 1 and len(summary["history"]) == 1
    rows = {row["name"].split(" ")[0]: row for row in summary["comparison"]["rows"]}
    assert summary["comparison"]["n_examples"] == 20
    assert rows["g"]["alpha"] == 0.0 and rows["h"]["alpha"] == 1.0
    assert rows["g"]["attacked_acc"] == 0.0  # demo-std breaks under PGD-20 at eps 0.3
    assert summary["comparison"] == json.loads((tmp_path / "run" / "comparison.json").read_text())



def test_selection_line_warns_when_the_fixed_alpha_floor_is_weak():
    from asmix.experiments.train import RangeSelection
    from asmix.report.train import selection_line

    weak = selection_line(RangeSelection(0.41, 0.71, 0.99, True, 0.99, 0.826, 0.006, 0.808))
    sound = selection_line(RangeSelection(0.6, 1.0, 0.98, True, 0.98, 0.88, 0.80, 0.86))
    assert "warning: an attack that steers alpha down to 0.41 faces only 0.60% robustness" in weak
    assert "warning" not in sound and "fixed alpha 0.6 80.00%" in sound


def test_compare_picks_the_largest_fixed_alpha_as_accurate_as_the_mixer():
    from asmix.experiments.train import compare_fixed_alpha

    std, rob = _pair()
    x, _ = _data(40)
    with torch.no_grad():
        y = std(x).argmax(1)  # g is right everywhere, h on some
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    comparison = compare_fixed_alpha(mixed, x, y, eps=0.05, steps=1, batch_size=20, grid=0.1)
    g_row, h_row, fixed_row, adaptive_row = comparison.rows
    with torch.no_grad():
        std_logits, rob_logits = std(x), rob(x)
    clean = {round(a / 10, 6): (mixed.mix(std_logits, rob_logits, a / 10).argmax(1) == y).float().mean().item()
             for a in range(11)}
    feasible = [a for a, acc in clean.items() if acc >= adaptive_row.clean_acc - 1e-9]
    expected = max(feasible) if feasible else max(clean, key=lambda a: (clean[a], a))
    assert (g_row.alpha, h_row.alpha, fixed_row.alpha) == (0.0, 1.0, expected)
    assert g_row.clean_acc == 1.0 and fixed_row.clean_acc == pytest.approx(clean[expected])
