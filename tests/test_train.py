"""Training the mixing network: eq. 4.2 loss, pseudo-labels, attacks, resume, range selection."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import run_cli
from torch import nn

from asmix.attacks.objectives import mixed_objective
from asmix.attacks.pgd import ThreatModel
from asmix.errors import AsmixError
from asmix.experiments.train import (
    RECIPES,
    TRAIN_ATTACKS,
    TrainConfig,
    attack_rows,
    composite_loss,
    default_run_size,
    judge,
    parse_train_attacks,
    pseudo_labels,
    recipe_settings,
    select_head,
    train_mixer,
    training_rows,
)
from asmix.experiments.train.adversary import chi_square_steps
from asmix.experiments.train.loop import head_classifier
from asmix.identity import weights_digest
from asmix.mixer import MixingNetwork, load_mixer
from asmix.mixing import MixedClassifier, MixSettings
from asmix.models.demo import DemoCNN
from asmix.runtime import RunSettings, batch_generator

TINY = dict(width=8, blocks=1, stages=1)


def _pair(seed: int = 1):
    torch.manual_seed(seed)
    return DemoCNN(width=2).eval(), DemoCNN(width=4).eval()


def _data(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _config(**overrides) -> TrainConfig:
    settings = dict(
        epochs=2,
        run=RunSettings(batch_size=8),
        steps_range=(1, 2),
        threat=ThreatModel(eps=0.3, steps=1),
        target_classes=1,
        apgd_steps_df=2,
        **TINY,
    )
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
    # oracle: clean both right -> 0, g wrong h right -> 1, g right h wrong -> 0; attacked: 1 unless g right h wrong
    assert pseudo_labels(std, rob, y, attacked, "oracle").tolist() == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert pseudo_labels(std[2:3], rob[2:3], y[:1], torch.tensor([True]), "oracle").tolist() == [0.0]
    # paper (the authors' code): clean 0, attacked 1 whatever g and h do
    assert pseudo_labels(std, rob, y, attacked).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    # rob-right: whether h is right on the row, clean or attacked, whatever g does
    assert pseudo_labels(std, rob, y, attacked, "rob-right").tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    with pytest.raises(AsmixError, match="pseudo-label rule"):
        pseudo_labels(std, rob, y, attacked, "mine")


def test_attack_objective_pushes_alpha_down_and_gray_box_detaches_alpha():
    std, rob = _pair()
    x, y = _data(6)
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    with torch.no_grad():
        base, logits = mixed_objective("B", 0.0)(mixed, x, y)
        pushed, _ = mixed_objective("B", 0.3)(mixed, x, y)
        logit = mixer.run(x, std, rob).alpha_logit
    # (1 - w) * CE + w * BCE(logit, 1), and BCE(logit, 1) = -log sigmoid(logit)
    assert torch.allclose(pushed, 0.7 * base - 0.3 * torch.log(torch.sigmoid(logit)), atol=1e-5)
    assert torch.allclose(logits, mixed(x), atol=1e-6)  # the logits PGD reads to stop at a broken iterate
    x_a = x.clone().requires_grad_(True)
    (grad_a,) = torch.autograd.grad(mixed_objective("A")(mixed, x_a, y)[0].sum(), x_a)
    x_b = x.clone().requires_grad_(True)
    (grad_b,) = torch.autograd.grad(mixed_objective("B")(mixed, x_b, y)[0].sum(), x_b)
    alpha = mixer.run(x, std, rob).alpha
    expected = torch.autograd.grad(
        torch.nn.functional.cross_entropy(mixed.mix(std(x_a), rob(x_a), alpha.detach()), y, reduction="sum"), x_a
    )[0]
    assert torch.allclose(grad_a, expected, atol=1e-6)
    assert not torch.allclose(grad_a, grad_b, atol=1e-6)  # B also follows alpha's gradient


def test_training_attack_stays_in_ball_and_is_seeded():
    std, rob = _pair()
    x, y = _data(8)
    mixer = MixingNetwork.build(std, rob, x, **TINY).train()
    mixed = MixedClassifier(std, rob, alpha=mixer)
    config = _config(setting="B", threat=ThreatModel(eps=0.1, steps=1), eps_range=(0.4, 1.0), steps_range=(2, 4))
    first = attack_rows(mixed, x, y, config, batch_generator(0, "t"))
    second = attack_rows(mixed, x, y, config, batch_generator(0, "t"))
    assert mixer.training  # restored after the attack
    assert torch.equal(first, second)
    assert (first - x).abs().max() <= 0.1 + 1e-6 and (first - x).abs().max() > 0.02
    assert first.min() >= 0 and first.max() <= 1
    # a shard of the batch gets the same examples as the whole batch
    shard = attack_rows(mixed, x[4:], y[4:], config, batch_generator(0, "t"), offset=4, total=8)
    assert torch.allclose(shard, first[4:], atol=1e-6)


def test_setting_c_rows_are_the_attacks_own_iterates_never_clean_copies():
    std, rob = _pair()
    x, y = _data(8)
    mixer = MixingNetwork.build(std, rob, x, **TINY)
    mixed = MixedClassifier(std, rob, alpha=mixer)
    config = _config(setting="C", threat=ThreatModel(eps=0.1, steps=1), target_classes=2, apgd_steps_df=3)
    state = torch.get_rng_state()
    rows = attack_rows(mixed, x, y, config, batch_generator(0, "c"))
    assert torch.equal(torch.get_rng_state(), state)  # nothing reseeds torch's generator
    assert rows.shape == (3 * 8, 1, 28, 28)  # one APGD-CE and two APGD-T copies per image, copy-major
    clean = x.repeat(3, 1, 1, 1)
    assert int((rows == clean).flatten(1).all(1).sum()) == 0  # no attacked row is its clean copy
    distance = (rows - clean).abs().flatten(1).amax(1)
    assert distance.max() <= 0.1 * 1.1 + 1e-6 and distance.min() >= 0.1 * 0.4 * 0.5  # eps * U(0.4, 1.1) per example
    assert distance.std() > 0.005  # radii differ per example
    assert torch.equal(rows, attack_rows(mixed, x, y, config, batch_generator(0, "c")))
    shard = attack_rows(mixed, x[4:], y[4:], config, batch_generator(0, "c"), offset=4, total=8)
    assert torch.allclose(shard, rows.view(3, 8, 1, 28, 28)[:, 4:].reshape(-1, 1, 28, 28), atol=1e-6)


def test_setting_c_balances_clean_and_attacked_rows():
    std, rob = _pair()
    x, y = _data(16)
    mixer = MixingNetwork.build(std, rob, x, **TINY)
    mixed = MixedClassifier(std, rob, alpha=mixer)
    config = _config(setting="C", target_classes=2)
    rows = training_rows(mixed, x, y, torch.arange(4), config, batch_generator(0, "r"), torch.device("cpu"))
    assert len(rows) == 2 * 3 * 4 and int(rows.attacked.sum()) == 12  # 4 clean + 8 extra clean, 12 attacked
    assert torch.equal(rows.x[:4], x[:4]) and torch.equal(rows.y[12:], y[:4].repeat(3))
    extra = rows.x[4:12]
    assert all(any(torch.equal(image, row) for row in x) for image in extra)  # extra clean images from the set


def test_chi_square_steps_have_the_distribution_mean():
    generator = torch.Generator().manual_seed(0)
    draws = [chi_square_steps(75, generator) for _ in range(400)]
    assert abs(sum(draws) / len(draws) - 75) < 2.5 and min(draws) >= 1
    assert chi_square_steps(1, torch.Generator().manual_seed(3)) >= 1


def test_config_validation():
    with pytest.raises(AsmixError, match="setting"):
        TrainConfig(setting="D")
    with pytest.raises(AsmixError, match="steps range"):
        TrainConfig(steps_range=(3, 2))
    with pytest.raises(AsmixError, match="EMA"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(AsmixError, match="attack-bce-max"):
        TrainConfig(attack_bce_max=1.5)
    with pytest.raises(AsmixError, match="finite"):
        TrainConfig(alpha_bias=float("nan"))
    with pytest.raises(AsmixError, match="pseudo labels"):
        TrainConfig(pseudo_labels="mine")
    with pytest.raises(AsmixError, match="mixer inputs must be one of both, rob"):
        TrainConfig(mixer_inputs="std")
    with pytest.raises(AsmixError, match="only the logit scales"):
        TrainConfig(mix=MixSettings(mix_space="logit"))
    std, rob = _pair()
    x, y = _data(4)
    with pytest.raises(AsmixError, match="full batch"):
        train_mixer(std, rob, x, y, x, y, _config(run=RunSettings(batch_size=8)))


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
    assert json.loads((tmp_path / "cut" / "train" / "train_log.jsonl").read_text().splitlines()[0])["epoch"] == 1
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
    assert stored.training["epochs"] == 2 and len(stored.data_fingerprint) == 64
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, expected[name])
    with pytest.raises(AsmixError, match="other settings.*lr"):
        train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=2, lr=0.5), out_dir=tmp_path / "cut", resume=True)
    # the finished mixer and the checkpoint know g's and h's weights, not only their names
    assert stored.base_weights == {"std": weights_digest(std), "rob": weights_digest(rob)}
    load_mixer(tmp_path / "cut", std_model=std, rob_model=rob)
    other_rob = copy.deepcopy(rob)
    with torch.no_grad():
        next(other_rob.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(AsmixError, match=r"other weights for h \(--rob\)"):
        load_mixer(tmp_path / "cut", std_model=std, rob_model=other_rob)
    with pytest.raises(AsmixError, match=r"checkpoint .* other weights for h \(--rob\)"):
        train_mixer(std, other_rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut", resume=True)
    with pytest.raises(AsmixError, match="no checkpoint"):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "none", resume=True)


def test_resume_finds_the_checkpoint_of_the_older_layout_and_moves_it_into_train(tmp_path):
    std, rob = _pair()
    x, y = _data(16)
    x_val, y_val = _data(8, seed=1)
    config = _config(epochs=2)
    full = train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "full")
    assert sorted(path.name for path in (tmp_path / "full" / "train").iterdir()) == ["checkpoint.pt", "train_log.jsonl"]

    class Stop(Exception):
        pass

    def interrupt(epoch, step):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "old", on_step=interrupt)
    for name in ("checkpoint.pt", "train_log.jsonl"):  # where asmix wrote them before train/
        (tmp_path / "old" / "train" / name).rename(tmp_path / "old" / name)
    (tmp_path / "old" / "train").rmdir()
    with pytest.raises(AsmixError, match="unfinished run: pass --resume"):
        train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "old")
    resumed = train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "old", resume=True)
    assert [r.epoch for r in resumed.history] == [1, 2]
    for name, value in _state(full.mixer).items():
        assert torch.equal(value, resumed.mixer.state_dict()[name]), name
    assert sorted(path.name for path in (tmp_path / "old").iterdir()) == ["mixer.json", "mixer.safetensors", "train"]
    log = (tmp_path / "old" / "train" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_select_head_meets_target_within_the_grid_and_restores_the_head():
    std, rob = _pair()
    x, y = _data(24)
    with torch.no_grad():
        y = std(x).argmax(1)  # g is right everywhere; h is not
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    with torch.no_grad():
        assert (rob(x).argmax(1) == y).float().mean().item() < 1.0
    selection = select_head(mixed, x, y, 0.9, eps=0.05, batch_size=24, min_alpha=0.0, max_width=0.1)
    head = selection.head
    assert selection.rule == "target" and selection.met and selection.clean_acc >= 0.9 and selection.n_examples == 24
    assert head.alpha_max - head.alpha_min <= 0.1 + 1e-9
    assert (mixer.alpha_min, mixer.alpha_max, mixer.alpha_bias) == (0.0, 1.0, 0.0)  # restored
    assert 0.0 <= selection.estimated_attacked_acc <= selection.clean_acc
    # the tempered fixed alpha: at least as accurate, and no fixed alpha that is beats it on the pools
    assert selection.baseline.head.is_fixed and selection.baseline.clean_acc >= selection.clean_acc
    with torch.no_grad():
        assert (head_classifier(std, rob, mixer, head)(x).argmax(1) == y).float().mean().item() == pytest.approx(
            selection.clean_acc
        )
    impossible = select_head(mixed, x, y, 1.0, eps=0.05, batch_size=12, min_alpha=0.99, max_width=0.0)
    assert not impossible.met and impossible.head.is_fixed


@pytest.mark.slow
def test_short_demo_training_lowers_loss_and_separates_alpha():
    from asmix.data import load_data
    from asmix.models import load_model

    std, rob = load_model("demo-std"), load_model("demo-rob")
    x, y = load_data("demo", split="train")
    config = TrainConfig(
        epochs=3,
        target_classes=1,
        apgd_steps_df=4,
        width=16,
        blocks=1,
        stages=1,
        lr=3e-3,
        threat=ThreatModel(steps=5),
        run=RunSettings(batch_size=32),
    )
    result = train_mixer(std, rob, x[:192], y[:192], x[-64:], y[-64:], config, judge_mixer=False)
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
    result = train_mixer(
        std, rob, x, y, x_val, y_val, _config(epochs=1, target_clean_acc=1.0, range_min_alpha=0.0), out_dir=tmp_path
    )
    selection = result.selection
    assert selection is not None and selection.met and selection.clean_acc == 1.0 and selection.n_examples == 6
    assert result.head == selection.head
    assert result.verdict is not None and result.verdict.n_examples == 6  # judged on the other half
    loaded, stored = load_mixer(tmp_path)
    assert (loaded.alpha_min, loaded.alpha_max, loaded.alpha_bias) == (*result.head.alpha_range, result.head.alpha_bias)
    assert stored.head == result.head and stored.selection["head"] == result.head.to_dict()
    assert stored.selection["target_clean_acc"] == 1.0
    assert stored.verdict["gain_points"] == pytest.approx(result.verdict.gain)


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


def test_cli_json_holds_the_training_result_and_the_verdicts(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train-mixer",
        "--n-train",
        "64",
        "--n-val",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--target-classes",
        "1",
        "--apgd-steps-df",
        "2",
        "--val-steps",
        "1",
        "--mixer-width",
        "8",
        "--mixer-stages",
        "1",
        "--mixer-blocks",
        "1",
        "--device",
        "cpu",
        "--compare",
        "--n-examples",
        "8",
        "--lite-square-queries",
        "7",
        "--out",
        str(tmp_path / "run"),
        "--json",
        str(tmp_path / "result.json"),
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["config"]["epochs"] == 1 and summary["config"]["setting"] == "C" and len(summary["history"]) == 1
    selection = summary["selection"]  # the demo has no target now: the head is chosen by its gain
    assert selection["rule"] == "gain" and selection["target_clean_acc"] is None and selection["n_examples"] == 8
    assert summary["head"] == selection["head"] and (summary["head"]["alpha_min"], summary["head"]["alpha_max"]) != (
        0,
        1,
    )
    assert selection["frontier"]["mixer"] and selection["frontier"]["tempered_fixed"]
    assert "Head choice frontier" in out and "head: " in out and (tmp_path / "run" / "head_frontier.png").is_file()
    for verdict in (summary["verdict"], summary["comparison"]):
        assert verdict["n_examples"] == 8 and verdict["line"] in out
        assert verdict["square_queries"] == 7 and "(Square 7 queries)" in verdict["line"]
        assert verdict["gain_points"] == pytest.approx(
            100 * (verdict["mixer"]["attacked_acc"] - verdict["fixed"]["attacked_acc"])
        )
        for baseline in ("fixed", "plain"):  # the tempered and the plain fixed alpha of equal clean accuracy
            fixed = verdict[baseline]
            assert fixed["clean_correct"] >= verdict["mixer"]["clean_correct"] or fixed["alpha"] == 0
        assert (verdict["plain"]["std_scale"], verdict["plain"]["rob_scale"]) == (1.0, 1.0)
        profile = {row["points"]: row for row in verdict["detector_profile"]}
        assert {"clean", "uniform", "pgd", "apgd-ce-alpha", "apgd-t-alpha", "alpha-first", "square-alpha"} <= set(
            profile
        )
        assert profile["clean"]["auc"] == 0.5 and all(row["n"] == 8 for row in verdict["detector_profile"][:2])
        assert all(0 <= row["auc"] <= 1 and 0 <= row["mean_alpha"] <= 1 for row in verdict["detector_profile"])
        tempered = selection["tempered_fixed"]
        assert (verdict["fixed"]["std_scale"], verdict["fixed"]["rob_scale"]) == (
            tempered["std_scale"],
            tempered["rob_scale"],
        )
    held_out = {row["points"]: row for row in summary["verdict"]["detector_profile"]}
    assert held_out["training attack"]["n"] == 8 * 2  # the training attack's own rows: APGD-CE and one APGD-T copy
    assert "Detector profile" in out
    card = (tmp_path / "run" / "README.md").read_text()  # the model card beside the weights
    # the folder's top holds what one uploads to the Hub; the training state is in train/
    published = {"README.md", "mixer.json", "mixer.safetensors", "train_result.json", "head_frontier.png"}
    assert {path.name for path in (tmp_path / "run").iterdir()} == published | {"comparison.json", "train"}
    assert {path.name for path in (tmp_path / "run" / "train").iterdir()} == {"checkpoint.pt", "train_log.jsonl"}
    from huggingface_hub import ModelCard

    data = ModelCard.load(tmp_path / "run" / "README.md").data
    assert data.library_name == "asmix" and data.datasets == ["ylecun/mnist"] and data.base_model is None
    attacked = data.eval_results[1]
    assert attacked.metric_value == round(100 * summary["verdict"]["mixer"]["attacked_acc"], 2)
    stored = json.loads((tmp_path / "run" / "mixer.json").read_text())
    assert stored["base_weights"]["rob"] in card and stored["verdict"]["line"] in card
    written = json.loads((tmp_path / "run" / "comparison.json").read_text())
    assert written.pop("provenance")["command"].startswith("asmix train-mixer")
    assert summary["comparison"] == written


def test_verdict_line_says_gain_or_no_gain():
    from asmix.experiments.train import NO_GAIN, JudgedModel, Verdict

    mixer = JudgedModel("mixer", None, 1.2, 0.3, 0.99, 0.85, 99, 85, 0.6, 0.9)
    fixed = JudgedModel("fixed alpha 0.9 (g 1.2 / h 0.3)", 0.9, 1.2, 0.3, 0.99, 0.80, 99, 80, 0.9, 0.9)
    plain = JudgedModel("fixed alpha 0.7", 0.7, 1.0, 1.0, 0.99, 0.78, 99, 78, 0.7, 0.7)
    gained = Verdict(100, 0.3, "linf", mixer, fixed, plain).line
    assert gained.startswith(
        "gain: +5.00 points over tempered fixed alpha 0.9 (scales g 1.2 / h 0.3) (85/100 vs 80/100 under adaptive "
        "AutoAttack-lite"
    )
    assert "(Square 300 queries)" in gained and "plain fixed alpha 0.7: 78/100" in gained
    assert gained.endswith("confirm it with asmix evaluate --attack aa,aa-adaptive")
    lost = Verdict(100, 0.3, "linf", replace(mixer, attacked_acc=0.8, attacked_correct=80), fixed, plain)
    assert lost.line.startswith(NO_GAIN) and "+0.00 points" in lost.line


def test_judge_picks_the_largest_fixed_alpha_as_accurate_as_the_mixer():
    from asmix.experiments.train.comparison import equal_accuracy_alpha

    std, rob = _pair()
    x, _ = _data(40)
    with torch.no_grad():
        y = std(x).argmax(1)  # g is right everywhere, h on some
    mixer = MixingNetwork.build(std, rob, x, **TINY).eval()
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    with torch.no_grad():
        std_logits, rob_logits = std(x), rob(x)
    counts = {
        round(a / 100, 6): int((mixed.mix(std_logits, rob_logits, a / 100).argmax(1) == y).sum()) for a in range(101)
    }
    for target in (40, 35, counts[1.0]):
        feasible = [a for a, count in counts.items() if count >= target]
        assert equal_accuracy_alpha(mixed, std_logits, rob_logits, y, target) == max(feasible)
    verdict = judge(mixed, x[:10], y[:10], eps=0.05, batch_size=10)
    assert verdict.fixed.clean_correct >= verdict.mixer.clean_correct
    assert verdict.fixed.alpha == equal_accuracy_alpha(
        mixed, std_logits[:10], rob_logits[:10], y[:10], verdict.mixer.clean_correct
    )


@pytest.mark.parametrize("command", ["train-mixer", "calibrate"])
def test_lite_square_queries_must_be_positive(monkeypatch, capsys, tmp_path, command):
    code, out, err = run_cli(monkeypatch, capsys, command, "--lite-square-queries", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert "square" in err.lower() and not (tmp_path / "o").exists()


def test_the_head_search_finds_a_planted_optimum_with_a_non_unit_scale():
    """Synthetic cached logits, 3 classes, true class 0. Clean: g right but unsure (2, 0, 0), h wrong and sure
    (0, 3, 0); attacked: g wrong (0, 4, 0), h right (10, 0, 0). At scales 1 no alpha keeps both (clean needs alpha <
    0.44, attacked alpha > 0.49); with h's logits scaled by 0.3 every alpha in (0.52, 0.67) does."""
    from asmix.experiments.train.selection import PoolCache, choose_from_caches, fixed_grid, score_heads

    n = 4
    y = torch.zeros(n, dtype=torch.long)
    uninformative = torch.zeros(n)  # the mixer's score is the same everywhere: only the scales can help
    clean = PoolCache(torch.tensor([[2.0, 0, 0]] * n), torch.tensor([[0, 3.0, 0]] * n), uninformative)
    attacked = PoolCache(torch.tensor([[0, 4.0, 0]] * n), torch.tensor([[10.0, 0, 0]] * n), uninformative)
    mixed = MixedClassifier(nn.Identity(), nn.Identity(), 0.5)
    scales = ((1.0, 1.0), (1.2, 0.3), (1.0, 0.3), (2.0, 1.0))
    plain = score_heads(mixed, [clean, attacked], y, fixed_grid(((1.0, 1.0),)))
    assert max(c.estimated_attacked_acc for c in plain) == 0.0  # no plain fixed alpha gets any example
    for target in (None, 1.0):
        chosen = choose_from_caches(mixed, [clean, attacked], y, target, min_alpha=0.5, max_width=0.2, scales=scales)
        assert (chosen.clean_acc, chosen.estimated_attacked_acc) == (1.0, 1.0)
        assert chosen.head.rob_scale == 0.3 and chosen.head.alpha_min > 0.52
        assert chosen.baseline.head.rob_scale == 0.3 and chosen.baseline.estimated_attacked_acc == 1.0


