"""`sweep`: every cache setting on the same prompts and seeds, scored against the uncached video.

The calibration tool: which (policy, reuse, threshold) is fastest above a fidelity floor on this model and
machine? Order of work, per prompt and seed: `none` first (the reference), then every setting back to back,
so a change in machine load touches all settings alike (interleaved, never one setting for all prompts and
then the next). Each cached video is compared with its `none` video: PSNR over the whole clip, SSIM (mean
over frames), LPIPS (mean over frames) when the AlexNet weights are found, else reported unavailable.

Per setting the table holds: mean wall time, wall speedup vs `none` (sum of none's seconds over the sum of
the setting's, same runs), chunk-forwards computed / total, the ideal speedup (total / computed), the
realized / ideal ratio, PSNR/SSIM/LPIPS means. For scale, `none` is also run at a second seed per prompt and
compared with the first (what "a different video of the same caption" scores).

`recommend` (pure) picks the setting with the highest chunk-forwards speedup whose mean PSNR and SSIM clear
the floors (wall time is noisy on a shared machine; it stays a reported column). `pareto_plot`
draws speedup vs PSNR (and vs LPIPS) when matplotlib imports; otherwise it says so in one line.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from flowcache_core.api import generate
from flowcache_core.api import load, resolve
from flowcache_core.cache.options import option_fields
from flowcache_core.cache.policy import REUSE_MODES
from flowcache_core.cache.registry import POLICIES
from flowcache_core.cache.settings import CacheConfig, check_policy
from flowcache_core.checks import check_seed
from flowcache_core.engine.family import Bundle
from flowcache_core.errors import FlowcacheError
from flowcache_core.eval.metrics import LpipsUnavailable, load_lpips, lpips_per_frame, psnr, ssim_per_frame
from flowcache_core.fileio import atomic_write, atomic_write_text, make_output_dir, read_prompt_lines
from flowcache_core.models.registry import FAMILIES
from flowcache_core.training.world import held_out_single_object_captions

DEFAULT_THRESHOLDS = (0.03, 0.05, 0.07, 0.1, 0.15)
DEFAULT_PROMPT_SEED = 424242  # held-out caption stream (training draws world seeds seed*10^8 + i*batch)
SCALE_SEED_OFFSET = 1000  # `none` at seed + this is the "other video of the same caption" for scale


# ----------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One cache configuration of the grid. `none` has no reuse mode and no threshold."""

    policy: str
    reuse: str | None = None
    thresh: float | None = None

    @property
    def name(self) -> str:
        if self.policy == "none":
            return "none"
        mode = f"-{self.reuse}" if self.reuse is not None else ""
        return f"{self.policy}{mode}@{self.thresh:g}"

    def cache_config(self, warmup_steps: int | None) -> CacheConfig:
        """The setting's options; warmup None = the model's cache_defaults (resolved like any request)."""
        if self.policy == "none":
            return CacheConfig(policy="none")
        return CacheConfig(self.policy, rel_l1_thresh=float(self.thresh), warmup_steps=warmup_steps, reuse=self.reuse)


def threshold_policies() -> tuple[str, ...]:
    """Registered policies a threshold grid applies to: those with a rel_l1_thresh option."""
    return tuple(n for n, p in POLICIES.items() if "rel_l1_thresh" in option_fields(p.Config))


