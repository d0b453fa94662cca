"""Multi-GPU sampling with torchrun: same set as one GPU, wall-time ratio, and a rank killed mid-run.

One call on a machine with N GPUs (issue 8):

    python3 bench/gpu_multi.py --dimension human_action --gpus 2 --json $OUT/gpu_multi.json

1. one GPU:  `sample-benchmark vbench --dimension D --samples-per-prompt 1 --device cuda` (CUDA_VISIBLE_DEVICES=0)
2. N GPUs:   the same command under `torchrun --nproc-per-node N` into another folder
3. compare:  file names, seeds (manifests), mp4 bytes, decoded frames; wall ratio 1-GPU / N-GPU
4. kill:     a torchrun run into a third folder (first --kill-items items); once rank 1 has written a few
             videos it gets SIGKILL; then every mp4 there must decode whole (no corrupt file), and a rerun
             must finish the set, equal to the one-GPU videos.
Each run is timed from process start to exit (imports, model load, NCCL set-up and the manifest merge included),
so the ratio is what a user sees. A table is printed last and everything goes to --json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flowcache_core.video import read_video  # noqa: E402


DEVICE = "cuda"


def cli(dimension: str, out: Path, limit: int | None) -> list[str]:
    args = ["-m", "flowcache_cli.main", "sample-benchmark", "vbench", "--dimension", dimension,
            "--samples-per-prompt", "1", "--device", DEVICE, "--output-dir", str(out), "--quiet"]
    return args + (["--limit", str(limit)] if limit else [])


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]


def timed(cmd: list[str], env: dict) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    return time.perf_counter() - t0, p.returncode, p.stdout[-3000:]


def videos(folder: Path) -> dict[str, str]:
    """name -> sha256 of every finished video (not the hidden temp files)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.mp4")) if not p.name.startswith(".")}


def manifest(folder: Path) -> tuple[dict, dict[str, dict]]:
    """manifest.json as read, and its video records by file name."""
    doc = json.loads((folder / "manifest.json").read_text())
    return doc, {v["file"]: v for v in doc["videos"]}


def compare(a: Path, b: Path, names: list[str] | None = None) -> dict:
    va, vb = videos(a), videos(b)
    names = sorted(set(va) & set(vb)) if names is None else names
    _, ma = manifest(a)
    _, mb = manifest(b)
    same_bytes = sum(va.get(n) == vb.get(n) for n in names)
    max_diff = 0
    for n in names:
        if va.get(n) != vb.get(n):
            fa, _ = read_video(a / n)
            fb, _ = read_video(b / n)
            max_diff = max(max_diff, int(abs(fa.astype(int) - fb.astype(int)).max()) if fa.shape == fb.shape else 255)
    seeds_equal = all(ma[n]["seed"] == mb[n]["seed"] and ma[n]["prompt"] == mb[n]["prompt"] for n in names)
    return {"videos": len(names), "bytes_identical": same_bytes, "max_abs_pixel_diff": max_diff,
            "seeds_and_prompts_equal": seeds_equal}


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a descendant of `parent`)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().split()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and int(stat[3]) == parent:  # torchrun starts its workers itself
            return int(d.name)
    return None