def test_train_mixer_without_a_target_never_ends_with_the_training_head(tmp_path):
    std, rob = _pair()
    x, y = _data(16)
    x_val, y_val = _data(12, seed=2)
    result = train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=1), out_dir=tmp_path)
    assert result.selection is not None and result.selection.rule == "gain" and not result.head.is_training_head
    assert load_mixer(tmp_path)[1].head == result.head
    given = train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=1, choose_head=False), judge_mixer=False)
    assert given.selection is None and given.head.is_training_head  # only when asked for, and the CLI says so


def _mixed_pair(n: int = 8):
    std, rob = _pair()
    x, y = _data(n)
    mixer = MixingNetwork.build(std, rob, x, **TINY)
    return MixedClassifier(std, rob, alpha=mixer), x, y


def test_added_train_attacks_leave_setting_c_copies_as_they_were():
    mixed, x, y = _mixed_pair()
    config = _config(threat=ThreatModel(eps=0.1, steps=1), target_classes=2, apgd_steps_df=3)
    assert config.train_attacks == ("apgd-ce", "apgd-t") and config.copies == 3
    rows = attack_rows(mixed, x, y, config, batch_generator(0, "c"))
    every = replace(config, train_attacks=TRAIN_ATTACKS, train_square_queries=5)
    assert every.copies == 5  # apgd-ce, two apgd-t, alpha-first, square
    more = attack_rows(mixed, x, y, every, batch_generator(0, "c"))
    assert more.shape == (5 * 8, 1, 28, 28) and torch.equal(more[: 3 * 8], rows)  # the default copies come first
    assert parse_train_attacks("square, apgd-ce,square") == ("apgd-ce", "square")  # the table's order, once each


