"""Verified checkpoints and the fingerprinted work directory, on the toy loop of test_train_loop.

A corrupt or truncated latest checkpoint is skipped for the previous one; a failed write (ENOSPC, both
simulated and on a real full tmpfs) names the path and leaves nothing; a changed fingerprint starts fresh.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from puma.config import Settings
from puma.train import checkpoint as ckpt
from puma.train.checkpoint import CheckpointError, list_checkpoints, resume_point, verify_checkpoint
from puma.train.loop import run_summary, run_training
from puma.workdir import WorkDir, fingerprint
from tests.pipeline.test_train_loop import make_spec


@pytest.fixture
def settings():
    return Settings(tracking={"enabled": False})


def _same(a, b) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def _cut(tmp_path, settings, fail_at=14, **kw):
    with pytest.raises(KeyboardInterrupt):
        run_training(make_spec(fail_at=fail_at), settings, tmp_path / "out", progress=False, **kw)


def test_manifest_checksums_detect_truncation_and_corruption(tmp_path, settings):
    _cut(tmp_path, settings)
    old, new = list_checkpoints(tmp_path / "out" / "checkpoints")
    assert verify_checkpoint(new)["step"] == 12
    f = new / "optimizer.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(new)
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="sha256"):
        verify_checkpoint(new)
    with pytest.raises(CheckpointError, match="another run"):
        verify_checkpoint(old, fingerprint="abc")
    lines = []
    assert resume_point(tmp_path / "out" / "checkpoints", log=lines.append) == (old, [lines[0].split(": ", 1)[1]])
    assert "step-000012 skipped" in lines[0]


def test_truncated_latest_is_skipped_and_the_result_is_unchanged(tmp_path, settings, capsys):
    full = run_training(make_spec(), settings, tmp_path / "full", progress=False)
    _cut(tmp_path, settings)
    latest = list_checkpoints(tmp_path / "out" / "checkpoints")[-1]
    w = latest / "trainable.safetensors"
    w.write_bytes(w.read_bytes()[:10])
    res = run_training(make_spec(), settings, tmp_path / "out", progress=False)
    log = capsys.readouterr().out
    assert "step-000012 skipped" in log and "resumed from step 8/18" in log
    assert res.resumed_step == 8 and res.skipped
    _same(full.model, res.model)
    assert run_summary(res) == run_summary(full)  # the summary covers all steps, as the clean run's


def test_enospc_during_a_checkpoint_write_names_the_path_and_leaves_nothing(tmp_path, settings, monkeypatch):
    real = ckpt.write_bytes_atomic
    calls = []

    def full_disk(path, data):
        calls.append(path)
        if len(calls) == 4:  # the first checkpoint's files (rng, trainable, optimizer) then fail
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_atomic", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device") as e:
        run_training(make_spec(), settings, tmp_path / "out", progress=False)
    assert "step-000008" in str(e.value) and str(tmp_path / "out" / "checkpoints") in str(e.value)
    root = tmp_path / "out" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-000004"]  # the good one; no temp dir, no partial file
    assert not list(root.rglob("*.tmp"))
    monkeypatch.setattr(ckpt, "write_bytes_atomic", real)
    res = run_training(make_spec(), settings, tmp_path / "out", progress=False)
    _same(run_training(make_spec(), settings, tmp_path / "full", progress=False).model, res.model)


@pytest.mark.slow
@pytest.mark.faults
def test_enospc_on_a_full_tmpfs(tmp_path, settings):
    """A real ENOSPC: the work directory on a tmpfs with less room left than one checkpoint."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=False,
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        work = mnt / "work"
        run_training(make_spec(), settings, tmp_path / "probe", progress=False, work=work)
        size = sum(f.stat().st_size for f in list_checkpoints(work / "checkpoints")[-1].iterdir())
        shutil.rmtree(work)
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - size // 2))
        with pytest.raises(CheckpointError, match="No space left on device") as e:
            run_training(make_spec(), settings, tmp_path / "out", progress=False, work=work)
        assert str(work / "checkpoints") in str(e.value)
        assert not [p for p in (work / "checkpoints").iterdir() if p.name.startswith(".tmp")]
        assert not list(work.rglob("*.tmp"))
        (mnt / "filler").unlink()
        res = run_training(make_spec(), settings, tmp_path / "out", progress=False, work=work)
        _same(run_training(make_spec(), settings, tmp_path / "full", progress=False).model, res.model)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_workdir_resumes_only_under_the_same_fingerprint(tmp_path, settings, capsys):
    data = tmp_path / "data.txt"
    data.write_text("a")
    out = tmp_path / "artifacts" / "stage2"
    work = WorkDir(out, fingerprint("stage2", settings, ("seed", "stage2"), {"data": data}))
    assert work.path == tmp_path / "artifacts" / ".puma-work" / "stage2" / work.key
    _cut(tmp_path, settings, work=work.prepare(), fingerprint=work.key)
    assert not (tmp_path / "out" / "checkpoints").exists()  # checkpoints only in the work dir
    assert json.loads((work.path / "fingerprint.json").read_text())["key"] == work.key
    # Same inputs: same key, resumes.
    again = WorkDir(out, fingerprint("stage2", settings, ("seed", "stage2"), {"data": data}))
    assert again.key == work.key
    # Changed params or data: another key; the old work dir is reported (what differs) and removed.
    other = Settings(tracking={"enabled": False}, stage2={"lr": 1e-3})
    changed = WorkDir(out, fingerprint("stage2", other, ("seed", "stage2"), {"data": data}))
    assert changed.key != work.key
    changed.prepare()
    msg = capsys.readouterr().out
    assert "not resuming" in msg and "stage2.lr" in msg and not work.path.exists()
    data.write_text("b")
    third = WorkDir(out, fingerprint("stage2", other, ("seed", "stage2"), {"data": data}))
    third.prepare()
    assert "input data" in capsys.readouterr().out
    res = run_training(make_spec(), settings, tmp_path / "out", progress=False, work=third.path,
                       fingerprint=third.key)
    assert res.resumed_step is None and (tmp_path / "out" / "train_log.jsonl").is_file()
    third.finish()
    assert not (tmp_path / "artifacts" / ".puma-work").exists()


def test_checkpoint_of_another_fingerprint_is_not_loaded(tmp_path, settings):
    _cut(tmp_path, settings, work=tmp_path / "w", fingerprint="aaaa")
    res = run_training(make_spec(), settings, tmp_path / "out", progress=False, work=tmp_path / "w",
                       fingerprint="bbbb")
    assert res.resumed_step is None and len(res.skipped) == 2
    assert all("another run" in s for s in res.skipped)


def test_resume_point_of_an_empty_root(tmp_path):
    assert resume_point(Path(tmp_path) / "none") == (None, [])


def test_every_node_of_one_job_finds_the_same_work_dir(tmp_path):
    """node_rank / rendezvous differ between the nodes of one job (and its relaunches): same key;
    a change that matters (the process count per node) gives another."""
    data = tmp_path / "data.txt"
    data.write_text("a")
    node = {"nnodes": 2, "rdzv_endpoint": "127.0.0.1:29400"}
    keys = [fingerprint("embed", Settings(tracking={"enabled": False}, runtime=dict(node, node_rank=r, rdzv_id=i)),
                        ("runtime", "embed"), {"data": data})["key"] for r, i in ((0, "a"), (1, "a"), (1, "b"))]
    assert len(set(keys)) == 1
    more = Settings(tracking={"enabled": False}, runtime=dict(node, num_processes=2))
    assert fingerprint("embed", more, ("runtime", "embed"), {"data": data})["key"] != keys[0]
