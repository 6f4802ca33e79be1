"""Two or more ``sample`` settings on the same cases: time, peak memory and the evaluate figures.

Each setting is a name and the ``sample`` options it adds, e.g. ``blocks="--refine-tiling blocks"``.
For every case, every round runs ``powdr-outpaint sample`` once per setting, each in its own
process (timed from start to exit, peak resident memory from the operating system), the order
of the settings reversed every other round so a slow phase of the machine hits all alike. The
first round's outputs are evaluated (``evaluate``; with a fixed seed, later rounds repeat them).
Per case and setting the table gives the median time over the rounds, the medians of the run's
own load, sampling and writing times (from its JSON), the largest peak memory and the figures of
``evaluate_holdout.py``.

``--engine NAME=DIR`` runs a setting's ``sample`` with the engine of another checkout (its
``PowdrOutpaint`` folder first on ``PYTHONPATH``), so two versions of the code compare the same way.

Usage (an otherwise idle machine)::

    python Testing/Benchmarks/compare_options.py --checkpoint Resources/Models/powdr_demo_brain_t1.pt \\
        --out runs/tiling --rounds 3 --setting blocks="--refine-tiling blocks" \\
        --setting whole="--refine-tiling whole" \\
        ../shared/data/brats18/Brats18_TCIA10_628_1 ../shared/data/brats18/Brats18_TCIA10_639_1

    git worktree add ../before HEAD~1
    python Testing/Benchmarks/compare_options.py --checkpoint Resources/Models/powdr_demo_brain_t1.pt \\
        --out runs/writing --setting before="" --engine before=../before --setting after="" CASES...
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

# This script's folder is on sys.path when it runs: the figures are evaluate_holdout's.
from evaluate_holdout import case_table, evaluate_figures  # noqa: E402


def timed_sample(args: list[str], engine: str | None = None) -> tuple[float, float]:
    """Run ``powdr-outpaint sample ARGS`` in its own process: (seconds to exit, peak RSS in GiB).

    ``engine``: a checkout whose engine runs instead of the installed one.
    """
    env = None
    if engine:
        source = Path(engine).resolve() / "PowdrOutpaint"
        if not (source / "powdr_outpaint").is_dir():
            raise SystemExit(f"--engine {engine}: no PowdrOutpaint/powdr_outpaint folder there")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "powdr_outpaint", "sample", *args], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"sample {' '.join(args)} failed with exit status {process.returncode}")
    # ru_maxrss is in KiB on Linux.
    return seconds, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="BraTS case folders (CASE/CASE_t1.nii.gz, CASE_seg.nii.gz)")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--setting", action="append", required=True, metavar='NAME="OPTIONS"',
                        help="a name and the sample options it adds (repeat; at least two)")
    parser.add_argument("--engine", action="append", default=[], metavar="NAME=DIR",
                        help="run setting NAME with the engine of the checkout DIR (repeat)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--modality", default="t1")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.setting)
    if len(settings) < 2:
        parser.error("give at least two --setting NAME=OPTIONS")
    engines = dict(item.split("=", 1) for item in args.engine)
    if set(engines) - set(settings):
        parser.error(f"--engine names a setting that is not given: {', '.join(sorted(set(engines) - set(settings)))}")

    out_root = Path(args.out)
    rows: dict[str, dict[str, float]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    memory: dict[tuple[str, str], float] = {}
    # The run's own account of where its time went (load, sampling, writing the outputs).
    phases: dict[tuple[str, str], list[dict[str, float]]] = {}
    for folder in map(Path, args.cases):
        image = folder / f"{folder.name}_{args.modality}.nii.gz"
        mask = folder / f"{folder.name}_seg.nii.gz"
        for round_index in range(args.rounds):
            names = list(settings) if round_index % 2 == 0 else list(reversed(settings))
            for name in names:
                out = out_root / folder.name / name / f"round{round_index}"
                seconds, peak = timed_sample([
                    "--image", str(image), "--mask", str(mask), "--checkpoint", args.checkpoint,
                    "--samples", str(args.samples), "--seed", "0", "--progress", "none", "--out", str(out),
                    *shlex.split(settings[name]),
                ], engines.get(name))
                times.setdefault((folder.name, name), []).append(seconds)
                memory[(folder.name, name)] = max(memory.get((folder.name, name), 0.0), peak)
                run = json.loads(next(out.glob("*_outpaint.json")).read_text())
                phases.setdefault((folder.name, name), []).append(run.get("timings", {}))
                print(f"{folder.name} {name} round {round_index}: {seconds:.1f} s, {peak:.2f} GiB", flush=True)
        for name in settings:
            figures = evaluate_figures(image, mask, out_root / folder.name / name / "round0")
            rows[f"{folder.name} {name}"] = {
                "sample_s_median": statistics.median(times[(folder.name, name)]),
                "peak_rss_gib": memory[(folder.name, name)],
                **{
                    f"{phase}_median": statistics.median(t.get(phase, float("nan")) for t in phases[(folder.name, name)])
                    for phase in ("load_s", "sampling_s", "writing_s")
                },
                **figures,
            }
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "settings": settings,
        "engines": engines,
        "rounds": args.rounds,
        "times_s": {f"{case} {name}": values for (case, name), values in times.items()},
        "rows": rows,
    }
    out_root.mkdir(parents=True, exist_ok=True)
    (out_root / "compare_options.json").write_text(json.dumps(record, indent=1))
    print(case_table(rows))


if __name__ == "__main__":
    main()