@pytest.mark.parametrize("attack", ["alpha-first", "square"])
def test_alpha_first_and_square_rows_are_attacked_in_the_ball_and_shard(attack):
    mixed, x, _ = _mixed_pair()
    with torch.no_grad():
        y = mixed(x).argmax(1)  # every image starts classified right, so Square searches
    config = _config(
        threat=ThreatModel(eps=0.1, steps=1),
        train_attacks=("apgd-ce", attack),
        apgd_steps_df=3,
        train_square_queries=20,
    )
    assert config.copies == 2
    state = torch.get_rng_state()
    rows = attack_rows(mixed, x, y, config, batch_generator(0, attack))
    assert torch.equal(torch.get_rng_state(), state)  # the package's own draws leave torch's generator as it was
    assert rows.shape == (2 * 8, 1, 28, 28)
    added = rows[8:]
    distance = (added - x).abs().flatten(1).amax(1)
    assert distance.max() <= 0.1 * 1.1 + 1e-6 and distance.min() > 0  # inside eps * U(0.4, 1.1), never the clean image
    assert distance.std() > 0.005 and added.min() >= 0 and added.max() <= 1  # a radius per example
    assert torch.equal(rows, attack_rows(mixed, x, y, config, batch_generator(0, attack)))
    shard = attack_rows(mixed, x[4:], y[4:], config, batch_generator(0, attack), offset=4, total=8)
    assert torch.allclose(shard, rows.view(2, 8, 1, 28, 28)[:, 4:].reshape(-1, 1, 28, 28), atol=1e-6)


