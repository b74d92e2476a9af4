"""train-mixer under torchrun: 2 CPU processes (gloo) give the single-process result on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ARGS = [
    "train-mixer",
    "--setting",
    "B",
    "--no-verdict",
    "--rob",
    "demo-std",
    "--n-train",
    "32",
    "--n-val",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--steps-range",
    "1:2",
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
    "--n-examples",
    "4",
]


def _run(command: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path):
    from safetensors.torch import load_file

    single = _run([sys.executable, "-m", "asmix", *ARGS, "--out", "single"], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "asmix",
            *ARGS,
            "--out",
            "ddp",
        ],
        tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert ddp.stdout.count("train-mixer · setting B") == 1  # only rank 0 prints the table
    expected = load_file(str(tmp_path / "single" / "mixer.safetensors"))
    got = load_file(str(tmp_path / "ddp" / "mixer.safetensors"))
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.allclose(value.float(), got[name].float(), atol=1e-5, rtol=1e-4), name
    assert expected["head_norm.running_mean"].abs().max() > 1e-3  # training did move the statistics
    logs = [(tmp_path / run / "train" / "train_log.jsonl").read_text().splitlines() for run in ("single", "ddp")]
    assert len(logs[0]) == len(logs[1]) == 2
    from asmix.mixer import load_mixer

    mixer, card = load_mixer(tmp_path / "ddp", std="demo-std", rob="demo-std")
    assert (
        card.n_train == 32 and card.training["run"]["batch_size"] == 16 and card.training_settings["batch_size"] == 16
    )
    for single_line, ddp_line in zip(*logs):
        a, b = json.loads(single_line), json.loads(ddp_line)
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
        assert a["clean_acc"] == b["clean_acc"] and a["attacked_acc"] == b["attacked_acc"]
