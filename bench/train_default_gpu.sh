#!/usr/bin/env bash
# Train the default model on the GPU machine in one call (at most 10 minutes): optionally two short identical
# runs (reproducibility), then the main run under a time limit, resuming from state/ when it is carried in.
# $OUT gets the logs and state/ (bf16 shards < 16 MB); export locally with
#   python -m flowcache_core.train --out <dir holding state/> --export-only
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/train}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPRO_STEPS=${REPRO_STEPS:-0}
if [ "$REPRO_STEPS" -gt 0 ]; then
python3 -m flowcache_core.train --out /tmp/repA --steps "$REPRO_STEPS" --no-resume --seed 0 > "$OUT/repro_a.log"
python3 -m flowcache_core.train --out /tmp/repB --steps "$REPRO_STEPS" --no-resume --seed 0 > "$OUT/repro_b.log"
paste <(grep '"loss"' "$OUT/repro_a.log") <(grep '"loss"' "$OUT/repro_b.log") | head -3
fi
mkdir -p /tmp/main
if [ -d "${RESUME_FROM:-}" ]; then cp -r "$RESUME_FROM" /tmp/main/state; fi
python3 -m flowcache_core.train --out /tmp/main --time-limit "${TIME_LIMIT:-480}" --batch "${BATCH:-128}" \
  --steps "${STEPS:-60000}" --seed 0 | tee "$OUT/train.log"
cp -r /tmp/main/state "$OUT/state"