def test_square_rows_are_the_packages_square_at_each_radius():
    from asmix.attacks.adaptive import AlphaSquare
    from asmix.experiments.train.adversary import _uniform

    mixed, x, _ = _mixed_pair()
    with torch.no_grad():
        y = mixed(x).argmax(1)
    config = _config(
        threat=ThreatModel(eps=0.1, steps=1),
        train_attacks=("square",),
        eps_range=(1.0, 1.0),
        attack_bce_max=0.0,
        train_square_queries=30,
    )
    rows = attack_rows(mixed, x, y, config, batch_generator(0, "s"))
    generator = batch_generator(0, "s")  # the copy's draws: radius and weight per image, then the package's seed
    _uniform(generator, (8,)), _uniform(generator, (8,))
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    with mixed.alpha_source.full_range():
        square = AlphaSquare(mixed.eval(), eps=0.1, n_queries=30, alpha_weight=0.0)
        square.init_hyperparam(x)
        torch.manual_seed(seed)
        queries, expected = square.attack_single_run(x, y)
    assert queries.max() > 10  # the search ran
    assert torch.allclose(rows, expected, atol=1e-6)  # the package rounds x +- eps its own way


def test_training_bias_moves_the_training_alpha_and_the_head_is_restored():
    std, rob = _pair()
    x, y = _data(16)
    mixer = MixingNetwork.build(std, rob, x, **TINY)
    mixer.set_alpha_range(0.9, 1.0)
    mixer.set_alpha_bias(1.2)
    mixed = MixedClassifier(std, rob, alpha=mixer)
    config = _config(setting="B", threat=ThreatModel(eps=0.1, steps=1), attack_bce_max=1.0, steps_range=(3, 3))
    plain = attack_rows(mixed, x, y, config, batch_generator(0, "b"))
    biased = attack_rows(mixed, x, y, replace(config, train_bias=2.0), batch_generator(0, "b"))
    assert (mixer.alpha_min, mixer.alpha_max, mixer.alpha_bias) == (0.9, 1.0, 1.2)
    assert not torch.equal(plain, biased)  # the alpha term of the attack sees the bias
    means = []  # of alpha over the balanced clean and attacked rows: sigmoid(score + bias), score batch-normalised
    for bias in (0.0, 0.4):
        first = train_mixer(
            std, rob, x, y, x[:8], y[:8], _config(epochs=1, lr=1e-9, train_bias=bias), judge_mixer=False
        )
        means.append((first.history[0].train_alpha_clean + first.history[0].train_alpha_attacked) / 2)
    assert abs(means[0] - 0.5) < 0.03 and means[1] > means[0] + 0.03


