"""``powdr-outpaint bench``: parameters, seconds per denoising step and peak memory.

One denoising step is one network forward pass on [x_t, c] (16 subbands at half the
image resolution) plus the sampler update. Peak memory is the process's peak
resident set size on the CPU and the peak allocated CUDA memory on a GPU.

The process's peak (:func:`peak_rss_bytes`, also used by ``train``) comes from the first
source that works on this platform, none of which needs a Unix-only module at import:

1. ``resource.getrusage`` (Unix; Linux reports KiB, macOS bytes);
2. ``VmHWM`` in ``/proc/self/status`` (Linux without ``resource``);
3. ``psutil`` (Windows: ``peak_wset``; other systems' psutil has no peak figure);
4. ``GetProcessMemoryInfo`` through ctypes (Windows without psutil).

Where none works the figure is None, and reports print "n/a".
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

from ..errors import PowdrError
from ..model.diffusion import Schedule
from ..model.network import OutpaintUNet, count_parameters
from ..model.presets import PRESETS, get_preset
from ..model.runtime import FastForward, resolve_device
from ..model.samplers import Sampler
from ..model.transforms import clip_in_image_space
from .cli import command_help


def _from_resource() -> int | None:
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _from_proc_status() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as stream:
            for line in stream:
                if line.startswith("VmHWM:"):
                    value, unit = line.split()[1:3]
                    return int(value) * 1024 if unit.lower() == "kb" else None
    except (OSError, ValueError):
        return None
    return None


def _from_psutil() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows only
    return int(peak) if peak else None


def _from_windows_api() -> int | None:
    if os.name != "nt":
        return None
    import ctypes
    from ctypes import wintypes

    class ProcessMemoryCounters(ctypes.Structure):  # PROCESS_MEMORY_COUNTERS (psapi.h)
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("PageFaultCount", wintypes.DWORD),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    kernel32 = ctypes.WinDLL("kernel32")
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    try:
        get_info = kernel32.K32GetProcessMemoryInfo  # Windows 7 and later
    except AttributeError:
        get_info = ctypes.WinDLL("psapi").GetProcessMemoryInfo
    get_info.argtypes = [wintypes.HANDLE, ctypes.POINTER(ProcessMemoryCounters), wintypes.DWORD]
    get_info.restype = wintypes.BOOL
    counters = ProcessMemoryCounters()
    counters.cb = ctypes.sizeof(counters)
    if not get_info(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        return None
    return int(counters.PeakWorkingSetSize) or None


SOURCES: tuple[Callable[[], int | None], ...] = (_from_resource, _from_proc_status, _from_psutil, _from_windows_api)


def peak_rss_bytes() -> int | None:
    """Peak resident set size (peak working set on Windows) of this process in bytes; None if unknown."""
    for source in SOURCES:
        try:
            value = source()
        except Exception:  # noqa: BLE001 - a failing source just means "try the next one"
            value = None
        if value:
            return value
    return None


def peak_rss_gib() -> float | None:
    """:func:`peak_rss_bytes` in GiB (None if unknown)."""
    peak = peak_rss_bytes()
    return None if peak is None else peak / 2**30


def format_gib(value: float | None) -> str:
    """``"1.23 GiB"``, or ``"n/a"`` when the figure could not be measured."""
    return "n/a" if value is None else f"{value:.2f} GiB"


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
) -> dict[str, Any]:
    """Time ``repeats`` denoising steps after ``warmup`` ones; returns a dict of figures.

    ``peak_memory_gib`` is None where the platform offers no way to measure it.

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
    network = OutpaintUNet(config.network, config.diffusion)
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
    parser = subparsers.add_parser("bench", help=command_help("bench"))
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
    print(f"peak memory       {format_gib(figures['peak_memory_gib'])} ({figures['memory_kind']})")
    return 0
