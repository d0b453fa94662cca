"""Issue 4, acceptance 2-4: does the shipped default model follow its captions, seamlessly, and continue?

Captions: `held_out_single_object_captions(424242, n)` ("a red square moves left"): one object, plain
background, static camera. 424242 is never a training seed: training draws world clips from seeds
`seed*10^8 + i*batch` (`flowcache_core.training.train.WorldStream`, seed 0 for the shipped model), and the held-out
stream is a separately seeded generator (`np.random.default_rng([424242, 7])`), not `sample_clip`.
Sampling seeds are fixed: video i uses seed i (0..n-1).

2. t2v: colour accuracy and motion-direction accuracy from `bench.judge`; a contact sheet PNG (first /
   middle / last frame per video, labelled with the caption and the judge's verdict).
3. seamlessness, over the videos whose direction the judge found correct: the mean absolute frame-to-frame
   change (per pixel and channel, 0..255) across chunk boundaries vs inside chunks; a chunk is
   `chunk_width * temporal_downsample` video frames. Goal: boundary / within <= 1.5.
4. continuation: for caption i, a world clip drawn for it (`render_caption(caption, seed=i)`); i2v takes its
   first frame, v2v its first 8 frames; the judge's colour of the generated part (i2v: the frames after the
   given one; v2v: the output, which holds the generated frames only) must equal the caption's colour in
   >= 80% of cases.

    python bench/judge_default.py                 # n = 50, the model's steps (32)
    python bench/judge_default.py --n 12
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.judge import contact_sheet, judge_video, parse_caption  # noqa: E402
from flowcache_core.api import generate  # noqa: E402
from flowcache_core.models.magi1.bundle import load_bundle  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.eval.sweep import write_json  # noqa: E402
from flowcache_core.training.world import held_out_single_object_captions, render_caption  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CAPTION_SEED = 424242
V2V_PREFIX_FRAMES = 8
GOALS = dict(colour=0.80, direction=0.70, seam_ratio=1.5, continuation_colour=0.80)


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """(T-1,) mean |frame[t+1] - frame[t]| over pixels and channels, of uint8 (T, H, W, 3)."""
    f = frames.astype(np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))


def seam_stats(videos: list[np.ndarray], chunk_frames: int) -> dict:
    """Pooled over videos: mean change across chunk boundaries (frame t -> t+1 with (t+1) % chunk_frames == 0)
    vs inside chunks; ratio = boundary / within (None when either side has no pairs)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames {chunk_frames} must be >= 1")
    across, within = [], []
    for v in videos:
        d = frame_changes(v)
        is_b = (np.arange(1, len(v)) % chunk_frames) == 0  # pair (t, t+1) crosses into a new chunk
        across += d[is_b].tolist()
        within += d[~is_b].tolist()
    b = float(np.mean(across)) if across else None
    w = float(np.mean(within)) if within else None
    ratio = None if b is None or w is None or w == 0 else b / w
    return dict(videos=len(videos), boundary_pairs=len(across), within_pairs=len(within), boundary_mean=b,
                within_mean=w, ratio=ratio)


def colour_kept(caption: str, generated: np.ndarray) -> dict:
    """Judge the generated part of a continuation: is the object's colour the caption's?"""
    colour = parse_caption(caption)[0]
    j = judge_video(generated)
    return dict(expected=colour, judged=j.colour, ok=j.colour == colour)


