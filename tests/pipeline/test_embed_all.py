"""`puma embed-all` (the embed stage) then `puma evaluate --embeddings` (search only), and the same embed
split over processes through `python -m flows.launch`: 2 gloo processes, 2 nodes x 1 process over loopback,
and a kill -9 part-way then a rerun (those three start real processes: marked slow)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from puma.cli import app
from puma.embed import EmbeddingStore

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["--column", "cirr_task7", "--column", "webqa_task1"]
runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), PUMA_EMBED__SHARD_SIZE="4", PUMA_EMBED__BATCH_SIZE="4",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def _embed_cmd(tiny_dir, mbeir_mini, out):
    return ["puma", "embed-all", "--model", str(tiny_dir), "--data", str(mbeir_mini), "--out", str(out),
            "--params", str(REPO / "params.yaml"), *COLUMNS]


def _launch(tiny_dir, mbeir_mini, out, **env):
    return [sys.executable, "-m", "flows.launch", "--params", str(REPO / "params.yaml"), "--",
            *_embed_cmd(tiny_dir, mbeir_mini, out)], _env(**env)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    """Every finished shard file (temporaries of killed writes, ``.*.tmp``, are not shards)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("shards/*"))
            if p.suffix in (".npy", ".ids") and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def one_process(tiny_dir, mbeir_mini, tmp_path_factory):
    """The reference: embed-all in this process (shard size 4), then evaluate from the stores."""
    out = tmp_path_factory.mktemp("emb") / "emb"
    old = {k: os.environ.get(k) for k in ("PUMA_EMBED__SHARD_SIZE", "PUMA_EMBED__BATCH_SIZE")}
    os.environ.update(PUMA_EMBED__SHARD_SIZE="4", PUMA_EMBED__BATCH_SIZE="4")
    try:
        said = _ok(["embed-all", "--model", str(tiny_dir), "--data", str(mbeir_mini), "--out", str(out),
                    "--params", str(REPO / "params.yaml"), "--stats", str(out.parent / "embed_metrics.json"),
                    *COLUMNS])
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert "2 pool(s)" in said and "2 query file(s) on 1 process(es)" in said
    return out


def test_embed_all_writes_its_cost_outside_the_store(one_process):
    """--stats: seconds, items, samples/s and peak memory of this run, beside (not inside) the store."""
    from puma.tracking.cost import stage_cost

    stats = json.loads((one_process.parent / "embed_metrics.json").read_text())
    complete = json.loads((one_process / "complete.json").read_text())
    assert stats["items"] == sum(complete["stores"].values()) and stats["resumed_shards"] == 0
    assert stats["seconds"] > 0 and stats["samples_per_s"] == pytest.approx(stats["items"] / stats["seconds"], rel=1e-2)
    assert stats["peak_rss_bytes"] > 50 * 2**20  # a process that loaded torch and a model
    assert not list(one_process.rglob("embed_metrics.json"))
    cost = stage_cost("embed", [], stats)  # what the register stage puts on the pipeline run
    assert set(cost) == {"embed.seconds", "embed.samples_per_s", "embed.peak_rss_bytes"}


