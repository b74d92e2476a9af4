import json

import pytest
import torch
from conftest import LinearImageModel, kill_after, record_computed_parts

from asmix import AsmixError, SweepConfig, load_data, load_model, sweep_alpha
from asmix.attacks.pgd import ThreatModel
from asmix.experiments.sweep import parse_alphas
from asmix.mixing import MixSettings
from asmix.runtime import RunSettings


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize(
    "text, expected",
    [("0,0.5,1", (0.0, 0.5, 1.0)), ("1, 0.5,0.5", (0.5, 1.0)), ("0:1:0.25", (0.0, 0.25, 0.5, 0.75, 1.0))],
)
def test_parse_alphas(text, expected):
    assert parse_alphas(text) == expected
    assert len(parse_alphas("0:1:0.05")) == 21


@pytest.mark.parametrize("text", ["0,2", "a,b", "0:1:0", "", "nan", "0,inf", "0:inf:0.1", "0:1:nan"])
def test_bad_alphas(text):
    with pytest.raises(AsmixError):
        parse_alphas(text)


def test_attacks_are_named_as_in_evaluate_and_the_short_names_still_read():
    assert SweepConfig(attacks=("transfer-std", "transfer-rob", "pgd")).attacks == ("std", "rob", "mix")
    assert SweepConfig(attacks=("rob", "pgd")).attacks == ("rob", "mix")  # a config block of an earlier result
    assert SweepConfig().attacks == ("std", "rob", "mix")


def test_bad_configs():
    with pytest.raises(AsmixError, match="unknown attack.s. fgsm: choose from transfer-std, transfer-rob, pgd$"):
        SweepConfig(attacks=("std", "fgsm"))
    with pytest.raises(AsmixError, match="batch size must be positive"):
        SweepConfig(run=RunSettings(batch_size=0))
    with pytest.raises(AsmixError, match="eps must be >= 0"):
        SweepConfig(threat=ThreatModel(eps=-1))
    with pytest.raises(AsmixError, match="eps must be a finite number, got nan"):
        SweepConfig(threat=ThreatModel(eps=float("nan")))
    with pytest.raises(AsmixError, match="step size must be a finite number, got inf"):
        SweepConfig(threat=ThreatModel(step_size=float("inf")))
    with pytest.raises(AsmixError, match="std scale must be a finite number, got nan"):
        SweepConfig(mix=MixSettings(std_scale=float("nan")))
    with pytest.raises(AsmixError, match="rob scale must be a finite number, got inf"):
        SweepConfig(mix=MixSettings(rob_scale=float("inf")))


def test_base_outputs_and_base_attacks_run_once_whatever_the_number_of_alphas():
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    calls = {}
    for alphas in ((0.3,), (0.3, 0.7)):
        std, rob = Counting(LinearImageModel(16, 3, 1)), Counting(LinearImageModel(16, 3, 2))
        sweep_alpha(std, rob, x, y, SweepConfig(alphas=alphas, threat=ThreatModel(eps=0.1, steps=4)))
        calls[len(alphas)] = (std.calls, rob.calls)
    # one more alpha costs exactly one MIX attack: 4 PGD steps + 1 prediction, one batch
    assert calls[2][0] - calls[1][0] == 5 and calls[2][1] - calls[1][1] == 5
    # clean (1) + STD attack (4 steps + the last iterate) + g judged on each of the ROB attack's 5 iterates
    # (a point is broken for g if any iterate breaks it) + MIX (5)
    assert calls[1][0] == 1 + 5 + 5 + 5


def test_mix_attack_at_alpha_zero_reuses_the_std_attack_exactly():
    x, y = torch.rand(30, 1, 4, 4), torch.randint(0, 3, (30,))
    std, rob = LinearImageModel(16, 3, 1), LinearImageModel(16, 3, 2)
    reused = sweep_alpha(std, rob, x, y, SweepConfig(alphas=(0.0, 1.0), threat=ThreatModel(eps=0.2, steps=5)))
    direct = sweep_alpha(
        std, rob, x, y, SweepConfig(alphas=(0.0, 1.0), attacks=("mix",), threat=ThreatModel(eps=0.2, steps=5))
    )
    assert [r.mix_attack for r in reused.rows] == [reused.base["std"].std_attack, reused.base["rob"].rob_attack]
    assert [r.mix_attack for r in direct.rows] == pytest.approx([r.mix_attack for r in reused.rows], abs=1 / 30)
    assert direct.rows[0].std_attack is None


