"""Evaluating one outpainting run: its metrics, its table and its QA report.

Reads the original image, its lesion mask and the folder written by ``sample`` (or one
case folder of ``generate``), computes the metrics of :mod:`powdr_outpaint.qa.metrics`,
formats a short table, and writes the metrics as JSON and the QA PNG
(the command line is :mod:`powdr_outpaint.commands.evaluate`).

A run of a multi-sequence model (``t1,t1ce,t2,flair``) is evaluated sequence by
sequence, each against its own original (``--original t1=A --original t1ce=B ...``, or
the images the run recorded when ``--original`` is left out); the JSON then holds one
section per sequence, in the checkpoint's order.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from ..errors import PowdrError
from ..imaging.atomic import write_json_atomic
from ..imaging.preprocess import lesion_on_image_grid, parse_labels
from ..imaging.volume_io import Volume, load_volume, stem_of
from ..model.checkpoint import file_sha256
from ..outpainting.outpaint import sequence_stem
from ..progress import Progress
from ..training.data import strip_sequence
from . import metrics as m
from .report import format_number

SAMPLE_PATTERN = re.compile(r"^(?P<stem>.+)_outpaint_s(?P<index>\d+)\.nii(\.gz)?$")
METADATA_SUFFIX = "_outpaint.json"

#: One original image, {sequence: original} for a multi-sequence run, or None: the run's own.
OriginalInput = Union[str, Path, Mapping[str, Union[str, Path]], None]


def _sample_stems(folder: Path) -> dict[str, list[tuple[int, Path]]]:
    """{stem: [(sample index, path), ...]} of every run's samples in ``folder``."""
    if not folder.is_dir():
        raise PowdrError(f"--samples {folder} is not a folder")
    runs: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.iterdir():
        match = SAMPLE_PATTERN.match(path.name)
        if match and path.is_file():
            runs.setdefault(match["stem"], []).append((int(match["index"]), path))
    if not runs:
        raise PowdrError(f"no outpainted samples (*_outpaint_sNN.nii.gz) were found in {folder}")
    return runs


def find_run(samples_dir: str | Path, stem: str | None = None) -> dict[str, Any]:
    """The files of one outpainting run in ``samples_dir`` (one sequence of it, for a multi-sequence run).

    Args:
        stem: the image stem (file name without extension); None picks the only one there.
    Returns:
        {"stem", "samples" (sorted paths), "mean", "std", "lesion", "metadata" (paths or None)}.
    """
    folder = Path(samples_dir)
    runs = _sample_stems(folder)
    if stem is None or stem not in runs:
        if len(runs) > 1:
            raise PowdrError(
                f"{folder} holds samples of several images ({', '.join(sorted(runs))}); choose one with --stem"
            )
        stem = next(iter(runs))

    def optional(suffix: str) -> Path | None:
        for ending in (".nii.gz", ".nii"):
            candidate = folder / f"{stem}_outpaint_{suffix}{ending}"
            if candidate.is_file():
                return candidate
        return None

    metadata = folder / f"{stem}{METADATA_SUFFIX}"
    return {
        "stem": stem,
        "samples": [path for _, path in sorted(runs[stem])],
        "mean": optional("mean"),
        "std": optional("std"),
        "lesion": optional("lesion"),
        "metadata": metadata if metadata.is_file() else None,
    }


