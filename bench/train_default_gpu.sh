#!/usr/bin/env bash
# Train the default model on the GPU machine, one call (at most 10 minutes) at a time: optionally two short
# identical runs (reproducibility), then the main run under a time limit. The shipped model is three calls
# (the three lines of `make default-model`), for example:
#   call 1: STEPS=H TIME_LIMIT=S bash bench/train_default_gpu.sh                 (fresh; cosine horizon H)
#   call 2: STEPS=H TIME_LIMIT=S FIT=1 RESUME=1 bash bench/train_default_gpu.sh  (resumes /tmp/main/state on a
#           warm machine, or RESUME_FROM=<returned state dir>; the horizon shrinks to end with the time limit)
# $OUT gets the logs and state/ (bf16 shards < 16 MB); export locally with
#   python -m flowcache_core.train --out <dir holding state/> --export-only
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then  # only for packages the GPU image lacks
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
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
if [ -d "${RESUME_FROM:-}" ]; then rm -rf /tmp/main/state; cp -r "$RESUME_FROM" /tmp/main/state; fi
if [ "${RESUME:-0}" = 1 ] && [ ! -d /tmp/main/state ]; then echo "RESUME=1 but no state to resume" >&2; exit 3; fi
if [ "${RESUME:-0}" != 1 ] && [ -z "${RESUME_FROM:-}" ]; then rm -rf /tmp/main; mkdir -p /tmp/main; fi
python3 -m flowcache_core.train --out /tmp/main --time-limit "${TIME_LIMIT:-480}" --batch "${BATCH:-128}" \
  --steps "${STEPS:-60000}" --workers "${WORKERS:-12}" --seed 0 ${FIT:+--fit-to-time} ${TRAIN_ARGS:-} | tee "$OUT/train.log"
cp -r /tmp/main/state "$OUT/state"
