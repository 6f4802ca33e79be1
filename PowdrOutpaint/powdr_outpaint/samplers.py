"""Reverse-process samplers for an x0-predicting model.

A sampler owns the list of model timesteps it visits (descending) and turns the
model's x0 prediction at one of them into the next, less noisy state. Noise is
passed in by the caller so every sample can draw from its own generator.
"""

from __future__ import annotations

import numpy as np
import torch

from .diffusion import Schedule, respaced_schedule, respaced_timesteps

SAMPLERS = ("ddpm", "ddim")


class Sampler:
    """DDPM ancestral sampling (respaced when K < T) or DDIM with a given eta.

    Args:
        schedule: the training schedule (T steps).
        kind: "ddpm" or "ddim".
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
        self.kept = respaced_timesteps(schedule.num_steps, num_steps)
        self.respaced = respaced_schedule(schedule, self.kept)

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
        if index == 0:
            return False
        return self.kind == "ddpm" or self.eta > 0

    def step(self, xt: torch.Tensor, index: int, x0: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """One reverse step from kept step ``index`` to ``index - 1`` (to x_0 when index is 0).

        xt, x0, noise: (B, C, X, Y, Z). Returns a tensor of the same shape.
        """
        if self.kind == "ddpm":
            return self._ddpm_step(xt, index, x0, noise)
        return self._ddim_step(xt, index, x0, noise)

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
