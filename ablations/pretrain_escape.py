"""When do the pretrained base's [RET] states leave their early collapse? Over several pretraining seeds.

The embedded default's base is only as good as how long before its last step the states left the collapse
(puma.train.pretrain.escape_step), and that step varies by seed and machine: one seed never leaves it in
1000 steps (docs/results/reproducibility.md). A recipe change meant to make the miniature robust has to move
this distribution, not one draw of it. Each seed runs `puma model pretrain` (through flows.launch, so on
runtime.num_processes processes as the pipeline does) with PUMA_ overrides, into a temporary directory:

    python ablations/pretrain_escape.py --seeds 0,1,2,3 --steps 500
    python ablations/pretrain_escape.py --seeds 0,1,2,3 --steps 500 -S pretrain.answer_weight=16

Prints one line per seed (escape step, the text / image answer loss per 100 steps) and a JSON summary.
Needs artifacts/tiny and data/mbeir (`dvc repro mbeir tiny`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def override_env(sets: list[str]) -> dict[str, str]:
    """``-S section.key=value`` overrides as the PUMA_SECTION__KEY environment variables puma.config reads."""
    env = {}
    for kv in sets:
        key, sep, value = kv.partition("=")
        if not sep or not key or "." not in key:
            raise ValueError(f"-S expects section.key=value, got {kv!r}")
        env["PUMA_" + key.upper().replace(".", "__")] = value
    return env


def block_means(rows: list[dict], key: str, size: int = 100) -> list[float | None]:
    out = []
    for a in range(0, len(rows), size):
        vals = [r[key] for r in rows[a:a + size] if key in r]
        out.append(round(statistics.fmean(vals), 3) if vals else None)
    return out


def main(argv: list[str] | None = None) -> dict:
    from puma.train.pretrain import ESCAPE_THRESHOLD, escape_step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--threshold", type=float, default=ESCAPE_THRESHOLD, help="text-answer loss that counts as escaped")
    ap.add_argument("--base", default="artifacts/tiny")
    ap.add_argument("--data", default="data/mbeir")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="section.key=value (repeatable)")
    args = ap.parse_args(argv)
    env = {**os.environ, **override_env(args.sets), "PUMA_PRETRAIN__STEPS": str(args.steps)}
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {"steps": args.steps, "threshold": args.threshold, "overrides": args.sets, "seeds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            out = Path(tmp) / f"s{seed}"
            cmd = [sys.executable, "-m", "flows.launch", "--params", "params.yaml", "--", "puma", "model", "pretrain",
                   "--base", args.base, "--data", args.data, "--out", str(out), "--params", "params.yaml"]
            proc = subprocess.run(cmd, check=False, cwd=REPO, env={**env, "PUMA_PRETRAIN__SEED": str(seed)},
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"seed {seed}: pretraining failed\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
            rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
            rec = {"escape_step": escape_step(rows, args.threshold),
                   "text": block_means(rows, "loss_answer_text"), "image": block_means(rows, "loss_answer_image")}
            result["seeds"][seed] = rec
            print(f"seed {seed}: escape {rec['escape_step']}  text {rec['text']}  image {rec['image']}", flush=True)
    steps = [r["escape_step"] for r in result["seeds"].values()]
    result["escaped"] = f"{sum(s is not None for s in steps)}/{len(steps)}"
    result["median_escape"] = statistics.median(s if s is not None else args.steps + 1 for s in steps)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
