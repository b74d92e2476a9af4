"""Hostile files (issue 20): a crafted or malformed input is one line on stderr, exit code 2 and no output, never a
traceback (unless ``--debug``) nor numbers computed from it; a resume part that fails its checks is recomputed with
one warning line. Every file is built here: nothing binary is shipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli

EVALUATE = ("evaluate", "--attack", "clean", "--n-examples", "4", "--detector-budget", "off")
"""The cheapest run that loads everything: the pair, the data, a mixer or a calibration."""


def one_line(code: int, err: str, exit_code: int = 2) -> str:
    """The one error line of a refused run (exit 2, no traceback; ``exit_code`` 1 for a run that failed)."""
    lines = err.strip().splitlines()
    assert code == exit_code and len(lines) == 1 and lines[0].startswith("asmix: error: "), err
    return lines[0]


def refused(monkeypatch, capfd, tmp_path: Path, *args: str) -> str:
    """Run ``asmix ARGS --out DIR``: it must stop with one line and write nothing; that line."""
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capfd, *args, "--out", str(out))
    line = one_line(code, err)
    assert not out.exists()
    return line


@pytest.fixture(scope="module")
def demo_mixer(tmp_path_factory) -> Path:
    """A mixer for the demo pair, saved as train-mixer saves one (its weights are random: only its files matter)."""
    from asmix.mixer import MixingNetwork, save_mixer
    from asmix.models import load_model

    std, rob = load_model("demo-std"), load_model("demo-rob")
    mixer = MixingNetwork.build(std, rob, torch.rand(1, 1, 28, 28), width=8, blocks=1, stages=0).eval()
    folder = tmp_path_factory.mktemp("demo") / "mixer"
    return save_mixer(mixer, folder, config={"models": {"std": "demo-std", "rob": "demo-rob"}}, std=std, rob=rob)


def crafted_mixer(demo_mixer: Path, folder: Path, card=None, weights=None, raw: bytes | None = None) -> Path:
    """A copy of ``demo_mixer`` whose mixer.json went through ``card(document)`` (or is ``raw``) and whose tensors
    went through ``weights(state)``."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(demo_mixer, folder)
    if card is not None:
        document = json.loads((folder / "mixer.json").read_text())
        card(document)
        (folder / "mixer.json").write_text(json.dumps(document))
    if raw is not None:
        (folder / "mixer.json").write_bytes(raw)
    if weights is not None:
        state = load_file(str(folder / "mixer.safetensors"))
        weights(state)
        save_file(state, str(folder / "mixer.safetensors"))
    return folder


def _set(block: str | None, key: str, value):
    return lambda document: (document[block] if block else document).__setitem__(key, value)


def _mixer_for_other_taps(folder: Path) -> Path:
    """A consistent mixer.json and mixer.safetensors whose channel counts are not those of the demo pair's taps."""
    from asmix.mixer import MixingNetwork, save_mixer
    from asmix.models import load_model

    mixer = MixingNetwork([16, 16], [32, 64], width=8, blocks=1, stages=0)
    models = {"models": {"std": "demo-std", "rob": "demo-rob"}}
    return save_mixer(mixer, folder, config=models, std=load_model("demo-std"), rob=load_model("demo-rob"))


def test_the_demo_mixer_as_saved_runs(monkeypatch, capfd, tmp_path, demo_mixer):
    """The control: the files the cases below edit pass every check."""
    code, out, err = run_cli(monkeypatch, capfd, *EVALUATE, "--mixer", str(demo_mixer), "--out", str(tmp_path / "out"))
    assert code in (0, None) and "h_alpha (mixer)" in out and (tmp_path / "out" / "evaluate.json").is_file(), err


# Why 3: crafted numbers ran and reported accuracies near chance with exit 0
CRAFTED_NUMBERS = {
    "mixer.json architecture.scale NaN": (
        dict(card=_set("architecture", "scale", float("nan"))),
        "architecture.scale must be a finite number in (0, 1000], got nan",
    ),
    "mixer weights with a NaN tensor": (
        dict(weights=lambda state: state["linear.weight"].fill_(float("nan"))),
        "mixer.safetensors: tensor linear.weight has 8 NaN or infinite values (of 8)",
    ),
}


