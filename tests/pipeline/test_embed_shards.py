"""puma.embed shard machinery with a deterministic stand-in encoder (the model is tested elsewhere).

Covers: exact content/order, manifest, fp16 storage, process split, refusal to mix inputs, and the
resume-after-``kill -9`` guarantee (same bytes as one clean run).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fake_encoder import FakeEncoder, manifest, records

from puma.embed import EmbeddingError, EmbeddingStore, embed_records

SCRIPT = Path(__file__).with_name("fake_encoder.py")


def _run(out, n=23, shard_size=5, **kw):
    return embed_records(records(n), out, FakeEncoder(), manifest=manifest(n), shard_size=shard_size,
                         batch_size=2, length=len, **kw)


def _expected(n):
    enc = FakeEncoder()
    ids, items = zip(*records(n))
    return list(ids), enc.forward(enc.collate(list(items)))


def test_shards_hold_the_records_in_order_as_fp16(tmp_path):
    store = _run(tmp_path / "e")
    assert store.num_shards == 5 and store.missing() == []
    emb, ids = EmbeddingStore.open(tmp_path / "e").load()
    want_ids, want = _expected(23)
    assert ids == want_ids
    np.testing.assert_allclose(emb, want, atol=1e-3)  # fp16 storage
    assert np.load(tmp_path / "e/shards/00004.npy").dtype == np.float16
    assert np.load(tmp_path / "e/shards/00004.npy").shape == (3, 8)
    m = json.loads((tmp_path / "e/manifest.json").read_text())
    assert (m["count"], m["dim"], m["dtype"], m["shard_size"], m["model"]) == (23, 8, "float16", 5, "fake")


def test_split_over_processes_gives_the_same_directory(tmp_path):
    for i in (1, 0, 2):
        _run(tmp_path / "split", shard_index=i, num_shards=3)
    _run(tmp_path / "one")
    for j in range(5):
        for ext in ("npy", "ids"):
            a = (tmp_path / f"split/shards/{j:05d}.{ext}").read_bytes()
            assert a == (tmp_path / f"one/shards/{j:05d}.{ext}").read_bytes()


def test_partial_directory_is_refused_for_search_and_resumed(tmp_path):
    _run(tmp_path / "p", shard_index=0, num_shards=2)
    store = EmbeddingStore.open(tmp_path / "p")
    assert store.missing() == [1, 3]
    with pytest.raises(EmbeddingError, match="2 of 5 shards unfinished"):
        list(store.shards())
    _run(tmp_path / "p")
    assert EmbeddingStore.open(tmp_path / "p").missing() == []


def test_different_inputs_are_not_mixed(tmp_path):
    _run(tmp_path / "e", n=10)
    with pytest.raises(EmbeddingError, match="count"):
        _run(tmp_path / "e", n=11)
    with pytest.raises(EmbeddingError, match="shard_size"):
        _run(tmp_path / "e", n=10, shard_size=4)


def test_short_source_is_an_error(tmp_path):
    with pytest.raises(EmbeddingError, match="yielded 7 records"):
        embed_records(records(7), tmp_path / "e", FakeEncoder(), manifest=manifest(9), shard_size=4,
                      batch_size=2)


def test_corrupt_shard_is_redone(tmp_path):
    _run(tmp_path / "e")
    good = (tmp_path / "e/shards/00002.npy").read_bytes()
    (tmp_path / "e/shards/00002.npy").write_bytes(good[: len(good) // 2])  # truncated by a crash
    assert EmbeddingStore.open(tmp_path / "e").missing() == [2]
    _run(tmp_path / "e")
    assert (tmp_path / "e/shards/00002.npy").read_bytes() == good


def test_a_changed_shard_fails_its_checksum_and_is_redone(tmp_path):
    """Same shape, one flipped byte (bit rot, a hand edit): check() names the file; a resume re-embeds it."""
    _run(tmp_path / "e")
    npy = tmp_path / "e/shards/00003.npy"
    good = npy.read_bytes()
    npy.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    store = EmbeddingStore.open(tmp_path / "e")
    assert store.missing() == [] and store.missing(verify=True) == [3]  # shapes alone cannot see it
    with pytest.raises(EmbeddingError, match=r"00003\.npy: 1 of 5 shards .* failing their checksum"):
        store.check({})
    _run(tmp_path / "e")
    assert npy.read_bytes() == good and EmbeddingStore.open(tmp_path / "e").check({})


def test_no_space_during_a_shard_write_leaves_no_partial_shard(tmp_path, monkeypatch):
    """ENOSPC while shard 2's .npy is written: the error names the path, no temp or half shard is left,
    and a later run with space finishes only the missing shards, with the bytes of a clean run."""
    import errno

    _run(tmp_path / "clean")
    real, calls = np.save, []

    def full_disk(f, arr, **kw):
        calls.append(1)
        if len(calls) == 3:  # the third shard written, 00002 (one process writes them in order)
            f.write(b"\x93NUMPY half a shard")
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name
        return real(f, arr, **kw)

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on device \(writing .*shards/00002\.npy\)") as err:
        _run(tmp_path / "e")
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    shards = tmp_path / "e/shards"
    assert sorted(p.name for p in shards.iterdir() if not p.name.startswith("0000")) == []  # no temp files
    assert not (shards / "00002.npy").exists() and not (shards / "00002.sha256").exists()
    assert EmbeddingStore.open(tmp_path / "e").missing(verify=True) == [2, 3, 4]
    _run(tmp_path / "e")
    for j in range(5):
        for ext in ("npy", "ids", "sha256"):
            assert (shards / f"{j:05d}.{ext}").read_bytes() == (tmp_path / f"clean/shards/{j:05d}.{ext}").read_bytes()


def test_resume_after_kill_9_gives_the_same_bytes(tmp_path):
    script = SCRIPT
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.1"], env=env)
    first = killed / "shards/00002.npy"
    deadline = time.time() + 60
    while not first.exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: shard 3 is being computed
    proc.wait()
    assert first.exists(), "the run never finished a shard"
    partial = EmbeddingStore.open(killed).missing()
    assert 0 < len(partial) < 10, partial
    subprocess.run([sys.executable, str(script), str(killed), "0"], env=env, check=True)
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, str(script), str(clean), "0"], env=env, check=True)
    # A killed writer may leave a dot-temporary behind; the finished files are what counts.
    names = sorted(p.name for p in (clean / "shards").iterdir())
    assert names == sorted(p.name for p in (killed / "shards").iterdir() if not p.name.startswith("."))
    for name in names:
        assert (killed / "shards" / name).read_bytes() == (clean / "shards" / name).read_bytes()


def test_worker_processes_give_the_same_bytes(tmp_path):
    _run(tmp_path / "w0", num_workers=0)
    _run(tmp_path / "w2", num_workers=2, shard_index=0, num_shards=1)
    for j in range(5):
        a = (tmp_path / f"w0/shards/{j:05d}.npy").read_bytes()
        assert a == (tmp_path / f"w2/shards/{j:05d}.npy").read_bytes()
