"""Running the network fast: device choice, memory layout, mixed precision.

On every device the network runs under ``torch.inference_mode`` in the
channels-last-3d layout, which lets oneDNN (CPU) and cuDNN (GPU) pick their
fastest 3-D convolutions; on CUDA it also runs in bfloat16 autocast. The sampler
state stays float32 in any case.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..errors import PowdrError
from .checkpoint import GUIDED_BANDS


def require_numpy_bridge() -> None:
    """Stop with one sentence when this torch cannot exchange arrays with this NumPy.

    torch wheels before 2.3 were built for NumPy 1.x: beside NumPy 2 they import, but
    ``torch.from_numpy`` fails with "Numpy is not available" in the middle of a run.
    """
    try:
        torch.from_numpy(np.zeros(1, dtype=np.float32))
    except RuntimeError as error:
        raise PowdrError(
            f"PyTorch {torch.__version__} cannot use NumPy {np.__version__} ({error}); "
            "install torch 2.3 or newer, or numpy<2"
        ) from None


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is an error.

    Every command that runs the network starts here, so the NumPy bridge is checked here too.
    """
    require_numpy_bridge()
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PowdrError("--device cuda was requested but PyTorch sees no CUDA GPU (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise PowdrError(f"unknown device {name!r}; use auto, cpu or cuda")


def _cpu_vendor_and_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    """The first CPU's vendor and flags from /proc/cpuinfo (or ``cpuinfo``); empty where unreadable."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return "", set()
    vendor, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 itself (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated."""
    _, flags = _cpu_vendor_and_flags(cpuinfo)
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def emulated_bf16_warning(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """A sentence for the user when bf16 was asked for on a CPU that only emulates it, else None.

    On a 2-core AVX2-only AMD EPYC (Zen 2, 2026-12-01) a bf16 sampling test ran for over
    10 minutes where fp32 took about one.
    """
    if precision != "bf16" or device.type != "cpu" or cpu_has_native_bf16(cpuinfo):
        return None
    return ("warning: this CPU has no native bf16 (no AVX512-BF16 or AMX), so --precision bf16 is emulated "
            "and many times slower than fp32; --precision auto chooses fp32 here")


def cpu_prefers_bf16(cpuinfo: str | None = None) -> bool:
    """Whether bf16 autocast runs this project's networks faster than fp32 on this CPU.

    Read from /proc/cpuinfo (vendor and flags); measured, not assumed from the instruction set:
    - AMD EPYC with AVX512-BF16 (Zen 4): bf16 1.5x faster per training step and 2-2.4x per
      denoising step than fp32 (2026-11, 2 cores, torch 2.13);
    - Intel Xeon with AVX512-BF16 and AVX512-FP16 but no AMX exposed (a virtual machine,
      2026-12-01, 2 cores, torch 2.13, Testing/Benchmarks/bench_inference.py): bf16 1.07x
      slower per step for the demo network and 1.45x slower for the paper network;
    - AMX (amx_bf16) is the matrix unit oneDNN uses for bf16 on Intel and is taken as faster.
    Everywhere else (no flags, macOS, Windows) it answers False and "auto" stays fp32.
    """
    vendor, flags = _cpu_vendor_and_flags(cpuinfo)
    if "amx_bf16" in flags:
        return True
    return "avx512_bf16" in flags and vendor == "AuthenticAMD"


def auto_precision(device: torch.device) -> str:
    """"bf16" on CUDA and on CPUs where it was measured faster (see :func:`cpu_prefers_bf16`); else "fp32"."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_prefers_bf16()):
        return "bf16"
    return "fp32"


class FastForward:
    """Callable wrapper: ``FastForward(net, device)(x, t)`` -> float32 prediction.

    Args:
        network: the model (moved to ``device``, put in eval mode, channels-last-3d).
        device: where to run.
        precision: "auto" (see :func:`auto_precision`), "fp32" or "bf16".
        compile: wrap the network in ``torch.compile`` (worth it for long runs only).
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, precision: str = "auto", compile: bool = False):
        if precision not in ("auto", "fp32", "bf16"):
            raise PowdrError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
        if precision == "auto":
            precision = auto_precision(device)
        self.device = device
        self.precision = precision
        self.network = network.eval().to(device=device, memory_format=torch.channels_last_3d)
        self._call = torch.compile(self.network) if compile else self.network

    @staticmethod
    def resolve(precision: str, device: torch.device) -> str:
        """The precision ``precision`` means on ``device`` ("auto" resolved)."""
        return auto_precision(device) if precision == "auto" else precision

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, memory_format=torch.channels_last_3d)
        with torch.inference_mode(), self._autocast():
            out = self._call(x, t.to(self.device))
        return out.float().contiguous()


class AutoGuidance:
    """``AutoGuidance(main, guide, weight, from_timestep)(x, t)``: guide + weight * (main - guide), of x0,
    on the steps with t >= ``from_timestep``; below it, main alone.

    Autoguidance (Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself",
    NeurIPS 2024): a weaker model of the same task (here an earlier, less trained first stage)
    errs the same way as the main one, only more; stepping past the main prediction, away from
    the weaker one, undoes part of that error. Weight 1 is the main network alone. On the nearly
    clean last steps both networks hand their input back, nearly, and their difference is mostly
    the guide's extra smoothing: stepping past it there sharpens noise into blotches, so the guide
    can be left out of those steps (which also saves its network call).

    ``bands`` "detail" guides only the seven detail subbands of each sequence and keeps the main
    network's low-pass band (the first S of the 8 S channels of x0): the two networks also differ
    in the level they give the whole brain, and stepping past that difference brightens or darkens
    whole regions instead of adding structure.
    """

    def __init__(self, main, guide, weight: float, from_timestep: int = 0, bands: str = "all"):
        if bands not in GUIDED_BANDS:
            raise ValueError(f"unknown guided subbands {bands!r}")
        self.main, self.guide, self.weight = main, guide, float(weight)
        self.from_timestep = int(from_timestep)
        self.bands = bands

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        guided = t >= self.from_timestep
        if not bool(guided.any()):
            return self.main(x, t)
        main = self.main(x, t)
        guide = self.guide(x, t)
        out = guide + self.weight * (main - guide)
        if self.bands == "detail":
            low_pass = main.shape[1] // 8
            out[:, :low_pass] = main[:, :low_pass]
        if bool(guided.all()):
            return out
        return torch.where(guided.reshape(-1, *([1] * (x.dim() - 1))), out, main)


class ExpertRouting:
    """``ExpertRouting(main, expert, below)(x, t)``: the expert's prediction where t < below, else main's.

    A first stage with an expert for its last steps: the expert was trained only on timesteps
    below ``below`` (the nearly clean end of the chain, where the detail is drawn) and stands in
    for the whole-range network there. Both are callables (x (B, C, ...), t (B,)) -> x0.

    ``merge`` (main's x0, expert's x0) -> x0, when given, decides how the two meet on the
    expert's steps; main then runs on those steps too (one more network call per step).
    """

    def __init__(self, main, expert, below: int, merge=None):
        self.main, self.expert, self.below, self.merge = main, expert, int(below), merge

    def _late(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        drawn = self.expert(x, t)
        return drawn if self.merge is None else self.merge(self.main(x, t), drawn)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        late = t < self.below
        if bool(late.all()):
            return self._late(x, t)
        if not bool(late.any()):
            return self.main(x, t)
        out = self.main(x[~late], t[~late])
        merged = torch.empty((x.shape[0], *out.shape[1:]), dtype=out.dtype, device=out.device)
        merged[~late] = out
        merged[late] = self._late(x[late], t[late])
        return merged
