"""Reverse-process samplers for an x0-predicting model.

A sampler owns the list of model timesteps it visits (descending) and turns the
model's x0 prediction at one of them into the next, less noisy state. Noise is
passed in by the caller so every sample can draw from its own generator.
"""

from __future__ import annotations

import numpy as np
import torch

from .diffusion import Schedule, respaced_schedule, respaced_timesteps

SAMPLERS = ("ddpm", "ddim", "dpm++2m")


def log_snr_timesteps(schedule: Schedule, num_steps: int) -> np.ndarray:
    """``num_steps`` training timesteps (ascending, 0 and T-1 included) evenly spaced in
    lambda = log(alpha / sigma), the variable the DPM-Solver steps in.

    Evenly spaced t leaves a few large steps in lambda near t = 0, where a linear schedule's
    noise vanishes quickly; even lambda steps keep every step's h alike. Nearby timesteps
    that round to the same integer are merged, so fewer steps can result for large K.
    """
    if not 1 <= num_steps <= schedule.num_steps:
        raise ValueError(f"the number of sampling steps must lie in 1..{schedule.num_steps}; got {num_steps}")
    abar = schedule.alphas_cumprod
    lam = 0.5 * (np.log(abar) - np.log1p(-abar))  # decreasing in t
    if num_steps == 1:
        return np.array([schedule.num_steps - 1], dtype=np.int64)
    wanted = np.linspace(lam[-1], lam[0], num_steps)
    # lam is decreasing: search on the reversed (increasing) array.
    position = np.searchsorted(lam[::-1], wanted)
    position = np.clip(position, 1, len(lam) - 1)
    below, above = lam[::-1][position - 1], lam[::-1][position]
    position = np.where(np.abs(wanted - below) <= np.abs(above - wanted), position - 1, position)
    steps = (len(lam) - 1 - position).astype(np.int64)
    return np.unique(np.concatenate([[0, schedule.num_steps - 1], steps]))


class Sampler:
    """DDPM ancestral sampling (respaced when K < T), DDIM with a given eta, or DPM-Solver++(2M).

    "dpm++2m" is the second-order multistep solver of the diffusion ODE in its data-prediction
    form (Lu et al., "DPM-Solver++", 2022, Algorithm 2): with alpha_t = sqrt(abar_t),
    sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and h = lambda_s - lambda_t
    for a step from t to s,

        x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D,

    where D is the x0 prediction at t for the first step (which is deterministic DDIM), and
    afterwards D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev with r = h_prev / h, extrapolating from the
    previous step's prediction; the step onto the last kept timestep is first order, and at
    that timestep the sampler returns the prediction.
    It is deterministic; the sampler keeps the previous prediction between calls of one chain.

    Args:
        schedule: the training schedule (T steps).
        kind: "ddpm", "ddim" or "dpm++2m".
        num_steps: K, the number of denoising steps (1..T).
        eta: DDIM stochasticity; 0 is deterministic, 1 reproduces the DDPM posterior.
    """

    def __init__(self, schedule: Schedule, kind: str, num_steps: int, eta: float = 0.0):
        if kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
        if eta < 0:
            raise ValueError("eta must be non-negative")
        self.kind = kind
        self.eta = float(eta)
        self.base = schedule
        if kind == "dpm++2m":
            self.kept = log_snr_timesteps(schedule, num_steps)
        else:
            self.kept = respaced_timesteps(schedule.num_steps, num_steps)
        self.respaced = respaced_schedule(schedule, self.kept)
        abar = schedule.alphas_cumprod[self.kept]
        self._alpha = np.sqrt(abar)
        self._sigma = np.sqrt(1.0 - abar)
        self._lambda = np.log(self._alpha) - np.log(self._sigma)
        self._previous: tuple[int, torch.Tensor] | None = None

    @property
    def num_steps(self) -> int:
        return len(self.kept)

    def indices(self) -> list[int]:
        """Indices into the kept timesteps, from the noisiest to the last."""
        return list(range(self.num_steps - 1, -1, -1))

    def model_timestep(self, index: int) -> int:
        """The training timestep the network is evaluated at for step ``index``."""
        return int(self.kept[index])

    def needs_noise(self, index: int) -> bool:
        if index == 0 or self.kind == "dpm++2m":
            return False
        return self.kind == "ddpm" or self.eta > 0

    def step(self, xt: torch.Tensor, index: int, x0: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One reverse step from kept step ``index`` to ``index - 1`` (to x_0 when index is 0).

        xt, x0, noise: (B, C, X, Y, Z). Returns a tensor of the same shape.
        """
        if self.kind == "ddpm":
            return self._ddpm_step(xt, index, x0, noise)
        if self.kind == "dpm++2m":
            return self._dpm_solver_step(xt, index, x0)
        return self._ddim_step(xt, index, x0, noise)

    def _dpm_solver_step(self, xt, index, x0):
        if index == self.num_steps - 1:
            self._previous = None  # a new chain starts at the noisiest step
        previous, self._previous = self._previous, (index, x0)
        if index == 0:
            return x0
        target = index - 1
        h = self._lambda[target] - self._lambda[index]
        estimate = x0
        # The step onto the last kept timestep stays first order: there lambda jumps (t = 0 is
        # almost noise-free), h_prev / h becomes small and the extrapolation would overshoot.
        if target > 0 and previous is not None and previous[0] == index + 1:
            ratio = (self._lambda[index] - self._lambda[index + 1]) / h
            estimate = (1.0 + 0.5 / ratio) * x0 - (0.5 / ratio) * previous[1]
        return float(self._sigma[target] / self._sigma[index]) * xt - float(
            self._alpha[target] * np.expm1(-h)
        ) * estimate

    def _ddpm_step(self, xt, index, x0, noise):
        s = self.respaced
        mean = float(s.posterior_mean_coef_x0[index]) * x0 + float(s.posterior_mean_coef_xt[index]) * xt
        if index == 0:
            return mean
        return mean + float(np.sqrt(s.posterior_variance[index])) * noise

    def _ddim_step(self, xt, index, x0, noise):
        abar_t = float(self.base.alphas_cumprod[self.kept[index]])
        abar_prev = float(self.base.alphas_cumprod[self.kept[index - 1]]) if index > 0 else 1.0
        eps = (xt - np.sqrt(abar_t) * x0) / np.sqrt(1.0 - abar_t)
        sigma = self.eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * np.sqrt(1.0 - abar_t / abar_prev)
        out = np.sqrt(abar_prev) * x0 + np.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out