def parse_float_list(text: str, flag: str = "--thresholds") -> list[float]:
    """'0.05,0.1' -> [0.05, 0.1]; empty, non-numeric, negative or non-finite values are a FlowcacheError."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise FlowcacheError(f"{flag} {text!r} is empty; give comma-separated numbers >= 0 (e.g. 0.05,0.1)")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise FlowcacheError(f"{flag} value {p!r} is not a number (e.g. 0.05,0.1)") from None
        if not math.isfinite(v) or v < 0:
            raise FlowcacheError(f"{flag} value {p!r} must be a finite number >= 0")
        out.append(v)
    return sorted(set(out))


def parse_int_list(text: str, flag: str = "--seeds") -> list[int]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise FlowcacheError(f"{flag} {text!r} is empty; give comma-separated integers >= 0 (e.g. 0,1)")
    out = []
    for p in parts:
        if not p.isdigit():
            raise FlowcacheError(f"{flag} value {p!r} must be an integer >= 0")
        out.append(int(p))
    return list(dict.fromkeys(out))


def parse_choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise FlowcacheError(f"{flag} {text!r} is empty; allowed: {', '.join(allowed)}")
    for p in parts:
        if p not in allowed:
            raise FlowcacheError(f"{flag} value {p!r} is not one of {', '.join(allowed)}")
    return list(dict.fromkeys(parts))


def settings_grid(policies: list[str], reuse_modes: list[str], thresholds: list[float]) -> list[Setting]:
    """`none` first (always: it is the reference), then every thresholded policy (registry order) per reuse
    mode (where its config has one) and threshold."""
    for p in policies:
        check_policy(p, "policy")
    for r in reuse_modes:
        if r not in REUSE_MODES:
            raise FlowcacheError(f"reuse mode {r!r} is not one of {', '.join(REUSE_MODES)}")
    if not thresholds:
        raise FlowcacheError("the threshold list is empty; give at least one threshold >= 0")
    grid = [Setting("none")]
    for p in threshold_policies():
        if p in policies:
            modes = reuse_modes if "reuse" in option_fields(POLICIES[p].Config) else [None]
            grid += [Setting(p, r, t) for r in modes for t in thresholds]
    return grid


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    return read_prompt_lines(path, comments=True)


def default_prompts(n: int) -> list[str]:
    if n < 1:
        raise FlowcacheError(f"--prompts {n} must be >= 1")
    return held_out_single_object_captions(DEFAULT_PROMPT_SEED, n)


# ----------------------------------------------------------------------------------------- config / results
@dataclass
class SweepConfig:
    prompts: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    policies: list[str] = field(default_factory=lambda: list(POLICIES))
    reuse_modes: list[str] = field(default_factory=lambda: list(REUSE_MODES))
    warmup_steps: int | None = None  # None: the model's cache_defaults, else the policy's default
    num_steps: int | None = None  # None: the bundle's
    num_frames: int | None = None
    checkpoint_dir: str | None = None
    device: str = "cpu"
    lpips: bool = True
    seed_scale: bool = True  # also run `none` at a second seed per prompt, for scale
    warmup_run: bool = True  # one untimed `none` video before the timed ones
    min_psnr: float = 25.0
    min_ssim: float = 0.75
    min_psnr_each: float | None = None  # floor on every single run's PSNR (each prompt and seed); None: no floor

    def validate(self) -> None:
        if not self.prompts or any(not p.strip() for p in self.prompts):
            raise FlowcacheError("prompts must be a non-empty list of non-empty prompts")
        if not self.seeds:
            raise FlowcacheError("seeds is empty; give at least one seed")
        for s in self.seeds:
            check_seed(s, "seed")
            if self.seed_scale:  # `none` also runs at seed + SCALE_SEED_OFFSET
                check_seed(s + SCALE_SEED_OFFSET, f"seed {s} + {SCALE_SEED_OFFSET} (the scale run's seed)")
        settings_grid(self.policies, self.reuse_modes, self.thresholds)
        for t in self.thresholds:
            if not math.isfinite(t) or t < 0:
                raise FlowcacheError(f"threshold {t!r} must be a finite number >= 0")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise FlowcacheError(f"warmup_steps {self.warmup_steps!r} must be an integer >= 0")
        if not math.isfinite(self.min_psnr):
            raise FlowcacheError(f"min_psnr {self.min_psnr!r} must be a finite number (dB)")
        if not (0.0 <= self.min_ssim <= 1.0):
            raise FlowcacheError(f"min_ssim {self.min_ssim!r} must be in [0, 1]")
        if self.min_psnr_each is not None and not math.isfinite(self.min_psnr_each):
            raise FlowcacheError(f"min_psnr_each {self.min_psnr_each!r} must be a finite number (dB)")

    @property
    def settings(self) -> list[Setting]:
        return settings_grid(self.policies, self.reuse_modes, self.thresholds)


@dataclass
class RunRow:
    """One video of one setting."""

    setting: str
    prompt: str
    seed: int
    seconds: float  # wall time of the generate call
    cpu_seconds: float  # process CPU time of the call (less sensitive to other load on the machine)
    chunk_forwards: int
    computed_chunk_forwards: int
    forwards: int
    psnr: float | None = None  # vs `none` of the same prompt and seed (None for `none` itself)
    ssim: float | None = None
    lpips: float | None = None


@dataclass
class SettingSummary:
    setting: str
    policy: str
    reuse: str | None
    thresh: float | None
    runs: int
    mean_seconds: float
    speedup: float  # wall: sum of none's seconds / sum of this setting's, over the same runs
    cpu_speedup: float  # the same with process CPU time
    speedup_median: float  # median over (prompt, seed) of none's seconds / this setting's (robust to load spikes)
    computed_chunk_forwards: int
    chunk_forwards: int
    ideal_speedup: float  # chunk_forwards / computed_chunk_forwards
    realized_over_ideal: float  # speedup / ideal_speedup
    psnr_mean: float | None  # mean over videos of the whole-clip PSNR (inf when every video is identical)
    psnr_min: float | None
    ssim_mean: float | None
    lpips_mean: float | None


@dataclass
class SweepResult:
    config: dict
    lpips_status: str
    rows: list[RunRow]
    summaries: list[SettingSummary]
    seed_scale: dict | None  # {"psnr_mean", "ssim_mean", "pairs"} between two seeds of none
    recommendation: str | None
    model: dict

    def to_dict(self) -> dict:
        return _json_safe({
            "config": self.config, "model": self.model, "lpips_status": self.lpips_status,
            "recommendation": self.recommendation, "seed_scale": self.seed_scale,
            "settings": [asdict(s) for s in self.summaries], "runs": [asdict(r) for r in self.rows], "complete": True,
        })  # fmt: skip


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


# ----------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Progress:
    """Sent after every video: `done` of `total`, which setting, prompt and seed, and its wall time."""

    done: int
    total: int
    setting: str
    prompt: str
    seed: int
    seconds: float


def _compare(ref: np.ndarray, cand: np.ndarray, lpips_model) -> tuple[float, float, float | None]:
    lp = None
    if lpips_model is not None:
        lp = float(np.mean(lpips_per_frame(lpips_model, ref, cand)))
    return psnr(ref, cand), float(np.mean(ssim_per_frame(ref, cand))), lp


def run_sweep(cfg: SweepConfig, *, bundle: Bundle | None = None, on_progress: Callable[[Progress], None] | None = None,
              on_video: Callable[[str, str, int, np.ndarray], None] | None = None,
              partial_json: str | os.PathLike | None = None,
              clock: Callable[[], float] = time.perf_counter,
              cpu_clock: Callable[[], float] = time.process_time) -> SweepResult:
    """Run the grid (see module doc). `on_video(setting, prompt, seed, frames)` sees every video (the
    scale runs of `none` come as setting 'none@scale-seed'). `partial_json`: a file rewritten atomically before
    the first video (a write that fails, e.g. a full disk, fails then) and after every run, with the runs done so
    far and `"complete": false`, so a failure late keeps what was done; the caller writes the final one."""
    cfg.validate()
    b = bundle or load(resolve("sweep", checkpoint_dir=cfg.checkpoint_dir, device=cfg.device))
    warmup = cfg.warmup_steps
    warmup_used = warmup  # what the cached runs resolved to (None: the model's cache_defaults)
    settings = cfg.settings
    lpips_model, lpips_status = None, "off"
    if cfg.lpips:
        m = load_lpips(device=cfg.device)
        if isinstance(m, LpipsUnavailable):
            lpips_status = f"unavailable: {m.reason}"
        else:
            lpips_model, lpips_status = m, f"on: {m.source.trunk if m.source else 'found'}"

    total = len(cfg.prompts) * (len(cfg.seeds) * len(settings) + (1 if cfg.seed_scale else 0))
    rows: list[RunRow] = []
    scale_pairs: list[dict] = []
    done = 0

    def save_partial() -> None:
        if partial_json is not None:
            write_json({"complete": False, "runs_done": done, "runs_total": total, "config": asdict(cfg),
                        "lpips_status": lpips_status, "runs": [asdict(r) for r in rows], "seed_scale_pairs": scale_pairs},
                       partial_json)

    save_partial()

    def run_one(setting: Setting, prompt: str, seed: int, label: str | None = None):
        nonlocal done, warmup_used
        t0, c0 = clock(), cpu_clock()
        res = generate(prompt, cache=setting.cache_config(warmup), bundle=b, seed=seed, num_steps=cfg.num_steps,
                       num_frames=cfg.num_frames, device=cfg.device)
        sec, cpu = clock() - t0, cpu_clock() - c0
        warmup_used = res.cache.options().get("warmup_steps", warmup_used)
        done += 1
        if on_progress is not None:
            on_progress(Progress(done, total, label or setting.name, prompt, seed, sec))
        if on_video is not None:
            on_video(label or setting.name, prompt, seed, res.frames)
        return res, (sec, cpu)

    if cfg.warmup_run:  # the first generate of a process pays one-off costs; keep them out of `none`'s time
        generate(cfg.prompts[0], bundle=b, seed=cfg.seeds[0], num_steps=cfg.num_steps, num_frames=cfg.num_frames,
                 device=cfg.device)
    for prompt in cfg.prompts:
        for si, seed in enumerate(cfg.seeds):
            ref, ref_sec = run_one(settings[0], prompt, seed)
            rec = ref.record
            rows.append(RunRow("none", prompt, seed, *ref_sec, rec.chunk_forwards, rec.computed_chunk_forwards,
                               rec.forwards))
            save_partial()
            for s in settings[1:]:
                res, sec = run_one(s, prompt, seed)
                p, ss, lp = _compare(ref.frames, res.frames, lpips_model)
                r = res.record
                rows.append(RunRow(s.name, prompt, seed, *sec, r.chunk_forwards, r.computed_chunk_forwards, r.forwards,
                                   p, ss, lp))
                save_partial()
            if cfg.seed_scale and si == 0:
                other = seed + SCALE_SEED_OFFSET
                res, _ = run_one(settings[0], prompt, other, label="none@scale-seed")
                p, ss, lp = _compare(ref.frames, res.frames, lpips_model)
                scale_pairs.append(dict(prompt=prompt, seeds=[seed, other], psnr=p, ssim=ss, lpips=lp))
                save_partial()

    summaries = summarize(rows, settings)
    seed_scale = None
    if scale_pairs:
        lps = [d["lpips"] for d in scale_pairs]
        seed_scale = dict(psnr_mean=float(np.mean([d["psnr"] for d in scale_pairs])),
                          ssim_mean=float(np.mean([d["ssim"] for d in scale_pairs])),
                          lpips_mean=None if any(v is None for v in lps) else float(np.mean(lps)),
                          pairs=scale_pairs)
    rec_s = recommend(summaries, cfg.min_psnr, cfg.min_ssim, cfg.min_psnr_each)
    v = FAMILIES[b.family].video(b.config)
    extra = {k: x for k, x in v.items() if k not in ("num_steps", "num_frames", "height", "width", "fps")}
    model = dict(path=str(b.path) if b.path else None, num_steps=cfg.num_steps or v["num_steps"],
                 num_frames=cfg.num_frames or v["num_frames"], size=[v["height"], v["width"]], **extra,
                 warmup_steps=warmup_used)
    conf = {k: v for k, v in asdict(cfg).items()}
    return SweepResult(conf, lpips_status, rows, summaries, seed_scale, rec_s.setting if rec_s else None, model)


def _mean_or_none(vals: list) -> float | None:
    if not vals or any(v is None for v in vals):
        return None
    return float(np.mean(vals))


def summarize(rows: list[RunRow], settings: list[Setting]) -> list[SettingSummary]:
    """One summary per setting, in grid order. Speedup pairs each setting's runs with none's of the same
    (prompt, seed): sum(none seconds) / sum(setting seconds)."""
    none_sec = {(r.prompt, r.seed): r.seconds for r in rows if r.setting == "none"}
    none_cpu = {(r.prompt, r.seed): r.cpu_seconds for r in rows if r.setting == "none"}
    out = []
    for s in settings:
        rs = [r for r in rows if r.setting == s.name]
        if not rs:
            continue
        sec = sum(r.seconds for r in rs)
        ref = sum(none_sec[(r.prompt, r.seed)] for r in rs)
        total = sum(r.chunk_forwards for r in rs)
        comp = sum(r.computed_chunk_forwards for r in rs)
        speed = ref / sec if sec > 0 else float("nan")
        med = float(np.median([none_sec[(r.prompt, r.seed)] / r.seconds for r in rs]))
        cpu = sum(r.cpu_seconds for r in rs)
        cpu_speed = sum(none_cpu[(r.prompt, r.seed)] for r in rs) / cpu if cpu > 0 else float("nan")
        ideal = total / comp if comp else 1.0
        is_ref = s.policy == "none"
        psnrs = [r.psnr for r in rs]
        out.append(SettingSummary(
            s.name, s.policy, s.reuse, s.thresh, len(rs), sec / len(rs), speed, cpu_speed, med, comp, total, ideal, speed / ideal,
            None if is_ref else _mean_or_none(psnrs), None if is_ref else float(min(psnrs)),
            None if is_ref else _mean_or_none([r.ssim for r in rs]), None if is_ref else _mean_or_none([r.lpips for r in rs]),
        ))  # fmt: skip
    return out


def recommend(summaries: list[SettingSummary], min_psnr: float, min_ssim: float,
              min_psnr_each: float | None = None) -> SettingSummary | None:
    """The fastest cached setting with mean PSNR >= min_psnr, mean SSIM >= min_ssim and (when given) every run's
    PSNR >= min_psnr_each, ranked by the
    chunk-forwards speedup (total / computed: deterministic, unlike wall time, which is only reported);
    ties go to the higher PSNR, then the higher wall speedup. None when no cached setting clears both floors."""
    ok = [s for s in summaries if s.policy != "none" and s.psnr_mean is not None and s.ssim_mean is not None
          and s.psnr_mean >= min_psnr and s.ssim_mean >= min_ssim and math.isfinite(s.ideal_speedup)
          and (min_psnr_each is None or (s.psnr_min is not None and s.psnr_min >= min_psnr_each))]
    if not ok:
        return None
    return max(ok, key=lambda s: (s.ideal_speedup, s.psnr_mean, s.speedup if math.isfinite(s.speedup) else 0.0))


def pareto_front(points: list[tuple[float, float]], higher_better: bool = True) -> list[int]:
    """Indices of the points (speedup, quality) not dominated by another (more speed and better quality)."""
    sign = 1.0 if higher_better else -1.0
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and sign * y2 >= sign * y) and (x2 > x or sign * y2 > sign * y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


# ----------------------------------------------------------------------------------------- output
def check_output_dir(path: str | os.PathLike) -> Path:
    """The sweep's output folder: created, its parent must exist (a typo in a path fails instead of building a tree)."""
    return make_output_dir(path, parents=False)


