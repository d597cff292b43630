#!/usr/bin/env bash
# One lent GPU, one command: every measurement of bench/gpu.py into runs/gpu/gpu_results.json (and $OUT when the
# device tool runs it). Shard parts carried so far (bench/gpu_transfer.py) are moved into data/oasis_shards first.
#   bash bench/gpu.sh                                   # all parts (needs the whole of data/oasis_shards)
#   bash bench/gpu.sh --parts kernel,train_speed        # some parts; see docs/gpu.md for the call plan
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 bench/gpu_transfer.py unpack
status=0
python3 bench/gpu.py "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -f runs/gpu/gpu_results.json ]; then cp runs/gpu/gpu_results.json "$OUT/"; fi
exit $status
