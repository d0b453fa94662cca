#!/usr/bin/env bash
# Train the default model on the GPU machine in one call: two short identical runs (reproducibility),
# then the main run under a time limit. Outputs land in $OUT (logs + the exported default_model bundle).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out/train}; mkdir -p "$OUT/default_model"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
REPRO_STEPS=${REPRO_STEPS:-200}
if [ "$REPRO_STEPS" -gt 0 ]; then
python3 -m flowcache_core.train --out /tmp/repA --steps "$REPRO_STEPS" --no-resume --seed 0 > "$OUT/repro_a.log"
python3 -m flowcache_core.train --out /tmp/repB --steps "$REPRO_STEPS" --no-resume --seed 0 > "$OUT/repro_b.log"
paste <(grep '"loss"' "$OUT/repro_a.log") <(grep '"loss"' "$OUT/repro_b.log") | head -3
fi
python3 -m flowcache_core.train --out /tmp/main --time-limit "${TIME_LIMIT:-400}" --batch "${BATCH:-32}" --seed 0 --no-resume | tee "$OUT/train.log"
cp /tmp/main/default_model/* "$OUT/default_model/"