@pytest.mark.parametrize("case", CRAFTED_NUMBERS)
def test_crafted_mixer_numbers_are_refused_before_any_result(monkeypatch, capfd, tmp_path, demo_mixer, case):
    crafted, message = CRAFTED_NUMBERS[case]
    folder = crafted_mixer(demo_mixer, tmp_path / "mixer", **crafted)
    assert message in refused(monkeypatch, capfd, tmp_path, *EVALUATE, "--mixer", str(folder))


def calibration(tmp_path: Path, family: str, **entry) -> list[str]:
    """``--calibration FILE --family FAMILY`` for a calibration of the demo pair holding one family's ``entry``."""
    document = {
        "format": "asmix-calibration",
        "version": 1,
        "models": {"std": "demo-std", "rob": "demo-rob"},
        "families": {family: {"alpha": 0.5, "std_temperature": 1.0} | entry},
    }
    (tmp_path / "calibration.json").write_text(json.dumps(document))
    return ["--calibration", str(tmp_path / "calibration.json"), "--family", family]


def test_a_calibration_as_calibrate_writes_it_runs(monkeypatch, capfd, tmp_path):
    """The control: the calibration the cases below edit passes every check."""
    args = calibration(tmp_path, "nuts", std_temperature=0, rob_map={"scale": 2, "power": 3, "clamp_bias": -0.5})
    code, out, err = run_cli(monkeypatch, capfd, *EVALUATE, *args, "--out", str(tmp_path / "out"))
    assert code in (0, None) and (tmp_path / "out" / "evaluate.json").is_file(), err


CRAFTED_CALIBRATIONS = {
    "a nuts scale of 1e300": (
        ("nuts", dict(rob_map={"scale": 1e300, "power": 3, "clamp_bias": -0.5})),
        "nuts scale must be in (0, 1000], got 1e+300",
    ),
    "a nuts power of 1e4": (("nuts", dict(rob_map={"scale": 2, "power": 1e4, "clamp_bias": 0})), "power must be in"),
    "a temperature of 1e-320": (
        ("linear", dict(std_temperature=1e-320)),
        "std temperature must be 0 (hard-max) or in [0.001, 1000], got 1e-320",
    ),
    "a logit scale of 1e300": (("tempered", dict(std_scale=1e300)), "head logit scales must be in (0, 1000]"),
    "an alpha of NaN": (("linear", dict(alpha=float("nan"))), "alpha must be in [0, 1], got nan"),
}


@pytest.mark.parametrize("case", CRAFTED_CALIBRATIONS)
def test_crafted_calibration_numbers_are_refused_before_any_result(monkeypatch, capfd, tmp_path, case):
    (family, entry), message = CRAFTED_CALIBRATIONS[case]
    line = refused(monkeypatch, capfd, tmp_path, *EVALUATE, *calibration(tmp_path, family, **entry))
    assert line.startswith(f"asmix: error: calibration {tmp_path / 'calibration.json'}: ") and message in line


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_base_model_weights_with_a_nan_tensor_are_refused(monkeypatch, capfd, tmp_path, suffix):
    from safetensors.torch import save_file

    from asmix.models import load_model

    state = {name: value.clone() for name, value in load_model("demo-std").state_dict().items()}
    name = next(name for name, value in state.items() if value.is_floating_point())
    state[name].view(-1)[3] = float("nan")
    path = tmp_path / f"std{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    line = refused(monkeypatch, capfd, tmp_path, *EVALUATE, "--alpha", "0.5", "--std-weights", str(path))
    assert (
        line == f"asmix: error: weights {path}: tensor {name} has 1 NaN or infinite values (of {state[name].numel()})"
    )


