"""The retrieval CLI on MBEIR-mini with the tiny model: embed (split + resume), search, evaluate, report.

The real-model ``kill -9`` test runs ``puma embed`` as a subprocess and is marked slow.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from puma.cli import app
from puma.embed import EmbeddingStore
from puma.index import search_numpy
from puma.model.retriever import PumaRetriever

runner = CliRunner()
POOL = "cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl"


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_embed_split_over_two_processes_then_search(tiny_dir, mbeir_mini, tmp_path):
    out = tmp_path / "emb"
    common = ["embed", "--model", str(tiny_dir), "--pool", str(mbeir_mini / POOL), "--root", str(mbeir_mini),
              "--out", str(out), "--shard-size", "6", "--batch-size", "4", "--num-shards", "2"]
    first = _ok(common + ["--shard-index", "1"])
    assert "2/4 shards done" in first
    assert "4/4 shards done" in _ok(common + ["--shard-index", "0"])
    store = EmbeddingStore.open(out)
    emb, ids = store.load()
    n_pool = sum(1 for _ in (mbeir_mini / POOL).open())
    assert emb.shape == (n_pool, 64) and ids[0] == json.loads((mbeir_mini / POOL).open().readline())["did"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    assert store.manifest["model"] == str(tiny_dir) and len(store.manifest["source_sha256"]) == 64
    # `puma search` = encode_query + brute force over the stored (fp16) embeddings.
    line = next(json.loads(x) for x in (mbeir_mini / POOL).open() if json.loads(x)["txt"] is None)
    image = str(mbeir_mini / line["img_path"])
    shown = _ok(["search", "some text", "--model", str(tiny_dir), "--index", str(out), "--image", image,
                 "--instruction", "Find it.", "-k", "3"])
    # stderr's progress bar may share a line with the first result: find "rank  score  id  shown".
    hits = [m.groups() for m in re.finditer(r"(\d+)  (-?\d\.\d{4})  (\S+)  (.*)$", shown, re.MULTILINE)]
    q = PumaRetriever.from_pretrained(tiny_dir).encode_query([{"text": "some text", "image": image,
                                                              "instruction": "Find it."}])
    scores, rows = search_numpy(q, emb, 3)
    assert [h[0] for h in hits] == ["1", "2", "3"]
    assert [h[2] for h in hits] == [ids[r] for r in rows[0]]
    np.testing.assert_allclose([float(h[1]) for h in hits], scores[0], atol=1e-4)
    assert all(h[3].endswith(".jpg") for h in hits)  # cirr candidates are images: their paths are shown


def test_embed_refuses_other_model_in_same_dir(tiny_dir, mbeir_mini, tmp_path):
    from puma.model.prune import save_pruned

    pruned = save_pruned(tiny_dir, 2, tmp_path / "pruned")
    base = ["embed", "--pool", str(mbeir_mini / POOL), "--root", str(mbeir_mini), "--out", str(tmp_path / "e")]
    _ok(base + ["--model", str(tiny_dir)])
    res = runner.invoke(app, base + ["--model", str(pruned)])
    assert res.exit_code == 1 and "model_fingerprint" in res.output


def test_bad_pool_line_names_file_and_line(tiny_dir, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"did": "9:1", "txt": "a", "img_path": null, "modality": "text", "src_content": null}\n{oops\n')
    res = runner.invoke(app, ["embed", "--model", str(tiny_dir), "--pool", str(pool), "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and f"{pool}:2" in res.output
    assert not list((tmp_path / "e" / "shards").glob("*.npy"))  # nothing half-written


def test_evaluate_and_report_commands(tiny_dir, mbeir_mini, tmp_path):
    out = tmp_path / "ev"
    _ok(["evaluate", "--model", str(tiny_dir), "--data", str(mbeir_mini), "--out", str(out),
         "--column", "cirr_task7", "--column", "nights_task4"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["local"]) == {"cirr_task7", "nights_task4", "avg", "mixed", "single"}
    _ok(["report", str(out), "--out", str(tmp_path / "rep"), "--data", str(mbeir_mini), "--examples", "2"])
    assert "CIRR (i,t)→i" in (tmp_path / "rep" / "report.md").read_text()
    res = runner.invoke(app, ["evaluate", "--model", str(tiny_dir), "--data", str(mbeir_mini), "--out",
                              str(out), "--column", "nope_task1"])
    assert res.exit_code == 2 and "unknown M-BEIR column" in res.output


@pytest.mark.slow
def test_puma_embed_resume_after_kill_9(tiny_dir, tmp_path):
    rows = [{"did": f"9:{i}", "txt": f"caption {i} " + "word " * (i % 13), "img_path": None, "modality": "text",
             "src_content": None} for i in range(3000)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def cmd(out):
        return [sys.executable, "-m", "puma.cli", "embed", "--model", str(tiny_dir), "--pool", str(pool),
                "--out", str(out), "--shard-size", "100", "--batch-size", "16"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "shards" / "00002.npy").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    missing = EmbeddingStore.open(killed).missing()
    assert 0 < len(missing) < 28, f"kill did not land mid-run: {len(missing)} of 30 shards missing"
    subprocess.run(cmd(killed), env=env, check=True, capture_output=True)
    clean = tmp_path / "clean"
    subprocess.run(cmd(clean), env=env, check=True, capture_output=True)
    for j in range(30):
        for ext in ("npy", "ids"):
            name = f"shards/{j:05d}.{ext}"
            assert (killed / name).read_bytes() == (clean / name).read_bytes(), name
