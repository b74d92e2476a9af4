"""Output paths are checked before the work, and a failed write is one error naming the path."""

import errno

import pytest

import asmix.io
from asmix import AsmixError
from asmix.errors import RunFailed
from asmix.io import atomic_write, atomic_write_text, check_writable_dir, check_writable_file, load_sealed, save_sealed


def test_writable_paths_are_accepted_and_nothing_is_created(tmp_path):
    assert check_writable_file(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert check_writable_dir(tmp_path / "out" / "run1") == tmp_path / "out" / "run1"
    (tmp_path / "old.json").write_text("{}")
    check_writable_file(tmp_path / "old.json")  # replaced atomically later
    assert sorted(path.name for path in tmp_path.iterdir()) == ["old.json"]


def test_unwritable_paths_are_refused(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(AsmixError, match=f"cannot write {tmp_path / 'adir'}: it is a folder, a file name is needed"):
        check_writable_file(tmp_path / "adir")
    with pytest.raises(
        AsmixError,
        match=f"cannot write {tmp_path / 'afile' / 'sub' / 'r.json'}: {tmp_path / 'afile'} is a file, not a folder",
    ):
        check_writable_file(tmp_path / "afile" / "sub" / "r.json")
    with pytest.raises(AsmixError, match=f"cannot write to {tmp_path / 'afile'}: it is a file, a folder is needed"):
        check_writable_dir(tmp_path / "afile")
    monkeypatch.setattr(asmix.io.os, "access", lambda path, mode: False)  # root may write anywhere: simulate
    with pytest.raises(AsmixError, match=f"cannot write {tmp_path / 'adir' / 'r.json'}: .* is not writable"):
        check_writable_file(tmp_path / "adir" / "r.json")


def test_a_failed_write_is_one_error_naming_the_path_and_leaves_no_temporary(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(AsmixError, match=f"cannot write {tmp_path / 'afile' / 'r.json'}: "):
        atomic_write_text(tmp_path / "afile" / "r.json", "{}")

    def disk_full(temporary):
        temporary.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunFailed, match=f"cannot write {tmp_path / 'r.json'}: No space left on device$"):
        atomic_write(tmp_path / "r.json", disk_full)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["afile"]


def test_a_sealed_file_reads_back_and_an_edited_byte_or_an_unsealed_file_is_refused(tmp_path):
    import torch

    payload = {"fingerprint": "abc", "record": {"x": torch.arange(4.0)}, "epoch": 3}
    save_sealed(tmp_path / "part.pt", payload)
    loaded = load_sealed(tmp_path / "part.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["record"]["x"], payload["record"]["x"])
    sealed = torch.load(tmp_path / "part.pt", weights_only=True)
    edited = bytearray(sealed["payload"])
    edited[len(edited) // 2] ^= 1
    torch.save(sealed | {"payload": bytes(edited)}, tmp_path / "part.pt")
    with pytest.raises(AsmixError, match=r"^its payload does not match its checksum \(edited or damaged\)$"):
        load_sealed(tmp_path / "part.pt")
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(AsmixError, match="not a checksummed asmix file"):
        load_sealed(tmp_path / "old.pt")
    (tmp_path / "torn.pt").write_bytes(b"torn")
    with pytest.raises(AsmixError, match="unreadable"):
        load_sealed(tmp_path / "torn.pt")
