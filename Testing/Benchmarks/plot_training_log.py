"""Plot a training run's loss curve from its train_log.csv.

    python Testing/Benchmarks/plot_training_log.py RUN/train_log.csv OUT.png [--window 100]

Draws every iteration's loss (light) and a moving average (dark), log scale.
"""

from __future__ import annotations

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("png")
    parser.add_argument("--window", type=int, default=100)
    args = parser.parse_args()
    with open(args.log, newline="") as handle:
        rows = [(int(r["step"]), float(r["loss"]), float(r["time"])) for r in csv.DictReader(handle)]
    steps = np.array([r[0] for r in rows])
    loss = np.array([r[1] for r in rows])
    window = max(1, min(args.window, len(loss)))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=120)
    axis.plot(steps, loss, color="#9ecae1", linewidth=0.5, label="loss per iteration")
    axis.plot(steps[window - 1:], smooth, color="#08519c", linewidth=1.5, label=f"moving average ({window})")
    axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("x0 MSE (wavelet domain)")
    axis.set_title(f"{len(rows)} iterations, {rows[-1][2] / 60:.0f} min")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.png)
    print(f"first {window}: {loss[:window].mean():.5f}, last {window}: {loss[-window:].mean():.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
