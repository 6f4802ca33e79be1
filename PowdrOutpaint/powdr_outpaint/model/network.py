"""Conditional 3-D residual U-Net with self-attention at the coarse levels.

The network maps the concatenation [x_t, c] of the noisy target subbands and the
condition subbands, shape (B, 2 * 8, X, Y, Z) on the half-resolution wavelet grid,
and a batch of integer timesteps (B,) to a prediction of x_0, shape (B, 8, X, Y, Z).
Every spatial size must be divisible by 2 ** (levels - 1).

With ``input_skip`` (the RMS of the data's low-pass and detail subbands) the prediction is
``c_skip(t) * x_t + c_out(t) * F(c_in(t) * x_t, c)``, where F is the U-Net and c_skip, c_out
are the weights of the best linear estimate of x_0 from x_t and c_in gives the U-Net's noisy
input unit RMS (the preconditioning of Karras et al., 2022, written for the
variance-preserving chain). Nearly clean inputs then pass through the skip, and the U-Net
only has to supply what the noise hides; at the noisiest timesteps c_out -> 1, c_skip -> 0
and c_in -> 1, so F is the x_0 prediction as before. Without it the U-Net has to rebuild a
nearly clean x_t through all its levels, and an x_0 loss weighs those timesteps little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import DiffusionConfig, Schedule
from .transforms import SUBBANDS


@dataclass(frozen=True)
class NetworkConfig:
    """Hyper-parameters of :class:`OutpaintUNet` (plain values, stored in checkpoints)."""

    in_channels: int = 16
    out_channels: int = 8
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (3, 4)
    head_channels: int = 64
    dropout: float = 0.1
    norm_groups: int = 32
    # RMS of the low-pass and of the detail subbands of the training data; () for a plain
    # x0 output (every checkpoint before 2026-12-02).
    input_skip: tuple[float, ...] = ()

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def divisor(self) -> int:
        """Every spatial size of the network input must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def validate(self) -> None:
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("in_channels and out_channels must be positive")
        if self.base_channels < 1 or not self.channel_mult:
            raise ValueError("base_channels must be positive and channel_mult non-empty")
        if any(m < 1 for m in self.channel_mult):
            raise ValueError("channel multipliers must be positive")
        for mult in self.channel_mult:
            if (mult * self.base_channels) % self.norm_groups:
                raise ValueError(
                    f"{mult * self.base_channels} channels are not divisible into "
                    f"{self.norm_groups} normalisation groups"
                )
        if any(not 0 <= lvl < self.levels for lvl in self.attention_levels):
            raise ValueError(f"attention levels must lie in 0..{self.levels - 1}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must lie in [0, 1)")
        if self.num_res_blocks < 1 or self.head_channels < 1:
            raise ValueError("num_res_blocks and head_channels must be positive")
        if self.input_skip and (len(self.input_skip) != 2 or not all(0 < v < 100 for v in self.input_skip)):
            raise ValueError("input_skip must hold two positive RMS values (low-pass, detail subbands)")


def skip_weights(
    config: NetworkConfig, diffusion: DiffusionConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """c_skip, c_out and c_in of every timestep and output channel, float32 (T, out_channels) each.

    For x_t = sqrt(a) x0 + sqrt(1 - a) eps and x0 of RMS s per channel: c_skip =
    sqrt(a) s^2 / (a s^2 + 1 - a), the linear estimate's weight, and c_out =
    sqrt(1 - a) / sqrt(a s^2 + 1 - a), which keeps F's target at the data's own scale
    at every t (the residual's RMS divided by s) and makes c_out 1 where x_t is pure noise;
    c_in = 1 / sqrt(a s^2 + 1 - a) scales x_t to unit RMS, so the noise of a nearly clean
    input is as visible to the U-Net as at any other level.
    The first out_channels / 8 channels are low-pass subbands, the others detail.
    """
    alpha_bar = torch.from_numpy(Schedule.from_config(diffusion).alphas_cumprod)[:, None]
    sequences = config.out_channels // 8
    rms = torch.full((config.out_channels,), float(config.input_skip[1]), dtype=torch.float64)
    rms[:sequences] = float(config.input_skip[0])
    variance = alpha_bar * rms**2 + (1.0 - alpha_bar)
    c_skip = alpha_bar.sqrt() * rms**2 / variance
    c_out = (1.0 - alpha_bar).sqrt() / variance.sqrt()
    return c_skip.float(), c_out.float(), variance.rsqrt().float()


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, timestep added in between, residual connection."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1)
        # A zero-initialised last convolution makes every block start as the identity,
        # which keeps the deep network trainable from the first step.
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all voxels of a feature map (fused SDPA kernel)."""

    def __init__(self, channels: int, head_channels: int, groups: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = nn.Conv3d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, -1)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (B, heads, N, d)
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, *spatial)
        return x + self.proj(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.ModuleList):
    """A sequence of blocks that all receive the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, emb)
        return x


