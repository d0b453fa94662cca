# flowcache — the commands README.md refers to.
PY ?= python3

.PHONY: install install-gpu test test-slow test-all lint default-model lpips-weights bench-gpu-forward bench-attn-backends

install:            ## CPU machine: the local CPU torch first (a plain `torch` would pull a multi-GB CUDA build)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,magi,wan]"

install-gpu:        ## GPU image (torch present, no registry): install the package against what is there
	$(PY) -m pip install --no-deps --no-build-isolation -e .

test:               ## the fast set (everything not marked slow; what plain `pytest` runs)
	$(PY) -m pytest -q -m "not slow"

test-slow:          ## the slow set: end-to-end runs, training, the shipped model, 40-chunk KV runs, torchrun
	$(PY) -m pytest -q -m slow

test-all:           ## both sets in one run
	$(PY) -m pytest -q -m "slow or not slow"

lint:
	$(PY) -m compileall -q flowcache_core flowcache_cli bench tests
	$(PY) -m pyflakes flowcache_core flowcache_cli bench tests

# options every phase shares (batch, loader, the world's recolouring and context noise)
WORLD = --batch 192 --workers 13 --recolour-p 0.5 --recolour-t 0.3 --context-noise 0.05
TRAIN = $(PY) -m flowcache_core.training.train --out out/train --seed 0 $(WORLD)
V2 = --warmup 300 --fg-weight 3
V3 = --warmup 200 --fg-weight 1 --lr 5e-4 --precision bf16-master --steps 100000
V4 = $(PY) -m flowcache_core.training.train --out out/train_v4 --no-resume --seed 1 $(WORLD) --lr 3e-4 --warmup 100 \
	--fg-weight 1 --motion-weight 10 --precision bf16-master --steps 3000 --time-limit 450
default-model:      ## on a GPU: the shipped default model's six phases (v2's three, v3's two, v4's motion fine-tune), exported to out/train_v4/default_model
	$(TRAIN) $(V2) --no-resume --lr 1e-3 --steps 6217 --time-limit 450 --rope-bands 0.73,0.37,0.18,0.09 --text-embed-norm 8
	$(TRAIN) $(V2) --lr 1e-3 --steps 100000 --time-limit 440 --fit-to-time
	$(TRAIN) $(V2) --lr 3e-4 --steps 100000 --time-limit 215 --fit-to-time --warm-restart --warmup 100
	$(TRAIN) $(V3) --time-limit 420 --fit-to-time --schedule-time 1380 --warm-restart
	$(TRAIN) $(V3) --time-limit 500 --continue-schedule
	$(V4) --init-from out/train/default_model
# v3's third call ran too (--time-limit 465 --fit-to-time --continue-schedule, to step 14,262) and was not shipped.
# v4: a fresh optimizer on v3's exported (EMA) weights, seed 1, the motion-weighted loss; the shipped run stopped on
# its time limit at step 2,934 of the 3,000-step cosine (lr by then 4e-7).

lpips-weights:      ## LPIPS AlexNet trunk + linear heads into ~/.cache/flowcache (offline use afterwards)
	sh scripts/fetch_lpips_weights.sh

bench-gpu-forward:  ## on a GPU: MAGI-1 4.5B forward at 720x720, TFLOP/s and MFU (flash-attn too where it imports)
	$(PY) bench/gpu_forward.py --profile --also-flash --out bench/results/gpu_forward.json

bench-attn-backends:  ## on a GPU: which attention kernel wins at each of the families' shapes
	$(PY) bench/attn_backends.py --out bench/results/attn_backends.json
