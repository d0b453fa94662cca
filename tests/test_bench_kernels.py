"""The kernel benchmarks' bookkeeping on the CPU (tiny shapes): bench/attn_backends.py names as winner the backend
with the least time, reports a kernel that refuses a shape instead of stopping, and its backends compute the same
attention; bench/norm_rate.py measures every op against the copy yardstick."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import attn_backends  # noqa: E402
import norm_rate  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return attn_backends.measure({"gqa": (48, 96, 4, 2, 16), "mha": (32, 64, 2, 2, 16)}, device="cpu", iters=2)


def test_winner_is_the_fastest_backend_that_ran(rows):
    for row in rows.values():
        timed = {b: r["ms"] for b, r in row["by_backend"].items() if "ms" in r}
        assert len(timed) >= 2  # ours and PyTorch's flash kernel run on the CPU
        assert row["winner"] == min(timed, key=timed.get)
        assert row["flops"] == 4 * row["shape"]["Lq"] * row["shape"]["Lk"] * row["shape"]["Hq"] * row["shape"]["hd"]


def test_a_refusing_kernel_is_reported_and_the_others_agree(rows):
    for row in rows.values():
        refused = [b for b, r in row["by_backend"].items() if "error" in r]
        assert refused == ["sdpa efficient kernel"]  # no memory-efficient kernel on the CPU
        for b, r in row["by_backend"].items():
            if "ms" in r:
                assert r["rel_diff_vs_first"] < 1e-5, b  # float32: the same attention


def test_norm_rate_measures_every_op_against_the_copy():
    out = norm_rate.measure("cpu", tokens=64, iters=2)
    assert set(out) >= {"copy, width 3072", "LayerNorm, width 3072", "gate multiply (per-chunk broadcast)"}
    assert out["copy, width 3072"]["vs_copy"] == 1.0
    assert all(r["ms"] > 0 and r["tb_per_s"] > 0 for r in out.values())