def _read_metadata(folder: Path, stem: str) -> dict[str, Any]:
    """The run metadata ``sample`` wrote beside a stem's samples ({} when absent or unreadable)."""
    try:
        value = json.loads((folder / f"{stem}{METADATA_SUFFIX}").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def sequence_stems(metadata: Mapping[str, Any]) -> dict[str, str] | None:
    """{sequence: output stem} in the checkpoint's order for a multi-sequence run's metadata, else None."""
    outputs = metadata.get("outputs")
    sequences = outputs.get("sequences") if isinstance(outputs, dict) else None
    if not isinstance(sequences, dict) or not sequences:
        return None
    stems: dict[str, str] = {}
    for name, files in sequences.items():
        # File names only: the folder may have moved since the run, the names have not.
        metadata_file = Path(str(files.get("metadata", ""))).name if isinstance(files, dict) else ""
        if not metadata_file.endswith(METADATA_SUFFIX):
            return None
        stems[str(name)] = metadata_file[: -len(METADATA_SUFFIX)]
    return stems


@dataclass
class SequenceTarget:
    """One sequence to evaluate: its name (None for a single-sequence run), original and run files."""

    name: str | None
    original: Path
    run: dict[str, Any]


@dataclass
class RunPlan:
    """What :func:`evaluate` compares: one target, or one per sequence of a multi-sequence run."""

    targets: list[SequenceTarget]
    metadata: dict[str, Any]  # the run's metadata ({} when the run wrote none)
    multi: bool  # True: the JSON gets one section per sequence

    @property
    def sequences(self) -> list[str]:
        return [t.name for t in self.targets if t.name is not None]


def _examples(sequences: list[str]) -> str:
    return " ".join(f"--original {name}=FILE" for name in sequences)


def _group_runs(folder: Path, stems: list[str]) -> tuple[dict[str, dict[str, str] | None], dict[str, dict]]:
    """Each stem's multi-sequence group ({sequence: stem}, or None for a run of its own) and metadata."""
    metadata = {stem: _read_metadata(folder, stem) for stem in stems}
    groups: dict[str, dict[str, str] | None] = {}
    for stem in stems:
        group = sequence_stems(metadata[stem])
        groups[stem] = group if group and stem in group.values() else None
    return groups, metadata


def _run_key(stem: str, groups: Mapping[str, dict[str, str] | None]) -> tuple[str, ...]:
    group = groups[stem]
    return tuple(group.values()) if group else (stem,)


def _run_text(key: tuple[str, ...], groups: Mapping[str, dict[str, str] | None]) -> str:
    group = groups[key[0]]
    return f"{_case_name(key, list(group))} ({', '.join(group)})" if group and len(key) > 1 else key[0]


def plan_run(original: OriginalInput, samples_dir: str | Path, stem: str | None = None) -> RunPlan:
    """Pair every sequence of the run in ``samples_dir`` with its original image.

    Args:
        original: one image (a single-sequence run, or one sequence of a multi-sequence run:
            the one whose outputs carry its stem), {sequence: image} for every sequence of a
            multi-sequence run, or None to take the images the run's metadata recorded.
        stem: which run, when the folder holds several (any sequence's stem of a multi run).
    Raises:
        PowdrError: in one sentence, for a missing or extra sequence, several runs to
            choose from, or recorded images that are not there.
    """
    folder = Path(samples_dir)
    runs = _sample_stems(folder)
    groups, metadata = _group_runs(folder, sorted(runs))
    keys = list(dict.fromkeys(_run_key(s, groups) for s in sorted(runs)))

    if original is not None and not isinstance(original, Mapping):
        # One image, as before multi-sequence models: the run (or the sequence) named like it.
        chosen = stem or stem_of(original)
        if chosen not in runs and len(keys) == 1 and len(keys[0]) > 1:
            names = list(groups[keys[0][0]] or {})
            raise PowdrError(
                f"{folder} holds a run of the sequences {', '.join(names)}: give each its original "
                f"({_examples(names)}), or leave --original out to use the images the run was made from"
            )
        run = find_run(folder, chosen)
        own = metadata.get(run["stem"], {})
        name = own.get("sequence") if groups.get(run["stem"]) else None
        return RunPlan([SequenceTarget(name, Path(original), run)], own, multi=False)

    given = None if original is None else {str(k).lower(): Path(v) for k, v in original.items()}
    if stem is not None:
        if stem not in runs:
            raise PowdrError(f"--stem {stem}: {folder} has no samples of that name (it has {', '.join(sorted(runs))})")
        key = _run_key(stem, groups)
    else:
        candidates = keys
        if given and len(keys) > 1:
            # Several runs in one folder: the one whose outputs are named like the given images.
            wanted = {sequence_stem(path, name) for name, path in given.items()} | {stem_of(p) for p in given.values()}
            candidates = [key for key in keys if wanted & set(key)] or keys
        if len(candidates) > 1:
            raise PowdrError(
                f"{folder} holds several runs ({'; '.join(_run_text(k, groups) for k in candidates)}); "
                "choose one with --stem"
            )
        key = candidates[0]
    group = groups[key[0]]
    own = metadata.get(key[0], {})
    run_name = _case_name(key, list(group or {}))

    if group is None:
        # A single-sequence run: one original, given by name or recorded in the metadata.
        if given is not None:
            config = own.get("config") if isinstance(own.get("config"), dict) else {}
            modality = str(config.get("modality") or "")
            # Names are checked as 'sample' checks them (case aside); an unknown modality accepts any.
            if len(given) != 1 or (modality and next(iter(given)) != modality.lower()):
                raise PowdrError(
                    f"the run {run_name} is of {modality or 'one sequence'} only, so give its one original "
                    f"(--original FILE{f' or --original {modality}=FILE' if modality else ''}), not "
                    f"{', '.join(given)}"
                )
            path = next(iter(given.values()))
        else:
            path = _recorded(own.get("image"), "image", "--original FILE")
        return RunPlan([SequenceTarget(None, path, find_run(folder, key[0]))], own, multi=False)

    names = list(group)
    if given is not None:
        missing = [name for name in names if name.lower() not in given]
        extra = sorted(set(given) - {name.lower() for name in names})
        if extra:
            raise PowdrError(
                f"the run {run_name} has no {', '.join(extra)} (its sequences are {', '.join(names)}); "
                f"give {_examples(names)}"
            )
        if missing:
            raise PowdrError(
                f"--original lacks {', '.join(missing)}: the run {run_name} has the sequences {', '.join(names)}, "
                f"so give {_examples(names)} (or leave --original out to use the images the run was made from)"
            )
        paths = {name: given[name.lower()] for name in names}
    else:
        recorded = own.get("sequences") if isinstance(own.get("sequences"), dict) else {}
        paths = {
            name: _recorded((recorded.get(name) or {}).get("image"), f"{name} image", _examples(names))
            for name in names
        }
    absent = [name for name in names if group[name] not in runs]
    if absent:
        raise PowdrError(
            f"{folder} lacks the {', '.join(absent)} samples of the run {run_name} ({group[absent[0]]}_outpaint_s00...)"
        )
    targets = [SequenceTarget(name, paths[name], find_run(folder, group[name])) for name in names]
    return RunPlan(targets, own, multi=True)


def _recorded(value: Any, what: str, option: str) -> Path:
    """A file the run's metadata recorded; a clear error when there is none or it has gone."""
    if not isinstance(value, str) or not value:
        raise PowdrError(f"the run's metadata records no {what}; give it with {option}")
    path = Path(value)
    if not path.is_file():
        raise PowdrError(f"the run's {what} {path} is not there any more; give it with {option}")
    return path


def _load_on_grid(path: Path, reference: Volume, what: str, original: str = "original image") -> np.ndarray:
    volume = load_volume(path, what)
    if volume.data.shape != reference.data.shape or not np.allclose(volume.affine, reference.affine, atol=1e-3):
        raise PowdrError(
            f"the {what} {path.name} is not on the {original}'s grid "
            f"(shape {volume.data.shape} vs {reference.data.shape}); evaluate it against the image it was made from"
        )
    return np.asarray(volume.data, dtype=np.float32)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths hold the same bytes (a moved or copied original is still the same image)."""
    try:
        if a.resolve() == b.resolve():
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
        return file_sha256(a) == file_sha256(b)
    except OSError:
        return True  # nothing to compare with: no warning


def evaluate(
    original_path: OriginalInput,
    mask_path: str | Path | None,
    samples_dir: str | Path,
    labels: str | None = None,
    stem: str | None = None,
    report_path: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute every metric of a run; optionally draw the QA report.

    All sample volumes of one sequence are held in memory as float32 (N x the image
    size x 4 bytes), since the pairwise metrics need every pair; sequences are
    evaluated one after the other.

    Args:
        original_path: the image the samples were made from; {sequence: image} for every
            sequence of a multi-sequence run; None takes the image(s) the run recorded.
        mask_path: its lesion mask; None takes the mask the run recorded.
        labels: lesion labels such as "1,2,4"; None takes those of the run's metadata
            when present, else every label > 0.
    Returns:
        The metrics dictionary (JSON-serialisable), described in the module
        :mod:`powdr_outpaint.qa.metrics` and the README. A multi-sequence run (several
        sequences, or None as ``original_path``) gives {"sequences": {name: the single-run
        dictionary}, ...} in the checkpoint's order.
    """
    progress = progress or Progress("none")
    plan = plan_run(original_path, samples_dir, stem)
    run_metadata = plan.metadata
    if mask_path is None:
        mask_path = _recorded(run_metadata.get("mask"), "mask", "--mask FILE")
    if labels is None and isinstance(run_metadata.get("labels"), list):
        labels = ",".join(str(v) for v in run_metadata["labels"])
    label_tuple = parse_labels(labels)
    mask = load_volume(mask_path, "mask")

    if not plan.multi:
        target = plan.targets[0]
        result, view = _evaluate_sequence(target, mask, mask_path, label_tuple, labels, samples_dir, run_metadata,
                                          progress)
        if target.name is not None:
            result["sequence"] = target.name  # one sequence of a multi-sequence run
        if report_path is not None:
            progress.stage("report", f"Drawing the QA report {report_path}")
            result["report"] = _draw(report_path, view, result)
        return result

    sections: dict[str, dict[str, Any]] = {}
    rows = []
    notes = []
    recorded = run_metadata.get("sequences") if isinstance(run_metadata.get("sequences"), dict) else {}
    for target in plan.targets:
        name = str(target.name)
        made_from = Path(str((recorded.get(name) or {}).get("image") or ""))
        # Same grid, wrong file (t1 given as t2) would pass every check but mean nothing: say so.
        if made_from.name and made_from.is_file() and not _same_file(target.original, made_from):
            notes.append(f"the {name} original {target.original} is not the image the run was made from ({made_from})")
        section, view = _evaluate_sequence(target, mask, mask_path, label_tuple, labels, samples_dir, run_metadata,
                                           progress)
        sections[name] = section
        if report_path is not None:
            # Only the report's slices are kept, not the volumes: four sequences of full-size
            # samples would otherwise stay in memory together.
            from .report import sequence_row

            rows.append(sequence_row(name, view["original"], view["lesion"], view["samples"], view["mean"],
                                     view["std"], view["affine"], section, _sample_names(view["run"])))
        del view
    first = next(iter(sections.values()))
    result: dict[str, Any] = {
        "samples_dir": str(Path(samples_dir).resolve()),
        "mask": str(Path(mask_path).resolve()),
        "run": _case_name([s["stem"] for s in sections.values()], list(sections)),
        "samples": first["samples"],
        "preserve": first["preserve"],
        "sequence_order": list(sections),
        "lesion_max_abs_diff": max(s["lesion"]["max_abs_diff"] for s in sections.values()),
        "notes": notes,
        "sequences": sections,
    }
    if report_path is not None:
        from .report import write_sequences_report

        progress.stage("report", f"Drawing the QA report {report_path}")
        preserve = f", preserve {result['preserve']}" if result.get("preserve") else ""
        title = (
            f"{result['run']}: {len(sections)} sequences, {_count(result['samples'], 'sample')}{preserve}; "
            f"max |sample - original| in the lesion {result['lesion_max_abs_diff']:.4g} (all sequences)"
        )
        result["report"] = write_sequences_report(report_path, rows, title)
    return result


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _case_name(stems: Sequence[str], names: Sequence[str] = ()) -> str:
    """What a run's stems share: 'C_t1', 'C_t1ce' of t1, t1ce -> 'C' (each stem without its sequence's name)."""
    bases = [strip_sequence(stem, (name,)) for stem, name in zip(stems, names)] or list(stems)
    common = os.path.commonprefix(bases).rstrip("_-. ")
    return common or ", ".join(stems)


def _evaluate_sequence(
    target: SequenceTarget,
    mask: Volume,
    mask_path: str | Path,
    label_tuple: tuple[int, ...] | None,
    labels: str | None,
    samples_dir: str | Path,
    run_metadata: Mapping[str, Any],
    progress: Progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The single-run metrics of one sequence against its own original, and what the report draws."""
    run = target.run
    of = f"{target.name} " if target.name else ""
    original_what = f"{target.name} original" if target.name else "original image"
    progress.stage("loading", f"Loading the {original_what}, the mask and {len(run['samples'])} {of}samples")
    original_volume = load_volume(target.original, original_what)
    lesion = lesion_on_image_grid(mask, original_volume, label_tuple)
    original = np.asarray(original_volume.data, dtype=np.float32)
    samples = [_load_on_grid(p, original_volume, f"{of}sample", original_what) for p in run["samples"]]
    regions = m.regions_of(original, lesion)
    data_range = float(original.max() - original.min())
    if not data_range > 0:
        raise PowdrError(f"the {original_what} is constant, so SSIM has no intensity range to work with")

    per_sample = []
    for index, (path, sample) in enumerate(zip(run["samples"], samples), start=1):
        progress.stage("evaluating", f"SSIM and MS-SSIM of {of}sample {index} of {len(samples)}")
        ssim = m.ssim_regions(sample, original, regions, data_range)
        ms_ssim, scales = m.ms_ssim_regions(sample, original, regions, data_range)
        per_sample.append(
            {
                "file": Path(path).name,
                "ssim": ssim,
                "ms_ssim": ms_ssim,
                "max_abs_diff_lesion": m.max_abs_difference(sample, original, lesion),
            }
        )

    progress.stage("evaluating", f"Realism of the new {of}tissue")
    brain = original > original.min()
    scale = m.intensity_range(original, brain)
    outside = regions["outside"]
    reference_hf = m.high_frequency_energy(original, outside)
    for entry, sample in zip(per_sample, samples):
        entry["high_frequency_ratio"] = m.high_frequency_ratio(sample, original, outside, reference=reference_hf)
        entry["histogram_distance"] = m.histogram_distance(sample, original, outside, scale)
    realism: dict[str, Any] = {
        "intensity_range": scale,
        "high_frequency_ratio": float(np.mean([e["high_frequency_ratio"] for e in per_sample])),
        "histogram_distance": float(np.mean([e["histogram_distance"] for e in per_sample])),
        "high_frequency_sigma_voxels": m.HIGH_FREQUENCY_SIGMA,
    }
    if len(samples) >= 2:
        pairs = m.pairwise_mean_abs_difference(samples, outside, scale)
        realism["pairwise_difference_pct"] = {
            **pairs.as_dict(),
            "min": min(pairs.values),
            "median": float(np.median(pairs.values)),
        }
    else:
        realism["pairwise_difference_pct"] = None

    progress.stage("evaluating", f"Diversity and the {of}std map")
    if len(samples) >= 2:
        diversity = {
            "cosine": m.pairwise_cosine(samples).as_dict(),
            "kl": m.pairwise_kl(samples).as_dict(),
        }
    else:
        diversity = {"cosine": None, "kl": None, "note": "diversity needs at least 2 samples"}

    if run["std"] is not None:
        std = _load_on_grid(run["std"], original_volume, f"{of}std map", original_what)
        std_source = Path(run["std"]).name
    else:
        std = np.std(np.stack(samples), axis=0) if len(samples) > 1 else np.zeros_like(original)
        std_source = "computed from the samples"
    mean = (
        _load_on_grid(run["mean"], original_volume, f"{of}mean map", original_what)
        if run["mean"] is not None
        else np.mean(np.stack(samples), axis=0)
    )

    def average(key: str, region: str) -> float:
        return float(np.mean([entry[key][region] for entry in per_sample]))

    options = run_metadata.get("options", {}) if isinstance(run_metadata.get("options"), dict) else {}
    result: dict[str, Any] = {
        "original": str(Path(target.original).resolve()),
        "mask": str(Path(mask_path).resolve()),
        "samples_dir": str(Path(samples_dir).resolve()),
        "stem": run["stem"],
        "samples": len(samples),
        "preserve": options.get("preserve"),
        "shape": list(original.shape),
        "spacing_mm": [float(v) for v in original_volume.spacing],
        "lesion": {
            "voxels": int(lesion.sum()),
            "labels": labels or "all > 0",
            "max_abs_diff": max(entry["max_abs_diff_lesion"] for entry in per_sample),
        },
        "regions": {
            "inside": "the lesion",
            "outside": "voxels above the original's minimum (the head) outside the lesion",
            "outside_voxels": int(regions["outside"].sum()),
        },
        "settings": {
            "ssim_window": m.SSIM_WINDOW,
            "ssim_window_kind": "uniform, sample covariance, K1=0.01, K2=0.03",
            "ms_ssim_scales": scales,
            "ms_ssim_weights": list(m.MS_SSIM_WEIGHTS[:scales]),
            "histogram_bins": m.HISTOGRAM_BINS,
            "kl_epsilon": m.KL_EPSILON,
            "data_range": data_range,
        },
        "diversity": diversity,
        "realism": realism,
        "fidelity_mean": {
            "ssim": {r: average("ssim", r) for r in ("inside", "outside")},
            "ms_ssim": {r: average("ms_ssim", r) for r in ("inside", "outside")},
        },
        "per_sample": per_sample,
        "std_map": {"source": std_source, **m.std_map_stats(std, lesion, regions["outside"])},
    }
    view = {
        "original": original, "lesion": lesion, "samples": samples[:2], "mean": mean, "std": std,
        "affine": original_volume.affine, "run": run,
    }
    return result, view


def _sample_names(run: Mapping[str, Any]) -> list[str]:
    return [f"Sample {i + 1} ({_short(p)})" for i, p in enumerate(run["samples"][:2])]


def _draw(report_path: str | Path, view: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    from .report import write_report

    preserve = f", preserve {result['preserve']}" if result.get("preserve") else ""
    title = (
        f"{result['stem']}: {result['samples']} samples{preserve}; "
        f"lesion {result['lesion']['voxels']:,} voxels, max |sample - original| in lesion "
        f"{result['lesion']['max_abs_diff']:.4g}"
    )
    return write_report(
        report_path, view["original"], view["lesion"], view["samples"], view["mean"], view["std"], view["affine"],
        result, title, _sample_names(view["run"]),
    )


def _short(path: str | Path) -> str:
    """'CASE_t1_outpaint_s01.nii.gz' -> 's01'."""
    return Path(path).name.split("_outpaint_")[-1].split(".")[0]


def _num(value: Any, digits: int = 3) -> str:
    return format_number(value, digits)


def format_table(result: dict[str, Any]) -> str:
    """A short plain-text summary of :func:`evaluate`'s result: one block per sequence of a multi run."""
    if "sequences" not in result:
        return _format_block(result, "")
    blocks = [_format_block(section, f"== {name} == ") for name, section in result["sequences"].items()]
    tail = [
        f"{result['run']}: {len(result['sequences'])} sequences ({', '.join(result['sequences'])}); "
        f"max |sample - original| in the lesion over all of them {result['lesion_max_abs_diff']:.4g}"
    ]
    tail += [f"note: {note}" for note in result.get("notes", [])]
    if "report" in result:
        tail.append(f"report: {result['report']['path']}")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(tail)


def _format_block(result: dict[str, Any], heading: str) -> str:
    lines = [
        f"{heading}{result['stem']}: {result['samples']} samples, lesion {result['lesion']['voxels']:,} voxels "
        f"(SSIM window {result['settings']['ssim_window']}^3, MS-SSIM {result['settings']['ms_ssim_scales']} scales)",
        f"{'':<12}{'SSIM in':>9}{'SSIM out':>10}{'MS-SSIM in':>12}{'MS-SSIM out':>13}{'max|Δ| lesion':>15}",
    ]
    for entry in result["per_sample"]:
        label = _short(entry["file"])
        lines.append(
            f"{label:<12}{_num(entry['ssim']['inside']):>9}{_num(entry['ssim']['outside']):>10}"
            f"{_num(entry['ms_ssim']['inside']):>12}{_num(entry['ms_ssim']['outside']):>13}"
            f"{entry['max_abs_diff_lesion']:>15.4g}"
        )
    fid = result["fidelity_mean"]
    lines.append(
        f"{'mean':<12}{_num(fid['ssim']['inside']):>9}{_num(fid['ssim']['outside']):>10}"
        f"{_num(fid['ms_ssim']['inside']):>12}{_num(fid['ms_ssim']['outside']):>13}"
        f"{result['lesion']['max_abs_diff']:>15.4g}"
    )
    cosine, kl = result["diversity"].get("cosine"), result["diversity"].get("kl")
    if cosine:
        lines.append(
            f"diversity over {cosine['pairs']} pairs: cosine {_num(cosine['mean'], 4)} ± {_num(cosine['std'], 4)}, "
            f"KL {kl['mean']:.3g} ± {kl['std']:.3g} nats (lower cosine, higher KL: more diverse)"
        )
    else:
        lines.append("diversity: needs at least 2 samples")
    realism = result.get("realism")
    if realism:
        pairs = realism.get("pairwise_difference_pct")
        spread = (
            f"pairwise |difference| smallest {pairs['min']:.2f} %, median {pairs['median']:.2f} % of the "
            f"intensity range; " if pairs else ""
        )
        lines.append(
            f"realism: {spread}high-frequency ratio {_num(realism['high_frequency_ratio'])} "
            f"(1 = as detailed as the original); histogram distance {_num(realism['histogram_distance'])} "
            f"(0 = same intensities)"
        )
    std = result["std_map"]
    lines.append(
        f"std map: inside mean {_num(std['inside']['mean'])} (max {_num(std['inside']['max'])}); "
        f"outside mean {_num(std['outside']['mean'])} "
        f"(p95 {_num(std['outside']['p95'])}, max {_num(std['outside']['max'])})"
    )
    if "report" in result:
        lines.append(f"report: {result['report']['path']}")
    return "\n".join(lines)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinite floats replaced by None, so any JSON parser reads it."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_metrics_json(path: Path, payload: dict[str, Any]) -> None:
    """The metrics as strict JSON (NaN and infinity become null), written atomically."""
    write_json_atomic(path, strict_json(payload), allow_nan=False)
