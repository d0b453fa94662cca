# flowcache — the commands README.md refers to.
PY ?= python3

.PHONY: install install-gpu test lint default-model lpips-weights bench-gpu-forward

install:            ## CPU machine: the local CPU torch first (a plain `torch` would pull a multi-GB CUDA build)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test,magi]"

install-gpu:        ## GPU image (torch present, no registry): install the package against what is there
	$(PY) -m pip install --no-deps --no-build-isolation -e .

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m compileall -q flowcache_core flowcache_cli bench tests
	$(PY) -m pyflakes flowcache_core flowcache_cli bench tests

TRAIN = $(PY) -m flowcache_core.train --out out/train --seed 0 --batch 192 --workers 13 --warmup 300 \
	--fg-weight 3 --recolour-p 0.5 --recolour-t 0.3 --context-noise 0.05
default-model:      ## on a GPU: the shipped default model's three phases (seed 0, v2 recipe), exported to out/train/default_model
	$(TRAIN) --no-resume --lr 1e-3 --steps 6217 --time-limit 450 --rope-bands 0.73,0.37,0.18,0.09 --text-embed-norm 8
	$(TRAIN) --lr 1e-3 --steps 100000 --time-limit 440 --fit-to-time
	$(TRAIN) --lr 3e-4 --steps 100000 --time-limit 215 --fit-to-time --warm-restart --warmup 100

lpips-weights:      ## LPIPS AlexNet trunk + linear heads into ~/.cache/flowcache (offline use afterwards)
	sh scripts/fetch_lpips_weights.sh

bench-gpu-forward:  ## on a GPU: MAGI-1 4.5B forward at 720x720, TFLOP/s and MFU
	$(PY) bench/gpu_forward.py --out bench/results/gpu_forward.json