def write_json(obj: dict, path: str | os.PathLike) -> Path:
    """JSON (inf as "inf"), temp file + rename."""
    return atomic_write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def pareto_plot(summaries: list[SettingSummary], path_png: str | os.PathLike, title: str = "") -> str:
    """Speedup vs PSNR (and vs LPIPS when every setting has it) as PNG. Returns "wrote <path>" or a
    one-line reason it could not (matplotlib missing), never raises for that."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'Pareto plot skipped: matplotlib is not installed (pip install -e ".[plot]")'
    cached = [s for s in summaries if s.policy != "none" and s.psnr_mean is not None]
    if not cached:
        return "Pareto plot skipped: no cached settings"
    has_lpips = all(s.lpips_mean is not None for s in cached)
    finite = [s.psnr_mean for s in cached if math.isfinite(s.psnr_mean)]
    cap = (max(finite) if finite else 40.0) + 5.0  # where identical videos (inf dB) are drawn

    def psnr_y(s):
        return s.psnr_mean if math.isfinite(s.psnr_mean) else cap

    panels = [("PSNR vs none (dB, higher is better)", psnr_y, True)]
    if has_lpips:
        panels.append(("LPIPS vs none (lower is better)", lambda s: s.lpips_mean, False))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    groups: dict[str, list[SettingSummary]] = {}
    for s in cached:
        groups.setdefault(s.setting.split("@")[0], []).append(s)
    for ax, (ylabel, yfn, higher) in zip(axes[0], panels):
        for g, ss in groups.items():
            ss = sorted(ss, key=lambda s: s.thresh)
            xs, ys = [s.speedup for s in ss], [yfn(s) for s in ss]
            ax.plot(xs, ys, "o-", label=g + (" (published rule)" if g.endswith("displacement") else ""))
            for s, x, y in zip(ss, xs, ys):
                ax.annotate(f"{s.thresh:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        pts = [(s.speedup, yfn(s)) for s in cached]
        front = sorted((pts[i] for i in pareto_front(pts, higher)), key=lambda p: p[0])
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=0.8, label="Pareto front")
        ax.axvline(1.0, color="grey", lw=0.5)
        if higher and not finite == [s.psnr_mean for s in cached]:
            ax.axhline(cap, color="grey", lw=0.5, ls=":")
            ax.text(ax.get_xlim()[0], cap, " identical (inf dB)", fontsize=7, va="bottom")
        ax.set_xlabel("wall-clock speedup vs none")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = Path(path_png)
    try:
        with atomic_write(p, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return f"wrote {p}"