def test_resume_with_square_rows_gives_identical_weights_and_other_attacks_are_refused(tmp_path):
    std, rob = _pair()
    x, y = _data(16)
    x_val, y_val = _data(8, seed=1)
    config = _config(epochs=2, train_attacks=("apgd-ce", "square"), train_square_queries=5)
    full = train_mixer(std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "full", judge_mixer=False)

    def interrupt(epoch, step):
        if epoch == 1 and step == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_mixer(
            std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut", on_step=interrupt, judge_mixer=False
        )
    with pytest.raises(AsmixError, match=r"other settings \(config.train_attacks, config.train_square_queries\)"):
        train_mixer(std, rob, x, y, x_val, y_val, _config(epochs=2), out_dir=tmp_path / "cut", resume=True)
    resumed = train_mixer(
        std, rob, x, y, x_val, y_val, config, out_dir=tmp_path / "cut", resume=True, judge_mixer=False
    )
    expected, got = _state(full.mixer), _state(resumed.mixer)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert resumed.history == tuple(replace(r, seconds=s.seconds) for r, s in zip(full.history, resumed.history))


def test_train_attack_choices_are_checked():
    with pytest.raises(AsmixError, match="unknown train attack"):
        TrainConfig(train_attacks=("apgd-ce", "fab"))
    with pytest.raises(AsmixError, match="one at least"):
        TrainConfig(train_attacks=())
    with pytest.raises(AsmixError, match="at most once"):
        TrainConfig(train_attacks=("square", "square"))
    with pytest.raises(AsmixError, match="setting C's; setting B runs PGD"):
        TrainConfig(setting="B", train_attacks=("square",))
    assert TrainConfig(setting="B").copies == 1
    with pytest.raises(AsmixError, match="needs norm linf"):
        TrainConfig(train_attacks=("square",), threat=ThreatModel(norm="l2", eps=0.5))
    with pytest.raises(AsmixError, match="train-square-queries"):
        TrainConfig(train_square_queries=0)