# Why 4: malformed files gave tracebacks or hung
MALFORMED_MIXERS = {
    "an integer where a string is expected": (
        dict(card=lambda document: document["models"].__setitem__("std", 5)),
        "models.std: input should be a valid string, got 5",
    ),
    "integer base_weights": (dict(card=_set(None, "base_weights", 5)), "base_weights must be an object of std and rob"),
    "an integer weight hash": (
        dict(card=lambda document: document["base_weights"].__setitem__("rob", 5)),
        "base_weights.rob: input should be a valid string, got 5",
    ),
    "a string training.std_scale": (
        dict(card=_set(None, "training", {"mix": {"std_scale": "2"}})),
        "training.std_scale must be a finite number in (0, 1000], got '2'",
    ),
    "channel counts that do not match the weights": (
        dict(card=_set("architecture", "std_channels", [32, 64])),
        "tensor upstream.0.bn1.weight has shape (24,), mixer.json's architecture gives (40,)",
    ),
    "width 1e6": (
        dict(card=_set("architecture", "width", 1e6)),
        "width must be an integer from 1 to 4096, got 1000000.0",
    ),
    "stages 1e7 (hung)": (
        dict(card=_set("architecture", "stages", 10**7)),
        "architecture.stages must be an integer from 0 to 16, got 10000000",
    ),
    "blocks 1e7": (dict(card=_set("architecture", "blocks", 10**7)), "blocks must be an integer from 1 to 16"),
    "an unknown version": (dict(card=_set(None, "version", 99)), "version must be a version this asmix reads, 1 to 3"),
    "an unknown architecture key": (
        dict(card=_set("architecture", "depth", 3)),
        "architecture.depth: extra inputs are not permitted",
    ),
    "a non-UTF-8 mixer.json": (dict(raw=b'{"format": "asmix-mixer", "\xff": 1}'), "not a UTF-8 JSON file"),
}


@pytest.mark.parametrize("case", MALFORMED_MIXERS)
def test_a_malformed_mixer_is_one_line(monkeypatch, capfd, tmp_path, demo_mixer, case):
    crafted, message = MALFORMED_MIXERS[case]
    folder = crafted_mixer(demo_mixer, tmp_path / "mixer", **crafted)
    line = refused(monkeypatch, capfd, tmp_path, *EVALUATE, "--mixer", str(folder))
    assert line.startswith("asmix: error: corrupt mixer ") and message in line


def test_a_mixer_whose_channels_do_not_match_the_taps_is_one_line(monkeypatch, capfd, tmp_path):
    folder = _mixer_for_other_taps(tmp_path / "mixer")  # its files agree; the demo pair's taps do not
    line = refused(monkeypatch, capfd, tmp_path, *EVALUATE, "--mixer", str(folder))
    assert f"mixer in {folder}: g's tap layer2 gives 32 channels, the mixer reads 16" in line


def _npz_with_strings(tmp_path: Path) -> list[str]:
    import numpy as np

    np.savez(tmp_path / "data.npz", x=np.array(["a", "b"]), y=np.array([0, 1]))
    return ["--data", str(tmp_path / "data.npz")]


def _bit_with_an_unknown_key(tmp_path: Path) -> list[str]:
    torch.save({"body.block1.unit01.gn9.weight": torch.ones(2)}, tmp_path / "bit.pt")
    return ["--std", "bit:resnetv2_50x1_bit", "--std-weights", str(tmp_path / "bit.pt")]


def _python_model(source: str, factory: str = "build"):
    def craft(tmp_path: Path) -> list[str]:
        (tmp_path / "model.py").write_text(source)
        return ["--std", f"py:{tmp_path / 'model.py'}:{factory}", "--trust-code"]

    return craft


def _garbage_export(tmp_path: Path) -> list[str]:
    (tmp_path / "model.pt2").write_bytes(b"PK\x03\x04 not an archive" * 8)
    return ["--std", f"file:{tmp_path / 'model.pt2'}", "--trust-code"]


def _non_utf8_config(tmp_path: Path) -> list[str]:
    (tmp_path / "config.json").write_bytes(b'{"config": {"alpha": 0.5, "note": "\xff"}}')
    return ["--config", str(tmp_path / "config.json")]


MALFORMED_INPUTS = {
    "an .npz with string arrays": (_npz_with_strings, "data.npz: images must be numbers, got an array of <U1"),
    "a BiT state dict with an unknown key": (
        _bit_with_an_unknown_key,
        "unexpected key in a BiT checkpoint: body.block1.unit01.gn9.weight",
    ),
    "a py: module with a syntax error": (
        _python_model("def build(:\n"),
        "model.py: SyntaxError: invalid syntax",
    ),
    "a py: factory that raises": (
        _python_model("def build():\n    raise ValueError('no weights here')\n"),
        "model.py:build: build() raised ValueError: no weights here",
    ),
    "a garbage .pt2 (torch logged a traceback first)": (_garbage_export, "cannot load model file"),
    "a non-UTF-8 config": (_non_utf8_config, "utf-8"),
}


