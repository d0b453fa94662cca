#!/usr/bin/env bash
# The default model's reference videos and JSON logs for a refactoring check: t2v/i2v/v2v with none/teacache/
# flowcache, two KV-budget runs (the model's kv range, and the published "attend to all" setting where the budget
# compresses) and a one-pass run. Run it at two commits (PYTHONPATH=<checkout>) and compare the SHA256 files:
# a refactoring that keeps behaviour gives byte-identical files (lossless H.264).
# usage: scripts/reference_videos.sh OUTDIR      (from the repository root)
set -euo pipefail
O=$1
mkdir -p "$O"
python3 - "$O" <<'PY'
import sys, numpy as np
from flowcache_core.video import write_image
img = np.full((64, 64, 3), 240, np.uint8); img[20:40, 10:30] = (220, 40, 40)
write_image(f"{sys.argv[1]}/first.png", img)
PY
echo '{"runtime_config": {"noise2clean_kvrange": []}}' > "$O/all_range.json"
G="python3 -m flowcache_cli.main generate --quiet --lossless --seed 3 --num-frames 16"
$G --mode t2v --prompt "a green circle moves right" --output-path "$O/pre.mp4" >/dev/null
for c in none teacache flowcache; do
  $G --mode t2v --prompt "a red square moves left" --cache $c --output-path "$O/t2v_$c.mp4" --json-log "$O/t2v_$c.jsonl" >/dev/null
  $G --mode i2v --image "$O/first.png" --prompt "a red square moves right" --cache $c --output-path "$O/i2v_$c.mp4" --json-log "$O/i2v_$c.jsonl" >/dev/null
  $G --mode v2v --prefix-video "$O/pre.mp4" --prompt "a green circle moves right" --cache $c --output-path "$O/v2v_$c.mp4" --json-log "$O/v2v_$c.jsonl" >/dev/null
done
$G --mode t2v --prompt "a blue triangle moves up" --num-frames 40 --cache flowcache --total-cache-chunk-nums 5 --output-path "$O/t2v_kv.mp4" --json-log "$O/t2v_kv.jsonl" >/dev/null
$G --mode t2v --prompt "a blue triangle moves up" --num-frames 40 --config-file "$O/all_range.json" --total-cache-chunk-nums 5 --compress-strategy frame --output-path "$O/t2v_kv_all_range.mp4" --json-log "$O/t2v_kv_all_range.jsonl" >/dev/null
$G --mode t2v --prompt "a red square moves left" --cfg-number 1 --cache flowcache --output-path "$O/t2v_cfg1.mp4" --json-log "$O/t2v_cfg1.jsonl" >/dev/null
(cd "$O" && sha256sum ./*.mp4 ./*.jsonl > SHA256)
echo "wrote $O/SHA256"
