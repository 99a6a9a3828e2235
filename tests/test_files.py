"""Files are written whole or not at all."""

import os
import stat

import pytest

from dpo_np.files import atomic_write, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["log.jsonl"]


def test_a_finished_write_replaces_the_file_and_reads_like_any_other(tmp_path):
    path = tmp_path / "sub" / "tok.json"           # the folder is created
    write_json_atomic(path, {"chars": "abc"})
    assert path.read_text(encoding="utf-8").replace(" ", "").replace("\n", "") == '{"chars":"abc"}'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_only_write_modes_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass
