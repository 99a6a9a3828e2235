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


def test_a_path_is_described_for_what_it_is(tmp_path):
    from dpo_np.files import describe_path
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "f", tmp_path / "to-f")
    os.symlink(tmp_path / "d", tmp_path / "to-d")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    assert describe_path(tmp_path / "f") == "a file" and describe_path(tmp_path / "d") == "a directory"
    assert describe_path(tmp_path / "to-f") == f"a symbolic link to a file (-> {tmp_path / 'f'})"
    assert describe_path(tmp_path / "to-d").startswith("a symbolic link to a directory")
    assert describe_path(tmp_path / "broken").startswith("a broken symbolic link")
    assert describe_path(tmp_path / "missing") == "missing"


def test_json_is_read_with_one_value_per_key_and_errors_name_the_file(tmp_path):
    from dpo_np.files import read_json
    (tmp_path / "ok.json").write_text('{"a": {"b": 1}}')
    assert read_json(tmp_path / "ok.json") == {"a": {"b": 1}}
    (tmp_path / "twice.json").write_text('{"a": {"b": 1, "b": 2}}')
    with pytest.raises(ValueError, match=r"twice.json: not valid JSON \(the key 'b' appears twice in one object\)"):
        read_json(tmp_path / "twice.json")
    (tmp_path / "bad.json").write_text('{"a": "\t"}')
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON \(Invalid control character at line 1, column 8\)"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ValueError, match=r"dir.json is a directory, not a regular file"):
        read_json(tmp_path / "dir.json")
    with pytest.raises(FileNotFoundError, match="no such JSON file"):
        read_json(tmp_path / "none.json")


def test_an_output_overlaps_an_input_through_links_and_folders(tmp_path):
    from dpo_np.files import overlaps
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("x")
    os.symlink(tmp_path / "data" / "a.jsonl", tmp_path / "link")
    os.link(tmp_path / "data" / "a.jsonl", tmp_path / "hard")
    assert overlaps(tmp_path / "link", tmp_path / "data" / "a.jsonl")
    assert overlaps(tmp_path / "hard", tmp_path / "data" / "a.jsonl")
    assert overlaps(tmp_path / "data" / "a.jsonl", tmp_path / "data")              # inside the folder
    assert not overlaps(tmp_path / "data", tmp_path / "data" / "a.jsonl")
    assert not overlaps(tmp_path / "data2", tmp_path / "data")                      # a name that only starts alike
