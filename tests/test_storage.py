"""Atomic writes: all or nothing, and the resulting files are readable like any other file."""

import os

import pytest

from clbench import storage
from reports import figures


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_atomic_files_get_the_umask_mode_not_the_temp_files_private_one(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    storage.write_text(tmp_path / "a.txt", "x")
    storage.write_json(tmp_path / "b.json", {"a": 1})
    figures.save_text("x", tmp_path / "c.md")
    expected = 0o666 & ~umask
    assert expected != 0o600  # the temporary files' own mode: the test would prove nothing
    assert [_mode(tmp_path / n) for n in ("a.txt", "b.json", "c.md")] == [expected] * 3


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "a.txt"
    storage.write_text(path, "old")

    def explode(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        storage._atomic(path, explode)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
