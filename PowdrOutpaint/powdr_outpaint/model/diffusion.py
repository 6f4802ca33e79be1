"""Gaussian diffusion in the wavelet domain: schedule, forward process, x0 loss.

All schedule arrays are float64 NumPy vectors of length T indexed by timestep
t = 0..T-1 (t = 0 is the least noisy step). Tensors are gathered per batch element
and broadcast over (C, X, Y, Z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule (plain values, stored in checkpoints)."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    schedule: str = "linear"

    def validate(self) -> None:
        if self.schedule != "linear":
            raise ValueError(f"unknown noise schedule {self.schedule!r} (only 'linear' is supported)")
        if self.timesteps < 2:
            raise ValueError("the diffusion needs at least 2 timesteps")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError("betas must satisfy 0 < beta_start < beta_end < 1")


def linear_betas(config: DiffusionConfig) -> np.ndarray:
    """The linear beta schedule, float64 (T,)."""
    config.validate()
    return np.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=np.float64)


def gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] for each batch element, shaped to broadcast against ``like`` (B, ...)."""
    out = torch.as_tensor(values, dtype=torch.float64, device=t.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1)))


class Schedule:
    """Closed-form quantities of a discrete diffusion defined by its betas.

    Attributes (float64, shape (K,)): betas, alphas_cumprod, alphas_cumprod_prev,
    posterior_variance, posterior_mean_coef_x0, posterior_mean_coef_xt.
    """

    def __init__(self, betas: np.ndarray):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or np.any(betas <= 0) or np.any(betas > 1):
            raise ValueError("betas must be a vector with values in (0, 1]")
        self.betas = betas
        self.num_steps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 * x_0 + coef_xt * x_t, posterior_variance).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance at t = 0 is 0; the log uses the next value so it stays finite.
        if self.num_steps > 1:
            self.posterior_log_variance = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:])
            )
        else:  # a one-step chain never adds noise; keep the value finite all the same
            self.posterior_log_variance = np.log(betas)
        self.posterior_mean_coef_x0 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> "Schedule":
        return cls(linear_betas(config))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return gather(self.sqrt_alphas_cumprod, t, x0) * x0 + gather(
            self.sqrt_one_minus_alphas_cumprod, t, x0
        ) * noise

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0)."""
        mean = gather(self.posterior_mean_coef_x0, t, xt) * x0 + gather(self.posterior_mean_coef_xt, t, xt) * xt
        return mean, gather(self.posterior_variance, t, xt)

    def predict_noise(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise implied by x_t and a prediction of x_0."""
        return (xt - gather(self.sqrt_alphas_cumprod, t, xt) * x0) / gather(
            self.sqrt_one_minus_alphas_cumprod, t, xt
        )


def respaced_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """``num_steps`` evenly spaced timesteps of 0..T-1, always including 0 and T-1 (ascending)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"the number of sampling steps must lie in 1..{num_timesteps}; got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    steps = np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int64)
    return np.unique(steps)


def respaced_schedule(base: Schedule, timesteps: np.ndarray) -> Schedule:
    """The schedule of a diffusion that visits only ``timesteps`` (ascending).

    The kept cumulative products are unchanged and the betas are rebuilt from their
    ratios, so the marginals q(x_t | x_0) at the kept steps are those of the full
    process and ancestral sampling stays consistent with training.
    """
    kept = base.alphas_cumprod[timesteps]
    previous = np.append(1.0, kept[:-1])
    return Schedule(1.0 - kept / previous)


def x0_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between predicted and true x_0 in the wavelet domain.

    ``weights`` (B, C) weigh each item's channels (see ``low_noise_weights``); None: all 1.
    """
    error = (prediction.float() - target.float()) ** 2
    if weights is None:
        return torch.mean(error)
    return torch.mean(error * weights.reshape(*weights.shape, *([1] * (error.dim() - 2))))


def low_noise_weights(c_out: torch.Tensor, t: torch.Tensor, cap: float) -> torch.Tensor:
    """Loss weights min(1 / c_out(t)^2, cap), (B, C), for a network with the input skip.

    1 / c_out^2 makes the U-Net's own error count alike at every noise level (Karras et al.,
    2022): the x0 error of a nearly clean input is small in absolute terms, so the plain x0
    loss hardly trains the U-Net there. It is 1 at the noisiest timesteps, so those keep
    their weight; the cap bounds it where the input is almost clean.
    """
    return torch.clamp(c_out[t].float() ** -2, max=float(cap))
