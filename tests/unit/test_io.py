"""puma.io: atomic files and directories, streamed hashes."""

import hashlib
import json
import os
import stat

import pytest

from puma.io import (
    atomic_dir,
    atomic_write,
    file_digest,
    file_sha256,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_failing_write_leaves_old_content_and_no_temp(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def half(f):
        f.write(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):  # moved from test_bench (harness used its own copy)
    path = tmp_path / "bench.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(path, lambda f: f.write(123), mode="w")  # not a str: fails mid-write
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_failing_first_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_jsonl_atomic(tmp_path / "sub" / "rows.jsonl", [{"a": 1}, object()])  # fails after one row
    assert list((tmp_path / "sub").iterdir()) == []


def test_writers_content_parent_dirs_and_mode_0644(tmp_path):
    write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "t.txt", "héllo\n")
    write_json_atomic(tmp_path / "j.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    write_jsonl_atomic(tmp_path / "r.jsonl", iter([{"x": 1}, {"y": "z"}]))
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
    assert (tmp_path / "r.jsonl").read_text() == '{"x": 1}\n{"y": "z"}\n'
    for name in ("a/b.bin", "t.txt", "j.json", "r.jsonl"):
        assert _mode(tmp_path / name) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "r.jsonl", "t.txt"]  # no temporaries


def test_atomic_dir_replaces_existing_dir(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_dir(out) as tmp:
        assert tmp != out and tmp.parent == out.parent and (out / "stale.txt").is_file()  # old kept while writing
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and (out / "new.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and _mode(out) == 0o755


def test_atomic_dir_removes_temp_on_error_and_keeps_old(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    with pytest.raises(RuntimeError, match="mid-save"), atomic_dir(out) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("mid-save")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"] and [p.name for p in out.iterdir()] == ["kept.txt"]


def test_file_sha256_matches_hashlib_over_many_chunks(tmp_path):
    data = os.urandom(3 * 1000 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path, chunk=1000) == hashlib.sha256(data).hexdigest()  # 4 chunks, the last short
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "sha1", chunk=7) == hashlib.sha1(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
