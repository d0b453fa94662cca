"""bench/paper_setting.py's CPU smoke mode: the recorded FlowCache pattern replays through `generate(policy=...)`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERN = ROOT / "bench" / "results" / "paper_setting_pattern.json"


def test_the_committed_pattern_is_the_default_models_recommended_64_step_run():
    p = json.loads(PATTERN.read_text())
    assert (p["chunks"], p["num_steps"], p["window_size"]) == (10, 64, 4)
    assert p["setting"] == {"rel_l1_thresh": 0.02, "warmup_steps": 8, "reuse": "extrapolate"}
    compute = p["compute"]
    assert len(compute) == 10 * 64 and sum(compute.values()) == p["chunk_forwards_computed"]
    assert all(compute[f"{c}:0"] and compute[f"{c}:63"] for c in range(10))  # first and last steps computed
    assert all(compute[f"{c}:{s}"] for c in range(10) for s in range(8))  # warmup 8


@pytest.mark.slow  # a tiny model, two 208-forward runs: about 10 s
def test_replay_takes_exactly_the_recorded_decisions(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "paper.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "paper_setting.py"), "run", "--tiny", "--pattern", str(PATTERN),
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True)
    r = json.loads(out.read_text())
    p = json.loads(PATTERN.read_text())
    u, c = r["runs"]["uncached"], r["runs"]["replay"]
    assert u["forwards"] == c["forwards"] == p["forwards"] == 208
    assert u["chunk_forwards_computed"] == 640 and u["chunk_forwards_reused"] == 0
    assert c["chunk_forwards_computed"] == p["chunk_forwards_computed"]
    assert c["chunk_forwards_reused"] == p["chunk_forwards_reused"]
    assert c["tokens_forwarded"] < u["tokens_forwarded"]
    assert c["ideal_speedup"] == pytest.approx(p["ideal_speedup"])
