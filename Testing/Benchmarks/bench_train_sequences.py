"""What training several sequences costs against one: seconds per iteration and peak memory.

Each configuration (``--modality t1`` and ``--modality t1,t1ce,t2,flair`` by default) trains a
fresh run of ``--iterations`` iterations in its own process, alternating round after round; the
cases are prepared once beforehand (a shared cache), so only training is timed. Seconds per
iteration are the median of the per-iteration times in the run's ``train_log.csv`` (the first two
iterations left out), and the table gives the median over rounds. Peak memory is the process's
maximum resident set size. Usage (an otherwise idle machine)::

    python Testing/Benchmarks/bench_train_sequences.py --data ../shared/data/brats18 --preset demo --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(data: str, preset: str, modality: str, iterations: int, threads: int, cache: Path, out: Path,
          precision: str = "auto") -> dict:
    command = [
        sys.executable, "-m", "powdr_outpaint", "train", "--data", data, "--preset", preset, "--modality", modality,
        "--iterations", str(iterations), "--save-every", str(iterations), "--snapshot-every", "0",
        "--preview-every", "0", "--threads", str(threads), "--cache-dir", str(cache), "--progress", "none",
        "--out", str(out), "--device", "cpu", "--precision", precision,
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {modality} failed:\n{stderr[-2000:]}")
    with open(out / "train_log.csv", newline="") as handle:
        times = [float(row["time"]) for row in csv.DictReader(handle)]
    per_iteration = [b - a for a, b in zip(times[1:], times[2:])]
    seconds = statistics.median(per_iteration) if per_iteration else float("nan")
    return {"seconds": seconds, "peak_gib": usage.ru_maxrss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--modalities", default="t1;t1,t1ce,t2,flair", help="configurations, separated by ';'")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    modalities = args.modalities.split(";")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        cache = work / "cache"
        for modality in modalities:  # prepare every case once, untimed
            train(args.data, args.preset, modality, 2, args.threads, cache, work / "warm")
            shutil.rmtree(work / "warm")
        results: dict[str, list[dict]] = {m: [] for m in modalities}
        for round_number in range(args.rounds):
            for modality in modalities:
                out = work / f"run-{round_number}-{len(results[modality])}-{modality.replace(',', '_')}"
                results[modality].append(train(args.data, args.preset, modality, args.iterations, args.threads,
                                               cache, out, args.precision))
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}  preset {args.preset}, "
          f"{args.threads} threads, precision {args.precision}, {args.rounds} alternating rounds of "
          f"{args.iterations} iterations")
    print(f"{'sequences':>20} {'s/iteration':>12} {'per round':>24} {'peak GiB':>9}")
    for modality in modalities:
        seconds = [r["seconds"] for r in results[modality]]
        memory = statistics.median(r["peak_gib"] for r in results[modality])
        print(f"{modality:>20} {statistics.median(seconds):12.3f} {' '.join(f'{s:.3f}' for s in seconds):>24} "
              f"{memory:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
