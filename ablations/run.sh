#!/usr/bin/env bash
# Run the named experiments of one paper table as DVC experiments, then compare them.
#   ablations/run.sh table12            # each line of ablations/table12.exp -> dvc exp run -n NAME -S ...
#   ablations/run.sh table12 --dry      # print the commands only
# Every experiment runs in a temporary copy of the workspace (--temp), shares the DVC cache (unchanged
# stages are restored, not re-run), and logs to this checkout's MLflow store. Needs a committed
# baseline: commit dvc.lock after `make run`. Compare with `dvc exp show` / `dvc metrics diff`.
set -euo pipefail
cd "$(dirname "$0")/.."
table=${1:?usage: ablations/run.sh TABLE [--dry]   (TABLE: table3 table4 table5 table10 table12 fig5-k)}
file=ablations/$table.exp
[[ -f $file ]] || { echo "$file: no such experiment list" >&2; exit 2; }
# Temporary copies must log to this checkout's store, not to one inside the copy.
track=(-S "tracking.uri=sqlite:///$PWD/mlruns.db" -S "tracking.artifact_location=$PWD/mlartifacts")
names=()
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
  cmd=(dvc exp run --temp -n "$name" "${track[@]}" "${sets[@]}")
  echo "+ ${cmd[*]}"
  [[ ${2:-} == --dry ]] || "${cmd[@]}"
  names+=("$name")
done <"$file"
[[ ${2:-} == --dry ]] && exit 0
dvc exp show --only-changed --md --drop 'deps|outs'
