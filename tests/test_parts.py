"""``asmix.experiments.parts``: fingerprints, saved parts, and torchrun sharding of sweep-alpha, margins and
certify (two gloo processes give the numbers of one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LinearImageModel, run_in_gloo_processes

from asmix.attacks.pgd import ThreatModel
from asmix.errors import AsmixWarning
from asmix.experiments.certify import CertifyConfig, certify
from asmix.experiments.margins import MarginsConfig, margins
from asmix.experiments.parts import Parts, fingerprint
from asmix.experiments.sweep import SweepConfig, sweep_alpha
from asmix.runtime import RunSettings


def test_fingerprint_covers_settings_weights_and_data():
    model, x = LinearImageModel(4, 3), torch.rand(2, 1, 2, 2)
    reference = fingerprint({"eps": 0.1}, modules=(model,), tensors=(x,))
    assert fingerprint({"eps": 0.1}, modules=(LinearImageModel(4, 3),), tensors=(x.clone(),)) == reference
    assert fingerprint({"eps": 0.2}, modules=(model,), tensors=(x,)) != reference
    assert fingerprint({"eps": 0.1}, modules=(LinearImageModel(4, 3, seed=1),), tensors=(x,)) != reference
    assert fingerprint({"eps": 0.1}, modules=(model,), tensors=(x + 1e-6,)) != reference


def test_parts_load_only_their_own_fingerprint(tmp_path):
    record = {"logits": torch.arange(6.0).reshape(2, 3)}
    Parts(tmp_path, "a").save("batch-1", record)
    torch.testing.assert_close(Parts(tmp_path, "a").load("batch-1"), record)
    assert Parts(tmp_path, "b").load("batch-1") is None
    (tmp_path / "batch-2.pt").write_bytes(b"torn")  # a part cut short: recomputed with a warning, not an error
    with pytest.warns(AsmixWarning, match="batch-2.pt is not used: unreadable"):
        assert Parts(tmp_path, "a").load("batch-2") is None
    assert Parts(tmp_path, "a").load("batch-3") is None


def _problem():
    std, rob = LinearImageModel(16, 5, seed=1), LinearImageModel(16, 5, seed=2)
    x = torch.rand(11, 1, 4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = (std(x) + rob(x)).argmax(1)
    y[::4] = (y[::4] + 1) % 5
    return std, rob, x, y


CONFIGS = {
    "sweep": (
        sweep_alpha,
        SweepConfig(alphas=(0.0, 0.5, 0.8), threat=ThreatModel(eps=0.1, steps=3), run=RunSettings(batch_size=4)),
    ),
    "margins": (
        margins,
        MarginsConfig(
            aa_steps=3,
            target_classes=1,
            lipschitz=True,
            threat=ThreatModel(eps=0.1, steps=3),
            run=RunSettings(batch_size=4),
        ),
    ),
    "certify": (
        certify,
        CertifyConfig(sigma=0.25, n_samples=20, confidence=0.9, match_clean_acc=True, run=RunSettings(batch_size=40)),
    ),
}


def _run_all(rank: int, folder: Path) -> None:
    """Each command on the problem, its result as JSON in ``folder/<command>.json`` (by rank 0)."""
    std, rob, x, y = _problem()
    for name, (run, config) in CONFIGS.items():
        result = run(std, rob, x, y, config, out=folder / name)
        if rank == 0:
            (folder / f"{name}.json").write_text(json.dumps(result.to_dict()))


@pytest.mark.slow
def test_two_gloo_processes_give_the_numbers_of_one(tmp_path):
    _run_all(0, tmp_path / "single")
    run_in_gloo_processes(_run_all, tmp_path / "sharded")
    for name in CONFIGS:
        single = json.loads((tmp_path / "single" / f"{name}.json").read_text())
        assert json.loads((tmp_path / "sharded" / f"{name}.json").read_text()) == single, name
        assert not (tmp_path / "sharded" / name / "parts").exists()
    rows = [(tmp_path / run / "certify" / "examples.csv").read_text().splitlines() for run in ("single", "sharded")]
    assert [line.rsplit(",", 1)[0] for line in rows[1]] == [line.rsplit(",", 1)[0] for line in rows[0]]  # but time
    assert len(rows[0]) == 12 and not list((tmp_path / "sharded" / "certify").glob("examples.rank*.csv"))
    sweep = json.loads((tmp_path / "single" / "sweep.json").read_text())
    assert 0 < sweep["rows"][1]["mix_attack"] < sweep["rows"][1]["clean"]  # the attacks had work to share