def test_paper_recipe_sets_the_authors_settings_and_given_ones_stay():
    cifar10 = TrainConfig.from_recipe("paper", "cifar10")
    assert (cifar10.setting, cifar10.train_attacks, cifar10.pseudo_labels) == ("C", ("apgd-ce", "apgd-t"), "paper")
    assert (cifar10.epochs, cifar10.target_classes, cifar10.apgd_steps_df) == (3, 9, 75)
    assert (cifar10.lr, cifar10.weight_decay, cifar10.grad_clip, cifar10.ema_decay) == (5e-5, 1e-5, 10.0, 0.0)
    assert (cifar10.c_ce, cifar10.c_bce, cifar10.c_prod, cifar10.train_bias) == (0.0, 1.5, 0.3, 0.4)
    assert (cifar10.eps_range, cifar10.attack_bce_max, cifar10.recipe) == ((0.4, 1.1), 0.4, "paper")
    assert TrainConfig.from_recipe("paper", "cifar100").c_prod == 0.2
    kept = TrainConfig.from_recipe("paper", "cifar10", given={"lr", "epochs"}, lr=1e-3, epochs=1, c_prod=0.7)
    assert (kept.lr, kept.epochs, kept.c_prod) == (1e-3, 1, 0.3)  # given values stay, the others are the recipe's
    assert TrainConfig.from_recipe("default", "cifar10", lr=0.5) == TrainConfig(lr=0.5)
    size = default_run_size("demo", "paper")
    assert (size.n_train, size.epochs, size.target_classes, size.apgd_steps_df) == (None, 3, 9, 75)
    assert size.n_val == default_run_size("demo").n_val  # what the recipe does not set is the dataset's
    with pytest.raises(AsmixError, match="recipe must be one of default, paper"):
        recipe_settings("mine", "cifar10")


