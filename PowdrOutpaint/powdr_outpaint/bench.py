"""``powdr-outpaint bench``: parameters, seconds per denoising step and peak memory.

One denoising step is one network forward pass on [x_t, c] (16 subbands at half the
image resolution) plus the sampler update. Peak memory is the process's peak
resident set size on the CPU and the peak allocated CUDA memory on a GPU.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from .diffusion import Schedule
from .errors import PowdrError
from .network import OutpaintUNet, count_parameters
from .presets import PRESETS, get_preset
from .runtime import FastForward, resolve_device
from .samplers import Sampler
from .transforms import clip_in_image_space


def peak_rss_gib() -> float:
    """Peak resident set size of this process in GiB (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def measure(
    preset: str,
    image_shape: tuple[int, int, int],
    device: str = "auto",
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    precision: str = "auto",
    optimised: bool = True,
    compile: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Time ``repeats`` denoising steps after ``warmup`` ones; returns a dict of figures.

    ``optimised=False`` runs the plain eager network (autograd on, contiguous layout,
    fp32), the way reference training code samples, for comparison.
    """
    if any(s % 2 for s in image_shape):
        raise PowdrError("--image-shape must be even along every axis")
    config = get_preset(preset)
    divisor = 2 * config.network.divisor
    if any(s % divisor for s in image_shape):
        raise PowdrError(f"the {preset} network needs image sides divisible by {divisor}; got {image_shape}")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    network = OutpaintUNet(config.network)
    parameters = count_parameters(network)
    sampler = Sampler(Schedule.from_config(config.diffusion), "ddpm", 1000)
    half = tuple(s // 2 for s in image_shape)
    x = torch.randn(batch_size, 8, *half, device=torch_device)
    condition = torch.randn(batch_size, 8, *half, device=torch_device)
    if optimised:
        forward = FastForward(network, torch_device, precision, compile=compile)
    else:
        network.to(torch_device).eval()

        def forward(inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return network(inputs, t).detach()

    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    times = []
    for i in range(warmup + repeats):
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        started = time.perf_counter()
        t = torch.full((batch_size,), 999 - i, device=torch_device, dtype=torch.long)
        x0 = forward(torch.cat([x, condition], dim=1), t)
        x0 = clip_in_image_space(x0, 3.0)
        x = sampler.step(x, 999 - i, x0, torch.randn_like(x)).detach()
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    peak = (
        torch.cuda.max_memory_allocated(torch_device) / 2**30 if torch_device.type == "cuda" else peak_rss_gib()
    )
    return {
        "preset": preset,
        "image_shape": list(image_shape),
        "device": str(torch_device),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "parameters": parameters,
        "median_s_per_step": statistics.median(times),
        "min_s_per_step": min(times),
        "peak_memory_gib": peak,
        "memory_kind": "cuda_max_allocated" if torch_device.type == "cuda" else "process_peak_rss",
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="time one denoising step of a preset's network")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--image-shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(128, 128, 96))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--plain", action="store_true", help="plain eager execution, for comparison")
    parser.add_argument("--compile", action="store_true", help="use torch.compile")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = measure(
        args.preset,
        tuple(args.image_shape),
        device=args.device,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        precision=args.precision,
        optimised=not args.plain,
        compile=args.compile,
    )
    print(f"preset            {figures['preset']}")
    print(f"image shape       {' x '.join(map(str, figures['image_shape']))} (batch {figures['batch_size']})")
    print(f"device            {figures['device']} ({figures['threads']} CPU threads)")
    print(f"parameters        {figures['parameters']:,} ({figures['parameters'] / 1e6:.1f} M)")
    print(f"s per step        {figures['median_s_per_step']:.3f} median, {figures['min_s_per_step']:.3f} min")
    print(f"peak memory       {figures['peak_memory_gib']:.2f} GiB ({figures['memory_kind']})")
    return 0
