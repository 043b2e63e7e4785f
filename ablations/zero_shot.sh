#!/usr/bin/env bash
# The zero-shot table of issue 14 over pretraining seeds: for each seed, pretrain the embedded tiny base with
# pretrain.seed=SEED (the current params.yaml plus any PUMA_ overrides in the environment), prune it to k = 4
# (model.prune_layers) and k = 2, and evaluate all three untrained with `puma evaluate --model`; then one report
# per seed whose comparison section gives full depth and k = 2 minus k = 4 *on the same queries*, with the paired
# bootstrap interval (puma.report.paired_comparison), and the base's probes (ablations/vision_probe.py --captions
# --depth: what the [RET] state reads from pictures, whether a caption and its picture meet, what each decoder
# layer writes into [RET]).
#   ablations/zero_shot.sh                       # seeds 0,1,2 -> reports/zero_shot/bSEED/
#   ablations/zero_shot.sh --seeds 0 --out /tmp/zs
#   PUMA_PRETRAIN__WEIGHT_DECAY=0.01 ablations/zero_shot.sh --out /tmp/zs_wd001   # another recipe
# Run with the venv active (source .venv/bin/activate). ~7 minutes a seed on 2 cores (pretraining ~5, each evaluation ~40 s). Needs data/mbeir and artifacts/tiny
# (`dvc repro tiny mbeir`). Summary: OUT/summary.md (one line per seed and depth, then the paired rows).
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=0,1,2
out=reports/zero_shot
while (($#)); do
  case $1 in
    --seeds) seeds=${2:?--seeds needs a list like 0,1,2}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -d data/mbeir && -f artifacts/tiny/config.json ]] || { echo "needs data/mbeir and artifacts/tiny: dvc repro tiny mbeir" >&2; exit 2; }
k=$(python -c "from puma.config import load_settings; print(load_settings('params.yaml').model.prune_layers)")
IFS=, read -r -a seed_list <<<"$seeds"
mkdir -p "$out"
summary=$out/summary.md
{
  echo "# Zero-shot on MBEIR-mini: full depth vs its pruned prefixes (untrained), per pretraining seed"
  echo
  echo "Recall avg (%), local / global, 95% bootstrap interval over queries; pretrain overrides: $(env | grep '^PUMA_' | sort | tr '\n' ' ')"
  echo
} >"$summary"
for s in "${seed_list[@]}"; do
  d=$out/b$s
  rm -rf "$d"
  mkdir -p "$d"
  echo "+ seed $s: pretrain -> $d/base"
  PUMA_PRETRAIN__SEED=$s python -m flows.launch --params params.yaml -- puma model pretrain --base artifacts/tiny \
    --out "$d/base" --params params.yaml >"$d/pretrain.log" 2>&1
  for depth in full "$k" 2; do
    m=$d/base
    if [[ $depth != full ]]; then
      puma model prune --base "$d/base" --layers "$depth" --out "$d/k$depth" --params params.yaml >/dev/null 2>&1
      m=$d/k$depth
    fi
    echo "+ seed $s: evaluate $depth"
    puma evaluate --model "$m" --out "$d/eval_$depth" --params params.yaml >"$d/eval_$depth.log" 2>&1
  done
  puma report "$d/eval_$k" "$d/eval_full" "$d/eval_2" --name "k$k" --name full --name k2 --out "$d/report" \
    --examples 0 >/dev/null
  python ablations/vision_probe.py "$d/base" "$d/base@$k" --captions --depth --limit 600 >"$d/probe.txt" 2>/dev/null
  python - "$d" "$s" "$k" >>"$summary" <<'PY'
import json, sys
from pathlib import Path
d, seed, k = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for depth in ("full", k, "2"):
    m, ci = (json.loads((d / f"eval_{depth}" / f).read_text()) for f in ("metrics.json", "ci_metrics.json"))
    cells = [f"{m[p]['avg']:.2f} [{ci[p]['avg']['low']:.2f}, {ci[p]['avg']['high']:.2f}]" for p in ("local", "global")]
    print(f"- seed {seed}, {'full depth' if depth == 'full' else 'k = ' + depth}: " + " / ".join(cells))
runs = json.loads((d / "report" / "comparison.json").read_text())["runs"]
for name, pools in runs.items():
    print(f"  - {name} minus k = {k}, same queries: " + " / ".join(
        f"{pools[p]['avg']['diff']:+.2f} [{pools[p]['avg']['low']:+.2f}, {pools[p]['avg']['high']:+.2f}]"
        for p in ("local", "global")))
PY
done
chance=$out/b${seed_list[0]}/eval_full/chance.json
python -c "import json; c = json.load(open('$chance')); print(f\"\nchance: {c['local']['avg']:.2f} / {c['global']['avg']:.2f}\")" >>"$summary"
cat "$summary"