def test_recipe_help_lists_every_value_and_each_is_an_option():
    import typer.main

    from asmix.cli import app

    command = typer.main.get_command(app).commands["train-mixer"]
    text = " ".join(next(parameter for parameter in command.params if parameter.name == "recipe").help.split())
    names = {parameter.name for parameter in command.params}
    for name, value in RECIPES["paper"].items():
        spelled = (
            "all"
            if value is None
            else ":".join(map(str, value))
            if name.endswith("_range")
            else ",".join(value)
            if isinstance(value, tuple)
            else format(value, "g")
            if isinstance(value, float)
            else str(value)
        )
        assert f"{name.replace('_', '-')} {spelled}" in text, name
        assert name in names, name  # an option, so that the command line can override it
    assert "c-prod 0.3 (0.2 on cifar100)" in text and "override the recipe" in text and "warm-up" in text


class _Captured(AsmixError):
    pass


def _train_config_of(monkeypatch, capsys, *args):
    """The TrainConfig and the number of training images ``asmix train-mixer ARGS`` would train with."""
    import asmix.experiments.train

    seen = {}

    def capture(std, rob, x_train, *rest, **settings):
        seen.update(config=rest[3], n_train=len(x_train))
        raise _Captured("captured")

    monkeypatch.setattr(asmix.experiments.train, "train_mixer", capture)
    code, _, err = run_cli(monkeypatch, capsys, "train-mixer", "--device", "cpu", *args)
    assert code == 2 and "captured" in err, err
    return seen["config"], seen["n_train"]


