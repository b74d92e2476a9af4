"""Hostile files (issue 20): consent to run code comes only from the person at the keyboard, a config file replays
settings but never consent or output paths, and nothing is unpickled without consent. Each test builds its crafted
file, runs the CLI on it and checks the one-line message, the exit code, that the payload's marker file does not
exist and that no output was written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CreatesFile, run_cli

from asmix.errors import AsmixError
from asmix.models.registry import code_risk

COMMANDS = ["sweep-alpha", "evaluate", "margins", "certify", "calibrate", "train-mixer"]


@pytest.fixture(autouse=True)
def _no_consent_in_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("ASMIX_TRUST_CODE", raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.chdir(tmp_path)  # a command's default output folder would land here


def files(folder) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def evil_module(tmp_path):
    """A Python file that creates a marker when imported; its factory returns no model."""
    marker = tmp_path / "imported"
    (tmp_path / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n\n\ndef make():\n    return 'no model'\n"
    )
    return tmp_path / "evil.py", marker


def refusal(code, out, err) -> str:
    """The one error line of a refused run (after any ``note:`` lines)."""
    assert code == 2 and "Traceback" not in err + out
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("asmix: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_file_does_not_grant_consent(monkeypatch, capsys, tmp_path, command):
    evil, marker = evil_module(tmp_path)
    config = tmp_path / "cfg.yaml"
    config.write_text(f"trust_code: true\nstd: py:{evil}:make\n")
    before = files(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, command, "--config", str(config))
    line = refusal(code, out, err)
    assert f"refusing py:{evil}:make: it imports and runs Python code; pass --trust-code" in line
    notes = [line for line in err.strip().splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: --config {config}: ignored trust_code (consent and output paths come only from the command line: "
        "--trust-code, --out, --json, --report, --robustbench)"
    ]
    assert not marker.exists() and files(tmp_path) == before
    # the spec itself is replayed, and the module is live: consent from the keyboard runs it
    code, out, err = run_cli(monkeypatch, capsys, command, "--config", str(config), "--trust-code")
    assert "returned str, not a torch.nn.Module" in refusal(code, out, err) and marker.exists()


def test_a_config_file_does_not_choose_output_paths(monkeypatch, capsys, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "n_examples: 4\nalphas: [0, 1]\nattacks: [std]\nsteps: 1\ndevice: cpu\n"
        f"out: {tmp_path / 'cfg-out'}\njson_path: {tmp_path / 'cfg.json'}\njson: {tmp_path / 'cfg2.json'}\n"
        f"run: {{batch_size: 4, report: {tmp_path / 'cfg-report.md'}}}\n"
    )
    code, out, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--config", str(config))
    assert code == 0, err
    notes = [line for line in err.splitlines() if "ignored" in line]
    assert notes == [
        f"note: --config {config}: ignored out, json, json_path, report (consent and output paths come only from the "
        "command line: --trust-code, --out, --json, --report, --robustbench)"
    ]
    assert files(tmp_path) == {"cfg.yaml"}  # sweep-alpha's default: the table on stdout, no file
    # the settings are replayed, and the user's own --json is written
    code, _, err = run_cli(monkeypatch, capsys, "sweep-alpha", "--config", str(config), "--json", "mine.json")
    assert code == 0, err
    replayed = json.loads((tmp_path / "mine.json").read_text())["config"]
    assert replayed["alphas"] == [0.0, 1.0] and replayed["threat"]["steps"] == 1
    assert files(tmp_path) == {"cfg.yaml", "mine.json"}


def test_a_config_out_falls_back_to_the_commands_own_default(monkeypatch, capsys, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"out: {tmp_path / 'cfg-out'}\nn_examples: 8\ntarget_clean_acc: 50\ngrid_size: 2\ntarget_classes: 1\n"
        "threat: {steps: 1}\ndevice: cpu\n"
    )
    code, _, err = run_cli(monkeypatch, capsys, "calibrate", "--config", str(config))
    assert code == 0, err
    assert f"note: --config {config}: ignored out " in err
    assert not (tmp_path / "cfg-out").exists() and (tmp_path / "asmix-calibration" / "calibration.json").is_file()


def test_a_config_model_name_cannot_leave_the_robustbench_folder(monkeypatch, capsys, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("model_name: ../escaped\nrobustbench: elsewhere\n")
    code, out, err = run_cli(monkeypatch, capsys, "evaluate", "--config", str(config), "--robustbench", "rb")
    assert "--model-name '../escaped' must be a file name (no folders)" in refusal(code, out, err)
    assert "ignored robustbench" in err and files(tmp_path) == {"cfg.yaml"}


def test_no_trust_code_wins_over_the_environment(monkeypatch, capsys, tmp_path):
    evil, marker = evil_module(tmp_path)
    monkeypatch.setenv("ASMIX_TRUST_CODE", "1")
    before = files(tmp_path)
    args = ["sweep-alpha", "--std", f"py:{evil}:make", "--json", "out.json", "--no-trust-code"]
    line = refusal(*run_cli(monkeypatch, capsys, *args))
    assert line == (
        f"asmix: error: refusing py:{evil}:make: it imports and runs Python code; pass --trust-code instead of "
        "--no-trust-code if you trust it"
    )
    assert not marker.exists() and files(tmp_path) == before
    # without --no-trust-code the variable is the consent
    assert "returned str" in refusal(*run_cli(monkeypatch, capsys, *args[:-1])) and marker.exists()


OPEN_CLIP_TAGS = [
    ("resnet50_clip.openai", "timm/resnet50_clip.openai", "open_clip_pytorch_model.bin"),
    ("vit_base_patch16_clip_224.metaclip_2pt5b", "facebook/metaclip-b16-fullcc2.5b", "metaclip_b16_fullcc2.5b.bin"),
    ("sam2_hiera_tiny", "facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt"),
]


@pytest.mark.parametrize("tag, hub_id, filename", OPEN_CLIP_TAGS)
def test_timm_tags_that_timm_unpickles_need_consent(monkeypatch, capsys, tmp_path, tag, hub_id, filename):
    # timm 1.0.9 reads these hub files with torch.load(weights_only=False): plant one in the Hugging Face cache
    marker = tmp_path / "unpickled"
    snapshot = tmp_path / "hf" / "hub" / f"models--{hub_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save({"state_dict": CreatesFile(marker)}, snapshot / filename)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = files(tmp_path)
    args = ["evaluate", "--std", f"timm:{tag}", "--json", "out.json", "--data", "/nonexistent.npz"]
    line = refusal(*run_cli(monkeypatch, capsys, *args))
    assert line.startswith(
        f"asmix: error: refusing timm:{tag}: timm reads its weights ({hub_id} {filename}) with "
        "torch.load(weights_only=False), which runs any code pickled in the file"
    )
    assert line.endswith("pass --trust-code (or set ASMIX_TRUST_CODE=1) if you trust it")
    assert not marker.exists() and files(tmp_path) == before
    torch.load(snapshot / filename, weights_only=False)["state_dict"].close()  # the planted file is live
    assert marker.exists()


def test_only_the_timm_tags_that_unpickle_are_refused():
    from timm.models._registry import _model_pretrained_cfgs

    refused = {tag for tag in _model_pretrained_cfgs if code_risk(f"timm:{tag}") is not None}
    assert len(refused) == 125  # 109 open_clip tags, 10 MetaCLIP, 6 SAM2 (with their default-tag names)
    assert {"resnet50_clip.openai", "resnet50_clip", "vit_huge_patch14_clip_224.metaclip_2pt5b"} <= refused
    assert not refused & {"resnet18.a1_in1k", "vit_tiny_patch16_224.augreg_in21k", "vit_so400m_patch14_siglip_gap_448"}
    # with --std-weights timm loads no weights and asmix reads the state dict with weights_only=True
    assert code_risk("timm:resnet50_clip.openai", weights="w.safetensors") is None
    with pytest.raises(AsmixError, match=r"timm:resnet18.nope: Invalid pretrained tag \(nope\) for resnet18"):
        code_risk("timm:resnet18.nope")


@pytest.fixture
def planted_robustbench_checkpoint(tmp_path):
    """A RobustBench checkpoint, where RobustBench looks for it, whose pickle creates a marker when loaded."""
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    torch.save({"state_dict": CreatesFile(marker)}, folder / "Ding2020MMA.pt")
    np.savez(tmp_path / "cifar.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, int))
    args = ["--std", "rb:Ding2020MMA", "--dataset", "cifar10", "--model-dir", str(tmp_path / "models")]
    return [*args, "--data", str(tmp_path / "cifar.npz"), "--json", "out.json"], marker


def test_robustbench_checkpoints_are_read_with_weights_only(
    monkeypatch, capsys, tmp_path, planted_robustbench_checkpoint
):
    # RobustBench calls torch.load without weights_only: on torch >= 2.6 (pyproject) that refuses the payload
    assert torch.__version__ >= "2.6"
    args, marker = planted_robustbench_checkpoint
    before = files(tmp_path)
    line = refusal(*run_cli(monkeypatch, capsys, "sweep-alpha", *args, "--trust-code"))
    checkpoint = tmp_path / "models" / "cifar10" / "Linf" / "Ding2020MMA.pt"
    assert f"cannot load RobustBench model Ding2020MMA: its checkpoint {checkpoint} holds" in line
    assert "holds objects other than tensors, which torch.load(weights_only=True) refuses to unpickle" in line
    assert not marker.exists() and files(tmp_path) == before


def test_robustbench_needs_consent_where_torch_load_unpickles(
    monkeypatch, capsys, tmp_path, planted_robustbench_checkpoint
):
    args, marker = planted_robustbench_checkpoint
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    before = files(tmp_path)
    line = refusal(*run_cli(monkeypatch, capsys, "sweep-alpha", *args))
    assert line.startswith(
        "asmix: error: refusing rb:Ding2020MMA: RobustBench reads its checkpoint with torch.load and no weights_only, "
        "and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, so torch.load unpickles by default"
    )
    assert "pass --trust-code" in line and not marker.exists() and files(tmp_path) == before


@pytest.mark.parametrize("option", ["--std-weights", "--data"])
def test_pickled_weights_and_data_are_never_unpickled(monkeypatch, capsys, tmp_path, option):
    marker = tmp_path / "unpickled"
    torch.save({"state_dict": CreatesFile(marker)}, tmp_path / "evil.pt")
    before = files(tmp_path)
    args = ["sweep-alpha", option, str(tmp_path / "evil.pt"), "--json", "out.json", "--trust-code"]
    line = refusal(*run_cli(monkeypatch, capsys, *args))
    assert str(tmp_path / "evil.pt") in line
    assert not marker.exists() and files(tmp_path) == before