def test_evaluate_from_stores_equals_evaluate_that_embeds(one_process, tiny_dir, mbeir_mini, tmp_path):
    complete = json.loads((one_process / "complete.json").read_text())
    assert set(complete["stores"]) == {"pools/cirr_task7", "pools/webqa_task1", "queries/cirr_task7",
                                       "queries/webqa_task1"}
    base = ["evaluate", "--model", str(tiny_dir), "--data", str(mbeir_mini), "--params", str(REPO / "params.yaml"),
            *COLUMNS]
    os.environ.update(PUMA_EMBED__SHARD_SIZE="4", PUMA_EMBED__BATCH_SIZE="4")
    try:
        _ok(base + ["--out", str(tmp_path / "read"), "--embeddings", str(one_process)])
        _ok(base + ["--out", str(tmp_path / "embed")])  # embeds itself, the old single-step way
    finally:
        os.environ.pop("PUMA_EMBED__SHARD_SIZE"), os.environ.pop("PUMA_EMBED__BATCH_SIZE")
    for name in ("metrics.json", "topk.jsonl", "chance.json"):
        assert (tmp_path / "read" / name).read_bytes() == (tmp_path / "embed" / name).read_bytes(), name
    # Another instruction seed is another query store: evaluate refuses the old one, naming it.
    os.environ["PUMA_EVALUATE__INSTRUCTION_SEED"] = "1"
    try:
        res = runner.invoke(app, base + ["--out", str(tmp_path / "seed1"), "--embeddings", str(one_process)])
    finally:
        os.environ.pop("PUMA_EVALUATE__INSTRUCTION_SEED")
    assert res.exit_code == 1 and "queries/cirr_task7/manifest.json" in res.output and "extra" in res.output


@pytest.mark.slow
def test_two_gloo_processes_write_the_same_bytes(one_process, tiny_dir, mbeir_mini, tmp_path):
    out = tmp_path / "emb2"
    cmd, env = _launch(tiny_dir, mbeir_mini, out, PUMA_RUNTIME__NUM_PROCESSES="2")
    res = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torchrun --standalone --nproc_per_node=2" in res.stderr
    assert json.loads((out / "complete.json").read_text())["processes"] == 2
    assert _shard_bytes(out) == _shard_bytes(one_process)


@pytest.mark.slow
def test_two_nodes_over_loopback(one_process, tiny_dir, mbeir_mini, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "emb_nodes"
    procs = []
    for node in (0, 1):
        cmd, env = _launch(tiny_dir, mbeir_mini, out, PUMA_RUNTIME__NNODES="2", PUMA_RUNTIME__NODE_RANK=str(node),
                           PUMA_RUNTIME__RDZV_ENDPOINT=f"127.0.0.1:{port}", PUMA_RUNTIME__RDZV_ID="loopback")
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert all("--nnodes=2" in err and "--rdzv_backend=c10d" in err for _, err in outs)
    assert json.loads((out / "complete.json").read_text())["processes"] == 2
    assert _shard_bytes(out) == _shard_bytes(one_process)


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_only_the_missing_shards(one_process, tiny_dir, mbeir_mini, tmp_path):
    out = tmp_path / "emb_kill"
    cmd, env = _launch(tiny_dir, mbeir_mini, out, PUMA_RUNTIME__NUM_PROCESSES="2")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # The stores are filled in the stage's work directory and published to OUT when complete.
    work = out.parent / ".puma-work" / out.name
    deadline = time.monotonic() + 600
    while len(list(work.rglob("shards/*.sha256"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    # torchrun and both workers at once. torchrun may start its workers in sessions of their own, so the
    # process group alone can miss them (a surviving rank would finish and publish behind the test's back).
    import psutil

    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    psutil.wait_procs([p for p in map(_process, tree) if p is not None], timeout=30)
    assert not out.exists(), "a killed run published a partial OUT"
    (key,) = work.iterdir()
    # Finished = its .sha256 record (written last) exists; a .npy without one was cut off and is redone.
    done = {p.relative_to(key): p.stat().st_mtime_ns for p in key.rglob("shards/*.npy")
            if p.with_suffix(".sha256").is_file()}
    total = len(_shard_bytes(one_process)) // 2
    assert 3 <= len(done) < total, "the kill came too late to leave missing shards"
    res = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    redone = [str(p) for p, t in done.items() if (out / p).stat().st_mtime_ns != t]
    assert not redone, f"finished shards were embedded again: {redone} of {len(done)}\n{res.stdout[-2000:]}"
    assert not work.exists(), "the work directory is removed once OUT is complete"
    assert _shard_bytes(out) == _shard_bytes(one_process)
    for store in ("pools/cirr_task7", "queries/webqa_task1"):
        assert EmbeddingStore.open(out / store).missing() == []
