"""Seconds per denoising step and peak memory: plain eager execution vs the engine's.

Each configuration runs in its own process (peak RSS is per process), with the same
thread count, and the table reports medians side by side. Usage::

    python Testing/Benchmarks/bench_inference.py --threads 2 --repeats 3

The plain row is the network run the way reference training code samples: autograd
enabled, contiguous NCDHW tensors, fp32. The engine row is what ``sample`` uses:
inference mode and the channels-last-3d layout (plus bf16 autocast on CUDA).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys


def run(preset: str, shape: list[int], threads: int, repeats: int, plain: bool, device: str, compile: bool) -> dict:
    command = [
        sys.executable, "-m", "powdr_outpaint", "bench", "--preset", preset,
        "--image-shape", *map(str, shape), "--threads", str(threads), "--repeats", str(repeats),
        "--device", device,
    ]
    if plain:
        command.append("--plain")
    if compile:
        command.append("--compile")
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    seconds = float(re.search(r"s per step\s+([\d.]+) median", output).group(1))
    memory = float(re.search(r"peak memory\s+([\d.]+) GiB", output).group(1))
    parameters = re.search(r"parameters\s+([\d,]+)", output).group(1)
    return {"seconds": seconds, "memory": memory, "parameters": parameters}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--shapes", default="64x64x64,128x128x96")
    args = parser.parse_args()
    print(f"preset {args.preset}, device {args.device}, {args.threads} threads, median of {args.repeats} steps")
    print(f"{'image':>12} {'mode':>9} {'s/step':>8} {'peak GiB':>9} {'parameters':>12}")
    for text in args.shapes.split(","):
        shape = [int(v) for v in text.split("x")]
        modes = [("plain", True, False), ("engine", False, False)]
        if args.compile:
            modes.append(("compiled", False, True))
        rows = {}
        for name, plain, compile in modes:
            rows[name] = run(args.preset, shape, args.threads, args.repeats, plain, args.device, compile)
            r = rows[name]
            print(f"{text:>12} {name:>9} {r['seconds']:8.2f} {r['memory']:9.2f} {r['parameters']:>12}", flush=True)
        ratio = rows["engine"]["seconds"] / rows["plain"]["seconds"]
        print(f"{text:>12} engine/plain time ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