def kill_test(dimension: str, n: int, folder: Path, env: dict, kill_items: int, after: int) -> dict:
    cmd = torchrun(n) + cli(dimension, folder, kill_items)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    part = folder / "manifest.rank1.jsonl"
    killed, written_then = None, 0
    while p.poll() is None and time.perf_counter() - t0 < 300:
        written_then = len(part.read_text().splitlines()) if part.exists() else 0
        if written_then >= after:
            pid = rank_pid(p.pid, 1)
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.05)
    out, _ = p.communicate(timeout=600)
    present = videos(folder)
    bad = []
    for name in present:
        try:
            frames, _ = read_video(folder / name)
            if len(frames) == 0:
                bad.append(name)
        except Exception as e:  # a truncated mp4 would land here
            bad.append(f"{name}: {e}")
    temps = sorted(q.name for q in folder.iterdir() if q.name.startswith("."))
    rerun_s, rerun_rc, rerun_log = timed(torchrun(n) + cli(dimension, folder, kill_items), env)
    doc, _ = manifest(folder)
    return {"killed_pid": killed, "rank1_videos_when_killed": written_then, "torchrun_rc": p.returncode,
            "torchrun_tail": out[-1500:], "videos_after_kill": len(present), "corrupt_after_kill": bad,
            "temp_files_after_kill": temps, "rerun_seconds": round(rerun_s, 2), "rerun_rc": rerun_rc,
            "rerun_tail": rerun_log[-800:], "complete_after_rerun": doc["complete"],
            "present_after_rerun": doc["present"], "expected": doc["expected"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dimension", default="human_action")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_multi"))
    ap.add_argument("--kill-items", type=int, default=24, help="items of the kill test (the first N of the set)")
    ap.add_argument("--kill-after", type=int, default=3, help="rank 1 is killed once it has written this many")
    ap.add_argument("--limit", type=int, default=None, help="only the first N items of the set (quick looks)")
    ap.add_argument("--device", default="cuda", help="cuda; cpu checks this script itself (gloo)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device

    import torch

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(REPO)]))
    gpu = torch.cuda.get_device_name(0) if DEVICE.startswith("cuda") else "cpu"
    one, many, kill = args.work / "one", args.work / "multi", args.work / "killed"
    for d in (one, many, kill):
        subprocess.run(["rm", "-rf", str(d)], check=True)

    t1, rc1, log1 = timed([sys.executable] + cli(args.dimension, one, args.limit), dict(env, CUDA_VISIBLE_DEVICES="0"))
    tn, rcn, logn = timed(torchrun(args.gpus) + cli(args.dimension, many, args.limit), env)
    result = {"gpu": gpu, "gpus": args.gpus, "dimension": args.dimension, "torch": torch.__version__,
              "one_gpu": {"seconds": round(t1, 2), "rc": rc1, "tail": log1[-800:]},
              "n_gpu": {"seconds": round(tn, 2), "rc": rcn, "tail": logn[-800:]}}
    if rc1 == 0 and rcn == 0:
        d1, dn = manifest(one)[0], manifest(many)[0]
        result["set_equal"] = set(videos(one)) == set(videos(many))
        result["complete"] = [d1["complete"], dn["complete"]]
        result["expected"] = d1["expected"]
        result["compare"] = compare(one, many, sorted(videos(one)))
        result["wall_ratio"] = round(t1 / tn, 3)
        ranks = {}
        for v in dn["videos"]:
            ranks[v["rank"]] = ranks.get(v["rank"], 0.0) + v["seconds"]
        result["video_seconds_per_rank"] = {str(k): round(s, 2) for k, s in sorted(ranks.items())}
        result["video_seconds_one"] = round(sum(v["seconds"] for v in d1["videos"]), 2)
        result["kill"] = kill_test(args.dimension, args.gpus, kill, env, args.kill_items, args.kill_after)
        kill_names = sorted(videos(kill))
        result["kill"]["compare_with_one_gpu"] = compare(one, kill, kill_names)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    if "wall_ratio" in result:
        c, k = result["compare"], result["kill"]
        print(f"\n{'':28}{'1 GPU':>10}{f'{args.gpus} GPUs':>10}   ({gpu})")
        print(f"{'wall time (s)':28}{t1:>10.1f}{tn:>10.1f}")
        print(f"{'ratio 1-GPU / N-GPU':28}{result['wall_ratio']:>10.2f}   goal >= {0.9 * args.gpus:.2f}")
        print(f"{'videos / identical bytes':28}{c['videos']:>10}{c['bytes_identical']:>10}   max pixel diff "
              f"{c['max_abs_pixel_diff']}, same set {result['set_equal']}, seeds equal {c['seeds_and_prompts_equal']}")
        print(f"{'kill: corrupt / temp left':28}{len(k['corrupt_after_kill']):>10}{len(k['temp_files_after_kill']):>10}"
              f"   rerun complete {k['complete_after_rerun']} ({k['present_after_rerun']}/{k['expected']})")


if __name__ == "__main__":
    main()
