"""End-to-end evaluation scaling: ``puma embed-all`` then ``puma evaluate --embeddings`` on MBEIR-mini.

For each ``--scales`` value: MBEIR-mini at that scale (``puma.data.synth.synth_mbeir``), the tiny model
pruned to ``--k`` layers (the pipeline's default retriever shape), then the two stages as the pipeline runs
them, each a fresh process: wall time, peak RSS (its own ``VmHWM``), CPU time (``os.wait4``), and
candidates/s (global pool size / embed wall time; the query files are embedded in the same stage).
One run per scale. Run: ``python bench/eval_scaling.py [--scales 1 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# Runs `puma ...` and, at exit, writes its own VmHWM (peak RSS) to $PUMA_BENCH_HWM. The kernel's ru_maxrss
# of a child keeps the forking parent's peak (this process holds the model), so it cannot be used here.
_WRAP = ("import atexit, os, runpy, sys\n"
         "def _hwm():\n"
         "    line = next(x for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
         "    open(os.environ['PUMA_BENCH_HWM'], 'w').write(line.split()[1])\n"
         "atexit.register(_hwm)\n"
         "sys.argv = ['puma', *sys.argv[1:]]\n"
         "runpy.run_module('puma.cli', run_name='__main__')\n")


def timed(args: list[str], env: dict, hwm: Path) -> dict:
    """Run ``puma *args`` in a fresh process: wall time, its peak RSS (VmHWM) and CPU time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAP, *args], env=dict(env, PUMA_BENCH_HWM=str(hwm)), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"puma {' '.join(args)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(int(hwm.read_text()) / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def run(scales: list[float], k: int, work: Path) -> list[dict]:
    from puma.data.corpus import tokenizer_corpus
    from puma.data.synth import synth_mbeir
    from puma.embed import EmbeddingStore
    from puma.model.prune import save_pruned
    from puma.model.tiny import save_tiny

    tiny = save_tiny(work / "tiny", seed=0, corpus=tokenizer_corpus(0))
    model = save_pruned(tiny, k, work / "pruned")
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cells = []
    for scale in scales:
        root = synth_mbeir(work / f"mbeir_{scale}", seed=0, scale=scale)
        emb, ev = work / f"emb_{scale}", work / f"eval_{scale}"
        common = ["--model", str(model), "--data", str(root), "--params", str(REPO / "params.yaml")]
        embed = timed(["embed-all", *common, "--out", str(emb)], env, work / "hwm")
        evaluate = timed(["evaluate", *common, "--embeddings", str(emb), "--out", str(ev)], env, work / "hwm")
        complete = json.loads((emb / "complete.json").read_text())
        pool = sum(n for name, n in complete["stores"].items() if name.startswith("pools/"))
        queries = sum(n for name, n in complete["stores"].items() if name.startswith("queries/"))
        metrics = json.loads((ev / "metrics.json").read_text())
        dim = EmbeddingStore.open(next((emb / "pools").iterdir())).manifest["dim"]
        cell = {"scale": scale, "global_pool": pool, "queries": queries, "dim": dim, "embed": embed,
                "evaluate": evaluate, "candidates_per_s": round(pool / embed["wall_s"], 1),
                "items_per_s": round((pool + queries) / embed["wall_s"], 1),
                "search_candidates_x_queries_per_s": round(pool * queries / evaluate["wall_s"]),
                "avg_local": metrics["local"]["avg"], "avg_global": metrics["global"]["avg"],
                "load_average": os.getloadavg()}
        print(json.dumps(cell), flush=True)
        cells.append(cell)
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--k", type=int, default=4, help="layers kept by the pruned tiny model (params: model.prune_layers)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        cells = run(args.scales, args.k, Path(tmp))
    print(json.dumps({"eval_scaling": cells, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
