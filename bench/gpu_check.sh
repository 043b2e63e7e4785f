#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) in one command, for the bare device machine: its own python3 (CUDA
# torch, transformers, peft) and no project venv. Hard limit: 470 s, so the whole stays under 8 minutes;
# the report is rewritten after every measurement, so a killed run still leaves its files.
#   bash bench/gpu_check.sh --out $OUT      # on the device;  --dry-run: tiny shapes on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONHASHSEED=0
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec timeout -k 10 "${GPU_CHECK_TIMEOUT_S:-470}" "${GPU_CHECK_PYTHON:-python3}" bench/gpu_check.py "$@"
