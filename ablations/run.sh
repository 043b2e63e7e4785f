#!/usr/bin/env bash
# Run the named experiments of one paper table as DVC experiments over several seeds, then summarise them.
#   ablations/run.sh table5                          # each line of ablations/table5.exp x seeds 0,1,2
#   ablations/run.sh table5 --seeds 0,1,2,3,4        # more seeds
#   ablations/run.sh table5 -S stage2.max_steps=96   # extra overrides for every run (say so when reporting)
#   ablations/run.sh table5 --dry                    # print the commands only
#   ablations/run.sh table5 --vary-base              # each seed also pretrains its own base (pretrain.seed=SEED)
#   ablations/run.sh table5 --vary-base --paired t5-no-mac  # also each row minus that row on the same seed (base)
# Each (row, seed) runs as `dvc exp run --temp -n ROW-sSEED -S seed=SEED -S evaluate.instruction_seed=SEED`:
# the seed changes the data order, the initialisation of new weights (LoRA, [RET]) and the instruction
# choice (training and evaluation). Without --vary-base every seed shares the one pretrained base, so the
# interval leaves out the base's own variance, the largest on the embedded default (docs/results/
# reproducibility.md); with it the experiments are named ROW-bSEED and each re-runs `pretrain` (+4-8 min). Every experiment runs in a temporary copy of the workspace, shares the
# DVC cache and logs to this checkout's MLflow store. Needs a committed baseline: commit dvc.lock after
# `make run`. The result: reports/ablations/TABLE.md (mean and 95% CI over seeds per row), .csv and .png.
set -euo pipefail
cd "$(dirname "$0")/.."
table=${1:?usage: ablations/run.sh TABLE [--seeds 0,1,2] [--vary-base] [--paired ROW] [--dry] [-S key=value ...]   (TABLE: table3 table4 table5 table10 table12 fig5-k stage1-k2)}
shift
file=ablations/$table.exp
[[ -f $file ]] || { echo "$file: no such experiment list" >&2; exit 2; }
seeds=0,1,2
dry=
vary_base=
paired=()
extra=()
while (($#)); do
  case $1 in
    --seeds) seeds=${2:?--seeds needs a list like 0,1,2}; shift 2 ;;
    --dry) dry=1; shift ;;
    --vary-base) vary_base=1; shift ;;
    --paired) paired=(--paired "${2:?--paired needs a row name}"); shift 2 ;;
    -S) extra+=(-S "${2:?-S needs key=value}"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a seed_list <<<"$seeds"
# Temporary copies must log to this checkout's store, not to one inside the copy.
track=(-S "tracking.uri=sqlite:///$PWD/mlruns.db" -S "tracking.artifact_location=$PWD/mlartifacts")
lineno=0
while IFS= read -r line || [[ -n $line ]]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  [[ -z ${line// } ]] && continue
  read -r -a words <<<"$line"
  name=${words[0]}
  sets=("${words[@]:1}")
  for ((i = 0; i < ${#sets[@]}; i += 2)); do
    [[ ${sets[i]} == -S && -n ${sets[i+1]:-} ]] || { echo "$file:$lineno: expected '-S key=value' pairs" >&2; exit 2; }
  done
  for s in "${seed_list[@]}"; do
    if [[ -n $vary_base ]]; then
      cmd=(dvc exp run --temp -n "$name-b$s" "${track[@]}" -S "seed=$s" -S "evaluate.instruction_seed=$s"
           -S "pretrain.seed=$s" "${sets[@]}" "${extra[@]}")
    else
      cmd=(dvc exp run --temp -n "$name-s$s" "${track[@]}" -S "seed=$s" -S "evaluate.instruction_seed=$s"
           "${sets[@]}" "${extra[@]}")
    fi
    echo "+ ${cmd[*]}"
    [[ -n $dry ]] || "${cmd[@]}"
  done
done <"$file"
[[ -n $dry ]] && exit 0
mkdir -p reports/ablations
dvc exp show --csv --keep 'metrics.json' >"reports/ablations/$table.exp.csv"
if [[ -n $vary_base ]]; then
  # Its own directory: the shared-base table of the same name stays beside it.
  puma ablation-report "$table" --vary-base --csv "reports/ablations/$table.exp.csv" --out reports/ablations/vary-base \
    "${paired[@]}"
else
  puma ablation-report "$table" --csv "reports/ablations/$table.exp.csv" --out reports/ablations "${paired[@]}"
fi
