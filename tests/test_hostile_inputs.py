"""Hostile files (issue 20): a crafted or malformed input is one line on stderr, exit code 2 and no output, never a
traceback (unless ``--debug``) nor numbers computed from it; a resume part that fails its checks is recomputed with
one warning line. Every file is built here: nothing binary is shipped."""

from __future__ import annotations

from conftest import run_cli

EVALUATE = ("evaluate", "--attack", "clean", "--n-examples", "4", "--detector-budget", "off")
"""The cheapest run that loads everything: the pair, the data, a mixer or a calibration."""


def one_line(code: int, err: str) -> str:
    """The one error line of a refused run (exit 2, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("asmix: error: "), err
    return lines[0]


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(monkeypatch, capfd, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nmore detail")

    monkeypatch.setattr("asmix.cli.evaluate.run_on_pair", broken)
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE)
    assert one_line(code, err) == (
        "asmix: error: unexpected RuntimeError: boom; rerun with --debug (or ASMIX_DEBUG=1) for the traceback"
    )
    code, _, err = run_cli(monkeypatch, capfd, "--debug", *EVALUATE)
    assert code == 2 and "Traceback" in err and err.strip().endswith("asmix: error: unexpected RuntimeError: boom")
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE, "--alpha", "2")  # a user error: its message, one line
    assert one_line(code, err) == "asmix: error: alpha must be in [0, 1], got 2.0"
    monkeypatch.setenv("ASMIX_DEBUG", "1")
    code, _, err = run_cli(monkeypatch, capfd, *EVALUATE, "--alpha", "2")
    assert code == 2 and "Traceback" in err and err.strip().endswith("alpha must be in [0, 1], got 2.0")
