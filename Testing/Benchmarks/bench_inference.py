"""Seconds per denoising step, peak memory and samples per minute, side by side.

Every configuration runs in its own process (peak RSS is per process), with the same thread
count; the configurations alternate, round after round (fp32, bf16, fp32, bf16, ...), so slow
phases of a shared machine hit both alike, and the table reports the median over the rounds
of each process's own median step time. Usage::

    python Testing/Benchmarks/bench_inference.py --preset demo --shapes 64x64x48 --rounds 3
    python Testing/Benchmarks/bench_inference.py --preset paper --shapes 128x128x96 --modes plain,fp32,bf16

Modes: ``fp32`` and ``bf16`` are what ``sample`` runs (inference mode, channels-last-3d) at
that precision; ``plain`` is the network run the way reference training code samples
(autograd enabled, contiguous NCDHW tensors, fp32); ``compiled`` adds torch.compile to fp32,
its compile time reported apart. Samples per minute assume ``--steps`` network calls per
sample (20: the default of ``sample``, dpm++2m; a cascade's refine stage comes on top). Run it on an otherwise idle machine and
say the date and the machine with the figures.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import sys
import time

MODES = {
    "plain": ["--plain", "--precision", "fp32"],
    "fp32": ["--precision", "fp32"],
    "bf16": ["--precision", "bf16"],
    "compiled": ["--precision", "fp32", "--compile"],
}


def run(preset: str, shape: list[int], threads: int, repeats: int, mode: str, device: str) -> dict:
    command = [
        sys.executable, "-m", "powdr_outpaint", "bench", "--preset", preset,
        "--image-shape", *map(str, shape), "--threads", str(threads), "--repeats", str(repeats),
        "--device", device, *MODES[mode],
    ]
    started = time.perf_counter()
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    seconds = float(re.search(r"s per step\s+([\d.]+) median", output).group(1))
    memory = re.search(r"peak memory\s+([\d.]+) GiB", output)
    parameters = re.search(r"parameters\s+([\d,]+)", output).group(1)
    return {"seconds": seconds, "memory": float(memory.group(1)) if memory else float("nan"),
            "parameters": parameters, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per mode, alternating (at least 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default="fp32,bf16")
    parser.add_argument("--shapes", default="64x64x48")
    parser.add_argument("--steps", type=int, default=20, help="network calls per sample")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}  "
          f"preset {args.preset}, device {args.device}, {args.threads} threads, {args.rounds} alternating "
          f"rounds of {args.repeats} steps per mode")
    print(f"{'image':>12} {'mode':>9} {'s/step':>8} {'per round':>24} {'peak GiB':>9} {'samples/min':>12}")
    for text in args.shapes.split(","):
        shape = [int(v) for v in text.split("x")]
        results: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                results[mode].append(run(args.preset, shape, args.threads, args.repeats, mode, args.device))
        medians = {}
        for mode in modes:
            times = [r["seconds"] for r in results[mode]]
            medians[mode] = statistics.median(times)
            memory = statistics.median(r["memory"] for r in results[mode])
            per_round = " ".join(f"{t:.3f}" for t in times)
            print(f"{text:>12} {mode:>9} {medians[mode]:8.3f} {per_round:>24} {memory:9.2f} "
                  f"{60.0 / (medians[mode] * args.steps):12.2f}", flush=True)
        if "fp32" in medians and "bf16" in medians:
            print(f"{text:>12} bf16 / fp32 time ratio {medians['bf16'] / medians['fp32']:.2f}")
        if "compiled" in medians:
            compile_cost = statistics.median(r["wall"] for r in results["compiled"]) - statistics.median(
                r["wall"] for r in results.get("fp32", results["compiled"]))
            print(f"{text:>12} torch.compile: about {compile_cost:.0f} s more per process (compilation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