@pytest.mark.parametrize("case", MALFORMED_INPUTS)
def test_a_malformed_model_data_or_config_file_is_one_line(monkeypatch, capfd, tmp_path, case):
    craft, message = MALFORMED_INPUTS[case]
    line = refused(monkeypatch, capfd, tmp_path, *EVALUATE, "--alpha", "0.5", *craft(tmp_path))
    assert message in line or message in line.lower(), line


def _checkpoint(tmp_path: Path, edit=None, sealed: bool = True, raw: bytes | None = None) -> list[str]:
    """``train-mixer --resume`` on a crafted checkpoint.pt: the state ``save_checkpoint`` writes, through
    ``edit(state)``, sealed with a correct checksum (what a deliberate edit would do) or, not ``sealed``, as an earlier
    asmix saved it; or the bytes ``raw``."""
    from asmix.io import save_sealed

    state = {
        "identity": json.dumps({"config": {}}),
        "epoch": 1,
        "mixer": {},
        "ema": {},
        "optimizer": {},
        "scheduler": {},
        "history": json.dumps([]),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": [],
    }
    if edit is not None:
        edit(state)
    folder = tmp_path / "run"
    folder.mkdir()
    if raw is not None:
        (folder / "checkpoint.pt").write_bytes(raw)
    elif sealed:
        save_sealed(folder / "checkpoint.pt", state)
    else:
        torch.save(state, folder / "checkpoint.pt")
    return [*TRAIN, "--resume", "--out", str(folder)]


TRAIN = (
    "train-mixer",
    "--n-train",
    "32",
    "--n-val",
    "8",
    "--batch-size",
    "16",
    "--mixer-width",
    "8",
    "--device",
    "cpu",
)


CRAFTED_CHECKPOINTS = {
    "an identity that is not a dict": (
        dict(edit=lambda state: state.__setitem__("identity", json.dumps([1, 2]))),
        "its identity is not an object: list",
    ),
    "an epoch that is a string": (dict(edit=lambda state: state.__setitem__("epoch", "2")), "its epoch is not a count"),
    "a history of 3 records for 1 epoch": (
        dict(edit=lambda state: state.__setitem__("history", json.dumps([{}, {}, {}]))),
        "its history is not one EpochRecord of numbers per epoch (1)",
    ),
    "mixer weights of another network": (
        dict(edit=lambda state: state.__setitem__("epoch", 0) or state.__setitem__("history", "[]")),
        "its mixer weights are not those of this run's mixer",
    ),
    "a checkpoint as an earlier asmix wrote it (no checksum)": (dict(sealed=False), "not a checksummed asmix file"),
    "garbage": (dict(raw=b"PK\x03\x04" + b"\x00" * 64), "unreadable"),
}


