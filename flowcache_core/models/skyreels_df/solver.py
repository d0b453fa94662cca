"""SkyReels-V2 DF's sampler: flow-matching UniPC (predictor-corrector, B(h) variant), one state per causal block.

The same numbers as diffusers' `UniPCMultistepScheduler` (0.42.1) in the configuration SkyReels-V2 DF runs:
prediction_type "flow_prediction", use_flow_sigmas, predict_x0, solver_type bh2 (bh1 too), solver_order 2,
lower_order_final, final_sigmas_type "zero", timestep_spacing "linspace", num_train_timesteps 1000.
`read_scheduler_config` accepts a scheduler_config.json only when every setting it holds is one this file
implements, so nothing silently changes meaning.

Facts (diffusers schedulers/scheduling_unipc_multistep.py, pipelines/skyreels_v2/*diffusion_forcing*.py):
- sigmas: s_i = 1 - i (1 - 1/T) / n for i < n (numpy linspace(1, 1/T, n + 1)[:-1], float64), shifted
  s' = shift s / (1 + (shift - 1) s), the first one nudged to 1 - 1e-6 when it is within 1e-6 of 1; a final 0
  appended; stored float32. Model timesteps are int64(s' * T) (truncation), n of them.
- `shift` is the config's `flow_shift`: the DF pipelines call `set_timesteps(num_inference_steps)` with no shift
  argument; diffusers' docs change it with `UniPCMultistepScheduler.from_config(config, flow_shift=...)`
  (8.0 for T2V, 5.0 for I2V and V2V in their examples). `with_shift` is that override.
- the pipeline deep-copies the scheduler once per latent frame and steps each frame only when the timestep
  matrix updates it; all frames of a causal block share every timestep and every update, and UniPC's state is
  elementwise, so one state per block stepped on the block's (C, frames, h, w) tensor gives the same numbers.
- the pipelines pass `latents[:, :, idx]` (a view) as `sample` and write the result back into it. On a step
  without a corrector (the first, or one in disable_corrector) the scheduler keeps that very tensor as the next
  corrector's `last_sample`, so the next corrector sees the *new* sample instead of the old one (from 3 steps on
  this changes the numbers). `UniPC.step` keeps `sample` by reference just the same: pass the block's view and
  write the result into it to get the pipelines' numbers; pass a tensor you do not overwrite for UniPC as written.
- a copy's first `step` looks its timestep up in the schedule; when the first two int timesteps are equal
  (e.g. shift 8 from 126 steps on) it starts at index 1 and fails an assertion on the last step. We refuse
  such step counts instead (`check_steps`).

Convention: diffusers' sigma is the noise fraction (x = (1 - sigma) x0 + sigma noise, model output = noise - x0).
Ours is t = 1 - sigma (0 = noise, 1 = clean); `flow_t(sigmas)` converts. UniPC is multistep, not Euler: the
engine's `x += v * dt` carries it as the effective velocity v = (step(...) - x) / dt.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from flowcache_core.errors import FlowcacheError

# scheduler_config.json keys and the only values we implement (diffusers' defaults included, so a config saved by
# `save_pretrained`, which writes every key, reads back). Keys starting with "_" are metadata.
_FIXED = {
    "_class_name": ("UniPCMultistepScheduler",),
    "prediction_type": ("flow_prediction",),
    "use_flow_sigmas": (True,),
    "predict_x0": (True,),
    "thresholding": (False,),
    "use_karras_sigmas": (False,),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_dynamic_shifting": (False,),
    "timestep_spacing": ("linspace",),
    "steps_offset": (0,),
    "rescale_betas_zero_snr": (False,),
    "solver_p": (None,),
    "shift_terminal": (None,),
    "sigma_min": (None,),
    "sigma_max": (None,),
}
# keys that only matter to settings refused above (VP betas without flow sigmas, thresholding, dynamic shifting)
_INERT = {"beta_start", "beta_end", "beta_schedule", "trained_betas", "dynamic_thresholding_ratio",
          "sample_max_value", "time_shift_type"}
_OURS = {"num_train_timesteps", "flow_shift", "solver_order", "solver_type", "lower_order_final",
         "final_sigmas_type", "disable_corrector"}


@dataclass(frozen=True)
class SolverConfig:
    """The UniPC settings that vary between checkpoints; everything else is fixed (see _FIXED)."""

    num_train_timesteps: int = 1000
    flow_shift: float = 1.0  # diffusers' default; SkyReels' examples override it (8 T2V, 5 I2V / V2V)
    solver_order: int = 2
    solver_type: str = "bh2"
    lower_order_final: bool = True
    final_sigmas_type: str = "zero"
    disable_corrector: tuple[int, ...] = field(default_factory=tuple)  # step indices whose corrector is skipped

    def __post_init__(self):
        rules = [
            ("num_train_timesteps", isinstance(self.num_train_timesteps, int) and self.num_train_timesteps >= 1,
             "an integer >= 1"),
            ("flow_shift", isinstance(self.flow_shift, (int, float)) and not isinstance(self.flow_shift, bool)
             and self.flow_shift > 0, "a number > 0"),
            # order >= 3 sums several history terms through einsum, whose summation order depends on the tensor
            # shape: per-block and per-frame states could then differ in the last bit, so we stop at 2
            ("solver_order", self.solver_order in (1, 2) and not isinstance(self.solver_order, bool), "1 or 2"),
            ("solver_type", self.solver_type in ("bh1", "bh2"), "'bh1' or 'bh2'"),
            ("lower_order_final", isinstance(self.lower_order_final, bool), "true or false"),
            ("final_sigmas_type", self.final_sigmas_type in ("zero", "sigma_min"), "'zero' or 'sigma_min'"),
            ("disable_corrector", all(isinstance(i, int) and not isinstance(i, bool) for i in self.disable_corrector),
             "a list of step indices"),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise FlowcacheError(f"scheduler {name}={getattr(self, name)!r} is not supported: use {allowed}")
        if self.solver_type == "bh1" and self.final_sigmas_type == "zero":  # B(h) = h = -inf at sigma 0: NaN
            raise FlowcacheError("scheduler solver_type='bh1' with final_sigmas_type='zero' ends in NaN (as in "
                                 "diffusers): use solver_type 'bh2' or final_sigmas_type 'sigma_min'")
        if not self.lower_order_final and self.final_sigmas_type == "zero" and self.solver_order > 1:
            # a second-order last step divides by lambda(0) - lambda(s) = inf: inf / NaN in diffusers too
            raise FlowcacheError("scheduler lower_order_final=false with final_sigmas_type='zero' ends in inf (as "
                                 "in diffusers): use lower_order_final true or final_sigmas_type 'sigma_min'")


def with_shift(config: SolverConfig, shift: float | None) -> SolverConfig:
    """The `shift` option: replaces flow_shift, like `UniPCMultistepScheduler.from_config(cfg, flow_shift=shift)`."""
    return config if shift is None else replace(config, flow_shift=float(shift))


def read_scheduler_config(path: str | Path) -> SolverConfig:
    """A diffusers scheduler_config.json (the file, or a folder holding it); refuses settings we don't implement."""
    p = Path(path)
    if p.is_dir():
        p = p / "scheduler_config.json"
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise FlowcacheError(f"scheduler config {p} does not exist: give a diffusers scheduler_config.json") from None
    except json.JSONDecodeError as e:
        raise FlowcacheError(f"scheduler config {p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise FlowcacheError(f"scheduler config {p} must hold a JSON object")
    for key, value in raw.items():
        if key in _FIXED:
            if value not in _FIXED[key] or type(value) is not type(_FIXED[key][0]):
                allowed = " or ".join(json.dumps(v) for v in _FIXED[key])
                raise FlowcacheError(f"scheduler config {key}={json.dumps(value)} is not supported: use {allowed}")
        elif key not in _OURS and key not in _INERT and not key.startswith("_"):
            raise FlowcacheError(f"scheduler config key {key!r} is not supported: known keys are "
                                 f"{', '.join(sorted(_OURS | set(_FIXED) - {'_class_name'}))}")
    kw = {k: raw[k] for k in _OURS if k in raw}
    if "disable_corrector" in kw:
        if not isinstance(kw["disable_corrector"], list):
            raise FlowcacheError(f"scheduler config disable_corrector={json.dumps(kw['disable_corrector'])} is not "
                                 "supported: use a list of step indices")
        kw["disable_corrector"] = tuple(kw["disable_corrector"])
    if isinstance(kw.get("flow_shift"), int) and not isinstance(kw["flow_shift"], bool):
        kw["flow_shift"] = float(kw["flow_shift"])
    return SolverConfig(**kw)


def _shifted_sigmas(config: SolverConfig, num_steps: int) -> list[float]:
    """The n shifted sigmas before the final one, in float64 as diffusers computes them with numpy."""
    T = config.num_train_timesteps
    start, stop, div = 1.0, 1.0 / T, num_steps  # numpy linspace(1, 1/T, n + 1): start + i * ((stop - start) / n)
    step = (stop - start) / div
    s = [start + i * step for i in range(num_steps)]  # the last point (= stop) is dropped by [:-1]
    shift = config.flow_shift
    s = [shift * x / (1 + (shift - 1) * x) for x in s]
    if abs(s[0] - 1) < 1e-6:  # diffusers: keeps log(alpha) finite in the first updates
        s[0] -= 1e-6
    return s


def schedule(config: SolverConfig, num_steps: int) -> tuple[Tensor, Tensor]:
    """(timesteps int64 (n,), sigmas float32 (n + 1,)): diffusers' `set_timesteps(n)` for this config."""
    check_steps(config, num_steps)
    s = _shifted_sigmas(config, num_steps)
    T = config.num_train_timesteps
    timesteps = torch.tensor([int(x * T) for x in s], dtype=torch.int64)  # float64 -> int64 truncates, as numpy
    last = 0.0 if config.final_sigmas_type == "zero" else s[-1]
    sigmas = torch.tensor(s + [last], dtype=torch.float64).to(torch.float32)  # numpy float64 -> float32 rounding
    return timesteps, sigmas


def check_steps(config: SolverConfig, num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise FlowcacheError(f"num_steps={num_steps!r} is not supported: use an integer >= 1")
    if num_steps < 2:
        return
    s = _shifted_sigmas(config, num_steps)
    T = config.num_train_timesteps
    if int(s[0] * T) == int(s[1] * T):
        n = num_steps
        while n > 2 and int(_shifted_sigmas(config, n)[0] * T) == int(_shifted_sigmas(config, n)[1] * T):
            n -= 1
        raise FlowcacheError(
            f"num_steps={num_steps} with shift {config.flow_shift:g} repeats the first timestep "
            f"({int(s[0] * T)}), where diffusers' UniPC fails: use at most {n} steps or a smaller shift")


def flow_t(sigmas: Tensor) -> list[float]:
    """Our noise level t = 1 - sigma for each sigma (0 = noise, 1 = clean), as Python floats."""
    return [1.0 - float(s) for s in sigmas]


@dataclass
class BlockState:
    """UniPC's history for one causal block (diffusers keeps one per frame; a block's frames are identical)."""

    step_index: int = 0  # index of the next step (the first step looks up timesteps[0], which is index 0)
    model_outputs: list[Tensor | None] = field(default_factory=list)  # x0 predictions, oldest first
    lower_order_nums: int = 0
    last_sample: Tensor | None = None  # the sample before the last predictor (the corrector's x)
    this_order: int = 1


class UniPC:
    """Flow-matching UniPC over per-block states. `step` is the whole of diffusers' `step` for one block."""

    def __init__(self, config: SolverConfig, num_steps: int):
        self.config = config
        self.timesteps, self.sigmas = schedule(config, num_steps)  # (n,) int64, (n + 1,) float32 on CPU
        self.num_steps = num_steps

    def new_state(self) -> BlockState:
        return BlockState(model_outputs=[None] * self.config.solver_order)

    def _alpha_sigma(self, i: int, device: torch.device) -> tuple[Tensor, Tensor]:
        s = self.sigmas[i].to(device)  # 0-d float32, on the sample's device like diffusers' scalar math
        return 1 - s, s

    def _lambda(self, i: int, device: torch.device) -> Tensor:
        a, s = self._alpha_sigma(i, device)
        return torch.log(a) - torch.log(s)

    def _coefficients(self, hh: Tensor, rks: list[Tensor], order: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(h_phi_1, B_h, R, b) of UniPC's B(h) update: R is the order x order Vandermonde of rks, b its rhs."""
        h_phi_1 = torch.expm1(hh)  # e^hh - 1
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        rk = torch.stack(rks)
        R, b = [], []
        for i in range(1, order + 1):
            R.append(torch.pow(rk, i - 1))
            b.append(h_phi_k * factorial / B_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return h_phi_1, B_h, torch.stack(R), torch.stack(b)

    def _predict(self, st: BlockState, x: Tensor, order: int) -> Tensor:
        """UniP: x at sigma[i] -> x at sigma[i + 1] from the x0 history (newest last)."""
        i, dev = st.step_index, x.device
        alpha_t, sigma_t = self._alpha_sigma(i + 1, dev)
        _, sigma_s0 = self._alpha_sigma(i, dev)
        lambda_s0 = self._lambda(i, dev)
        h = torch.log(alpha_t) - torch.log(sigma_t) - lambda_s0
        m0 = st.model_outputs[-1]
        rks, D1 = [], None
        if order == 2:  # one older x0: its finite difference
            rk = (self._lambda(i - 1, dev) - lambda_s0) / h
            rks.append(rk)
            D1 = (st.model_outputs[-2] - m0) / rk
        rks.append(torch.ones((), device=dev))
        hh = -h  # predict_x0
        h_phi_1, B_h, _, _ = self._coefficients(hh, rks, order)
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        # order 2 uses rho_p = 1/2 (diffusers' "simplified version"); its einsum over one term is this product
        pred_res = 0.5 * D1 if D1 is not None else 0
        return (x_t_ - alpha_t * B_h * pred_res).to(x.dtype)

    def _correct(self, st: BlockState, m_t: Tensor, x_t: Tensor, order: int) -> Tensor:
        """UniC: refines x_t (the last predictor's output, at sigma[i]) with its own x0 prediction m_t."""
        i, dev, x = st.step_index, x_t.device, st.last_sample
        alpha_t, sigma_t = self._alpha_sigma(i, dev)
        _, sigma_s0 = self._alpha_sigma(i - 1, dev)
        lambda_s0 = self._lambda(i - 1, dev)
        h = torch.log(alpha_t) - torch.log(sigma_t) - lambda_s0
        m0 = st.model_outputs[-1]
        rks, D1 = [], None
        if order == 2:
            rk = (self._lambda(i - 2, dev) - lambda_s0) / h
            rks.append(rk)
            D1 = (st.model_outputs[-2] - m0) / rk
        rks.append(torch.ones((), device=dev))
        hh = -h
        h_phi_1, B_h, R, b = self._coefficients(hh, rks, order)
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=dev) * 0.5
        else:
            rhos_c = torch.linalg.solve(R, b).to(dev).to(x.dtype)
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        corr_res = rhos_c[0] * D1 if D1 is not None else 0  # einsum over one history term
        return (x_t_ - alpha_t * B_h * (corr_res + rhos_c[-1] * (m_t - m0))).to(x.dtype)

    def step(self, st: BlockState, model_output: Tensor, sample: Tensor) -> Tensor:
        """One update of one block: model_output (the DiT's flow prediction, noise - x0) and sample, any shape
        (e.g. (C, frames, h, w)); returns the sample at the next sigma. Mutates `st`, which may keep `sample`
        itself (see the module doc: write the result into the block's latents, as the pipelines do)."""
        cfg = self.config
        if st.step_index >= self.num_steps:
            raise IndexError(f"block stepped past its {self.num_steps} steps")
        # x0 = x - sigma * v, with the 0-d CPU sigma: the product keeps model_output's dtype, as in diffusers
        m = sample - self.sigmas[st.step_index] * model_output
        if st.step_index > 0 and (st.step_index - 1) not in cfg.disable_corrector and st.last_sample is not None:
            sample = self._correct(st, m, sample, st.this_order)
        st.model_outputs = st.model_outputs[1:] + [m]
        order = min(cfg.solver_order, self.num_steps - st.step_index) if cfg.lower_order_final else cfg.solver_order
        st.this_order = min(order, st.lower_order_nums + 1)  # warm up: order k needs k - 1 older x0
        st.last_sample = sample
        out = self._predict(st, sample, st.this_order)
        st.lower_order_nums = min(st.lower_order_nums + 1, cfg.solver_order)
        st.step_index += 1
        return out