class OutpaintUNet(nn.Module):
    """x0-predicting conditional U-Net; see the module docstring for shapes."""

    def __init__(self, config: NetworkConfig, diffusion: DiffusionConfig | None = None):
        super().__init__()
        config.validate()
        self.config = config
        if config.input_skip:
            if diffusion is None:
                raise ValueError("a network with input_skip needs the diffusion schedule")
            c_skip, c_out, c_in = skip_weights(config, diffusion)
            # Derived from the configuration, so not stored with the weights.
            self.register_buffer("c_skip", c_skip, persistent=False)
            self.register_buffer("c_out", c_out, persistent=False)
            self.register_buffer("c_in", c_in, persistent=False)
        base = config.base_channels
        emb_dim = 4 * base
        groups = config.norm_groups
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv3d(config.in_channels, base, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [base]
        ch = base
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                blocks = [ResBlock(ch, mult * base, emb_dim, config.dropout, groups)]
                ch = mult * base
                if level in config.attention_levels:
                    blocks.append(AttentionBlock(ch, config.head_channels, groups))
                self.down.append(Stage(blocks))
                skip_channels.append(ch)
            if level < config.levels - 1:
                self.down.append(Stage([Downsample(ch)]))
                skip_channels.append(ch)

        self.middle = Stage(
            [
                ResBlock(ch, ch, emb_dim, config.dropout, groups),
                AttentionBlock(ch, config.head_channels, groups),
                ResBlock(ch, ch, emb_dim, config.dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                blocks = [ResBlock(ch + skip_channels.pop(), mult * base, emb_dim, config.dropout, groups)]
                ch = mult * base
                if level in config.attention_levels:
                    blocks.append(AttentionBlock(ch, config.head_channels, groups))
                if level > 0 and i == config.num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(Stage(blocks))

        self.out_norm = nn.GroupNorm(groups, ch)
        self.out_conv = nn.Conv3d(ch, config.out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, X, Y, Z); timesteps: (B,) integers -> (B, out_channels, X, Y, Z)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.base_channels).to(x.dtype))
        noisy = x[:, : self.config.out_channels]
        shape = (-1, self.config.out_channels, 1, 1, 1)
        if self.config.input_skip:
            scaled = noisy * self.c_in[timesteps].reshape(shape).to(x.dtype)
            h = self.stem(torch.cat([scaled, x[:, self.config.out_channels:]], dim=1))
        else:
            h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        if not self.config.input_skip:
            return out
        # In float32 whatever the autocast: near t = 0 the result is x_t plus a small correction.
        c_skip = self.c_skip[timesteps].reshape(shape)
        c_out = self.c_out[timesteps].reshape(shape)
        return c_skip * noisy.float() + c_out * out.float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rescale_detail_io(weights: dict[str, torch.Tensor], ratio: float, sequences: int = 1) -> dict[str, torch.Tensor]:
    """First-stage weights for detail bands scaled ``ratio`` times larger than they were trained on.

    The stem's weights on the detail channels of x_t and of the condition (channels S..8S-1 of
    each, band-major for S sequences) are divided by ``ratio`` and the output layer's detail
    channels multiplied by it, so on a clean input the network predicts the same image as before.
    Returns a new dictionary; ``weights`` is not changed.
    """
    rescaled = dict(weights)
    stem = weights["stem.weight"].clone()
    bands = SUBBANDS * sequences
    for first in (0, bands):
        stem[:, first + sequences : first + bands] /= ratio
    rescaled["stem.weight"] = stem
    for name in ("out_conv.weight", "out_conv.bias"):
        value = weights[name].clone()
        value[sequences:bands] *= ratio
        rescaled[name] = value
    return rescaled


def add_input_channels(weights: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Weights of the same network taking ``count`` more input channels, appended last, at zero.

    The new channels start with no effect, so the network predicts exactly what it did before
    until training teaches it to use them. Returns a new dictionary; ``weights`` is not changed.
    """
    grown = dict(weights)
    stem = weights["stem.weight"]
    extra = torch.zeros((stem.shape[0], count, *stem.shape[2:]), dtype=stem.dtype)
    grown["stem.weight"] = torch.cat([stem, extra], dim=1)
    return grown