@pytest.mark.parametrize("case", CRAFTED_CHECKPOINTS)
def test_a_malformed_checkpoint_is_one_line_with_resumes_alternatives(monkeypatch, capfd, tmp_path, case):
    crafted, message = CRAFTED_CHECKPOINTS[case]
    args = _checkpoint(tmp_path, **crafted)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(monkeypatch, capfd, *args)
    line = one_line(code, err)
    assert line.startswith(f"asmix: error: checkpoint {tmp_path / 'run' / 'checkpoint.pt'} cannot be resumed: ")
    assert message in line and line.endswith("delete it to train from the start in this --out, or pass another --out")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]  # nothing written
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_an_edited_checkpoint_fails_its_checksum(monkeypatch, capfd, tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "run" / "checkpoint.pt"
    sealed = torch.load(path, weights_only=True)
    payload = bytearray(sealed["payload"])
    payload[-30] ^= 1  # one bit of the payload, checksum left as it was
    torch.save(sealed | {"payload": bytes(payload)}, path)
    code, _, err = run_cli(monkeypatch, capfd, *TRAIN, "--resume", "--out", str(tmp_path / "run"))
    assert "its payload does not match its checksum (edited or damaged)" in one_line(code, err)


SWEEP = (
    "sweep-alpha",
    "--attacks",
    "rob",
    "--alphas",
    "0,1",
    "--n-examples",
    "64",
    "--batch-size",
    "16",
    "--steps",
    "3",
)
"""4 resume parts of 16 examples: their clean logits and ROB attack (the issue's 0.531 for g under it)."""


@pytest.fixture(scope="module")
def sweep_parts(tmp_path_factory) -> tuple[dict, Path]:
    """The rows of one uninterrupted sweep, and the parts folder of a run killed once its 4 parts were saved."""
    import contextlib
    import sys

    from conftest import kill_after

    from asmix.cli import main

    def sweep(out: Path) -> None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["asmix", *SWEEP, "--out", str(out)])
            with pytest.raises(SystemExit):
                main()

    root = tmp_path_factory.mktemp("sweep")
    sweep(root / "reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("asmix.cli.options.progress_callback", lambda: contextlib.nullcontext(kill_after(4)))
        sweep(root / "killed")
    assert len(list((root / "killed" / "parts").iterdir())) == 4
    return json.loads((root / "reference" / "sweep.json").read_text())["rows"], root / "killed"


def _edited_record(record: dict) -> dict:
    """The issue's edit: every ROB-attack iterate of g and h counted as classified right."""
    return record | {"rob/robust": torch.ones_like(record["rob/robust"])}


def _tamper(part: Path, case: str) -> None:
    from asmix.io import load_sealed, save_sealed

    if case == "garbage":
        part.write_bytes(b"not a part")
        return
    saved = load_sealed(part)
    if case == "edited, its fingerprint and checksum copied over":
        sealed = torch.load(part, weights_only=True)
        save_sealed(part, saved | {"record": _edited_record(saved["record"])})
        torch.save(torch.load(part, weights_only=True) | {"sha256": sealed["sha256"]}, part)
    elif case == "3 of its 16 rows, checksum recomputed":
        save_sealed(part, saved | {"record": {name: value[:3] for name, value in saved["record"].items()}})
    elif case == "a string where a tensor belongs, checksum recomputed":
        save_sealed(part, saved | {"record": saved["record"] | {"clean/std": "0.9"}})


TAMPERED_PARTS = {
    "edited, its fingerprint and checksum copied over": "its payload does not match its checksum",
    "3 of its 16 rows, checksum recomputed": "its clean/std has 3 rows, the unit has 16 examples",
    "a string where a tensor belongs, checksum recomputed": "its entry 'clean/std' is not a tensor",
    "garbage": "unreadable",
}


@pytest.mark.parametrize("case", TAMPERED_PARTS)
def test_a_resume_part_that_fails_its_checks_is_recomputed_with_one_warning(
    monkeypatch, capfd, tmp_path, sweep_parts, case
):
    reference, killed = sweep_parts
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    part = out / "parts" / "batch-000000016-000000032.pt"
    _tamper(part, case)
    code, _, err = run_cli(monkeypatch, capfd, *SWEEP, "--out", str(out))
    warnings = [line for line in err.splitlines() if line.startswith("asmix: warning:")]
    assert code in (0, None) and "error" not in err and len(warnings) == 1, err
    assert warnings[0].startswith(f"asmix: warning: resume part {part} is not used: {TAMPERED_PARTS[case]}")
    assert warnings[0].endswith("; recomputing it")
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert rows == reference and rows[0]["rob_attack"] == 0.53125  # as if the part had never been touched


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(monkeypatch, capfd, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nmore detail")

    monkeypatch.setattr("asmix.cli.evaluate.run_on_pair", broken)
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE)
    assert one_line(code, err, exit_code=1) == (  # a crash is a failed run, not bad input
        "asmix: error: unexpected RuntimeError: boom; rerun with --debug (or ASMIX_DEBUG=1) for the traceback"
    )
    code, _, err = run_cli(monkeypatch, capfd, "--debug", *EVALUATE)
    assert code == 1 and "Traceback" in err and err.strip().endswith("asmix: error: unexpected RuntimeError: boom")
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE, "--alpha", "2")  # a user error: its message, one line
    assert one_line(code, err) == "asmix: error: alpha must be in [0, 1], got 2.0"
    monkeypatch.setenv("ASMIX_DEBUG", "1")
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE, "--alpha", "2")
    assert code == 2 and "Traceback" in err and err.strip().endswith("alpha must be in [0, 1], got 2.0")