def _rate(rows: list[dict], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="held-out captions / sampling seeds 0..n-1")
    ap.add_argument("--num-steps", type=int, default=None, help="default: the model's (32)")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--cfg-number", type=int, default=None, help="1 or 3 (default: the model's; 3 for the shipped one)")
    ap.add_argument("--no-continuation", action="store_true", help="skip the i2v / v2v part")
    ap.add_argument("--out", default=str(RESULTS / "judge_default.json"))
    ap.add_argument("--sheet", default=None, help="contact sheet PNG (default: beside --out, _sheet.png)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model runs there; the judge reads pixels)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's); 1 is much faster on a machine others load")
    a = ap.parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(max(1, a.threads))
    err = Console(stderr=True)
    out = Path(a.out)
    sheet = Path(a.sheet) if a.sheet else out.with_name(out.stem + "_sheet.png")
    try:
        if a.n < 1:
            raise FlowcacheError(f"--n {a.n} must be >= 1")
        for p in (out, sheet):
            if not p.parent.is_dir():
                raise FlowcacheError(f"output folder {str(p.parent)!r} does not exist")
        b = load_bundle(a.checkpoint_dir, device=a.device)
    except FlowcacheError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2
    rt = b.config.runtime
    steps = a.num_steps or rt.num_steps
    chunk_frames = rt.chunk_width * b.codec.temporal_downsample
    H, W, T = rt.video_size_h, rt.video_size_w, rt.num_frames
    captions = held_out_single_object_captions(CAPTION_SEED, a.n)
    load0 = list(os.getloadavg())
    t_start = time.time()

    # 2. t2v
    rows, videos, secs = [], [], []
    for i, cap in enumerate(captions):
        t0 = time.perf_counter()
        v = generate(cap, bundle=b, seed=i, num_steps=steps, cfg_number=a.cfg_number).frames
        secs.append(time.perf_counter() - t0)
        colour, shape, direction = parse_caption(cap)
        j = judge_video(v)
        rows.append(dict(caption=cap, seed=i, expected_colour=colour, expected_direction=direction, colour=j.colour,
                         direction=j.direction, colour_ok=j.colour == colour, direction_ok=j.direction == direction,
                         displacement=list(j.displacement), visible_fraction=j.visible_fraction))
        videos.append(v)
        err.print(f"[t2v {i + 1}/{a.n}] {cap!r}: {j.colour}/{j.direction} ({secs[-1]:.1f}s)", highlight=False, markup=False)
    labels = [f"{r['seed']}: {r['caption']} -> {r['colour']}/{r['direction']}" for r in rows]
    contact_sheet(videos, labels, str(sheet))

    # 3. seams over the videos with the right direction
    seams = seam_stats([v for v, r in zip(videos, rows) if r["direction_ok"]], chunk_frames)
    seams_all = seam_stats(videos, chunk_frames)

    # 4. continuation
    cont: dict[str, list[dict]] = {"i2v": [], "v2v": []}
    if not a.no_continuation:
        for i, cap in enumerate(captions):
            clip = render_caption(cap, seed=i, num_frames=T, height=H, width=W).frames
            gi = generate(cap, mode="i2v", image=clip[0], bundle=b, seed=i, num_steps=steps, cfg_number=a.cfg_number).frames[1:]
            gv = generate(cap, mode="v2v", prefix_video=clip[:V2V_PREFIX_FRAMES], bundle=b, seed=i, num_steps=steps, cfg_number=a.cfg_number).frames
            prefix_colour = judge_video(clip[:V2V_PREFIX_FRAMES]).colour
            for mode, g in (("i2v", gi), ("v2v", gv)):
                r = colour_kept(cap, g)
                r.update(caption=cap, seed=i, prefix_colour=prefix_colour, generated_frames=int(len(g)))
                cont[mode].append(r)
            err.print(f"[cont {i + 1}/{a.n}] {cap!r}: i2v {cont['i2v'][-1]['judged']}, v2v {cont['v2v'][-1]['judged']}",
                      highlight=False, markup=False)

    res = dict(
        colour_accuracy=_rate(rows, "colour_ok"), direction_accuracy=_rate(rows, "direction_ok"),
        seams_direction_correct=seams, seams_all_videos=seams_all,
        i2v_colour_kept=_rate(cont["i2v"], "ok"), v2v_colour_kept=_rate(cont["v2v"], "ok"),
    )  # fmt: skip
    met = dict(
        colour=res["colour_accuracy"] >= GOALS["colour"], direction=res["direction_accuracy"] >= GOALS["direction"],
        seams=None if seams["ratio"] is None else seams["ratio"] <= GOALS["seam_ratio"],
        i2v=None if res["i2v_colour_kept"] is None else res["i2v_colour_kept"] >= GOALS["continuation_colour"],
        v2v=None if res["v2v_colour_kept"] is None else res["v2v_colour_kept"] >= GOALS["continuation_colour"],
    )  # fmt: skip
    report = dict(
        benchmark="judge_default (issue 4, acceptance 2-4)", model=str(b.path), num_steps=steps, cfg_number=a.cfg_number or rt.cfg_number, n=a.n,
        caption_seed=CAPTION_SEED, sampling_seeds=f"0..{a.n - 1}", chunk_frames=chunk_frames,
        held_out_note="training world seeds are seed*10^8 + i*batch (WorldStream, shipped model trained with seed 0); "
                      "captions come from held_out_single_object_captions(424242), a separate generator",
        machine=dict(device=a.device if a.device == "cpu" else torch.cuda.get_device_name(0), cpu=_cpu_model(), logical_cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                     loadavg_start=load0, loadavg_end=list(os.getloadavg()), total_wall_s=time.time() - t_start,
                     t2v_seconds_median=float(np.median(secs))),
        results=res, goals=GOALS, goals_met=met, contact_sheet=str(sheet), t2v=rows, continuation=cont,
    )  # fmt: skip
    write_json(report, out)

    con = Console(width=max(Console().width, 120))
    con.print(f"wrote {out} and {sheet}", highlight=False, soft_wrap=True)
    table = Table(title=f"default model vs the judge: {a.n} held-out captions (seed {CAPTION_SEED}), {steps} steps")
    for c in ("measure", "value", "goal", "met"):
        table.add_column(c, justify="left" if c == "measure" else "right")

    def row(name, v, goal, ok, fmt="{:.0%}"):
        table.add_row(name, "-" if v is None else fmt.format(v), goal, "-" if ok is None else ("yes" if ok else "NO"))

    row("colour correct (t2v)", res["colour_accuracy"], ">= 80%", met["colour"])
    row("direction correct (t2v)", res["direction_accuracy"], ">= 70%", met["direction"])
    row(f"seam ratio, {seams['videos']} direction-correct videos", seams["ratio"], "<= 1.5", met["seams"], "{:.2f}")
    row("  boundary / within change (0..255)", None if seams["boundary_mean"] is None else seams["boundary_mean"],
        f"within {seams['within_mean']:.2f}" if seams["within_mean"] is not None else "", None, "{:.2f}")
    row(f"seam ratio, all {seams_all['videos']} videos", seams_all["ratio"], "(info)", None, "{:.2f}")
    row("i2v colour kept", res["i2v_colour_kept"], ">= 80%", met["i2v"])
    row("v2v colour kept", res["v2v_colour_kept"], ">= 80%", met["v2v"])
    con.print(table)
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