def test_cli_recipe_paper_and_explicit_options_override_it(monkeypatch, capsys, tmp_path):
    from asmix.data import load_data

    config, n_train = _train_config_of(monkeypatch, capsys, "--recipe", "paper", "--out", str(tmp_path / "a"))
    dataset = dict(threat=config.threat, run=config.run, steps_range=(5, 10))  # demo's own
    assert config == TrainConfig.from_recipe("paper", "demo", **dataset)  # every value of the recipe
    assert n_train == len(load_data("demo", split="train")[0])  # all training images
    config, n_train = _train_config_of(
        monkeypatch,
        capsys,
        "--recipe",
        "paper",
        "--lr",
        "1e-4",
        "--epochs",
        "1",
        "--n-train",
        "64",
        "--train-attacks",
        "apgd-ce,square",
        "--out",
        str(tmp_path / "b"),
    )
    assert (config.lr, config.epochs, n_train, config.train_attacks) == (1e-4, 1, 64, ("apgd-ce", "square"))
    assert (config.weight_decay, config.train_bias, config.ema_decay, config.target_classes) == (1e-5, 0.4, 0.0, 9)
    (tmp_path / "settings.yaml").write_text("lr: 2.0e-4\nrecipe: paper\n")  # --config too overrides the recipe
    config, _ = _train_config_of(monkeypatch, capsys, "--config", str(tmp_path / "settings.yaml"))
    assert (config.recipe, config.lr, config.weight_decay) == ("paper", 2e-4, 1e-5)
    config, n_train = _train_config_of(monkeypatch, capsys, "--out", str(tmp_path / "c"))
    assert (config.recipe, config.lr, config.train_bias, config.train_attacks, n_train) == (
        "default",
        1e-3,
        0.0,
        ("apgd-ce", "apgd-t"),
        2048,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-attacks", "foo"], "unknown train attack(s) foo"),
        (["--train-attacks", ""], "one at least"),
        (["--train-attacks", " , "], "one at least"),
        (["--setting", "B", "--train-attacks", "square"], "setting C's"),
        (["--recipe", "mine"], "recipe must be one of default, paper"),
    ],
)
def test_bad_train_attacks_and_recipes_are_one_line(monkeypatch, capsys, tmp_path, args, message):
    import asmix.experiments.inputs

    monkeypatch.setattr(asmix.experiments.inputs, "load_pair", lambda *a, **k: pytest.fail("work started"))
    code, out, err = run_cli(monkeypatch, capsys, "train-mixer", *args, "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert message in err