def test_sweep_on_demo_pair_shows_the_trade_off():
    std, rob = load_model("demo-std"), load_model("demo-rob")
    x, y = load_data("demo", n_examples=100)
    result = sweep_alpha(
        std,
        rob,
        x,
        y,
        SweepConfig(alphas=(0.0, 0.6, 1.0), threat=ThreatModel(eps=0.3, steps=10), run=RunSettings(batch_size=50)),
    )
    rows = {row.alpha: row for row in result.rows}
    assert result.base["std"].clean >= 0.97 and result.base["std"].std_attack <= 0.05
    assert result.base["rob"].rob_attack >= 0.75
    assert rows[0.0].mix_attack <= 0.05  # alpha 0 is g: broken
    assert rows[1.0].mix_attack >= 0.75  # alpha 1 is h: robust
    assert rows[0.6].clean >= 0.95 and rows[0.6].mix_attack >= 0.5
    assert rows[0.0].clean == result.base["std"].clean and rows[1.0].rob_attack == result.base["rob"].rob_attack
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {"config", "base", "rows"}
    assert set(data["rows"][0]) == {"alpha", "clean", "std_attack", "rob_attack", "mix_attack"}


def _resume_problem():
    """g, h and 20 examples labelled as g and h together see them, but for every fifth."""
    std, rob = LinearImageModel(16, 3, 1), LinearImageModel(16, 3, 2)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = (std(x) + rob(x)).argmax(1)
    y[::5] = (y[::5] + 1) % 3
    return std, rob, x, y


def test_a_killed_sweep_resumes_with_the_numbers_of_one_run(tmp_path, monkeypatch):
    std, rob, x, y = _resume_problem()
    # 3 batches: 3 base units, then a MIX unit per batch at 0.4 and at 0.7 (0 and 1 reuse the base attacks)
    config = SweepConfig(
        alphas=(0.0, 0.4, 0.7, 1.0), threat=ThreatModel(eps=0.05, steps=3), run=RunSettings(batch_size=8)
    )
    reference = sweep_alpha(std, rob, x, y, config)
    with pytest.raises(KeyboardInterrupt):
        sweep_alpha(std, rob, x, y, config, out=tmp_path, progress=kill_after(4))
    assert sorted(path.name for path in (tmp_path / "parts").iterdir()) == [
        "batch-000000000-000000008.pt",
        "batch-000000008-000000016.pt",
        "batch-000000016-000000020.pt",
        "mix-alpha0.4-batch-000000000-000000008.pt",
    ]
    computed = record_computed_parts(monkeypatch)
    resumed = sweep_alpha(std, rob, x, y, config, out=tmp_path)
    assert computed == [
        "mix-alpha0.4-batch-000000008-000000016",
        "mix-alpha0.4-batch-000000016-000000020",
        "mix-alpha0.7-batch-000000000-000000008",
        "mix-alpha0.7-batch-000000008-000000016",
        "mix-alpha0.7-batch-000000016-000000020",
    ]
    assert resumed.to_dict() == reference.to_dict()
    assert 0 < reference.rows[1].mix_attack < reference.rows[1].clean  # the attack did something to compare
    assert not (tmp_path / "parts").exists()


def test_a_changed_setting_recomputes_every_part(tmp_path, monkeypatch):
    std, rob, x, y = _resume_problem()
    config = SweepConfig(alphas=(0.4,), threat=ThreatModel(eps=0.2, steps=3), run=RunSettings(batch_size=8))
    with pytest.raises(KeyboardInterrupt):
        sweep_alpha(std, rob, x, y, config, out=tmp_path, progress=kill_after(4))
    computed = record_computed_parts(monkeypatch)
    other = SweepConfig(alphas=(0.4,), threat=ThreatModel(eps=0.1, steps=3), run=RunSettings(batch_size=8))
    resumed = sweep_alpha(std, rob, x, y, other, out=tmp_path, models={"std": "g"})
    assert len(computed) == 6
    assert resumed.to_dict() == sweep_alpha(std, rob, x, y, other, models={"std": "g"}).to_dict()
