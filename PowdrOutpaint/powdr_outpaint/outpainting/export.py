"""Turning outpainted runs into a training set: the nnU-Net v2 raw dataset format.

Layout written under the nnU-Net raw folder (``--out``)::

    DatasetDDD_NAME/
        imagesTr/CASE_sNN_0000.nii.gz      one synthetic volume (channel 0)
        imagesTr/CASE_real_0000.nii.gz     the real image (with --with-real)
        labelsTr/CASE_sNN.nii.gz           the case's label map, original values
        labelsTr/CASE_real.nii.gz
        dataset.json                       channel_names, labels, numTraining, file_ending
        splits_grouped.json                5 folds that keep every case's volumes together
        powdr_export.json                  where each file came from

Every label file is written on its image's grid (same shape and affine). A run's label
map is the ``STEM_outpaint_label.nii.gz`` that ``generate`` writes; for a run of
``sample`` it is rebuilt from the mask named in the run's JSON.

Label values: nnU-Net v2 requires consecutive labels (0, 1, 2, ...). ``original``
keeps the values as they are (BraTS: 0, 1, 2, 4), which nnU-Net's integrity check
refuses when they are not consecutive; ``consecutive`` maps the sorted values present
onto 0, 1, 2, ... (BraTS: 4 -> 3) and records the mapping in dataset.json.

Runs of a model of several sequences (checkpoint modality ``t1,t1ce,t2,flair``) become
multi-channel cases: ``CASE_sNN_0000.nii.gz`` ... ``CASE_sNN_0003.nii.gz`` in the
checkpoint's sequence order (sample NN of every sequence together), ``channel_names``
in that order (``{"0": "T1", "1": "T1CE", "2": "T2", "3": "FLAIR"}``), the label on the
first sequence's grid, and with ``--with-real`` every sequence's real image. nnU-Net
needs every channel of a case on one grid, so a sequence whose files are on another
grid (``sample`` writes each sequence on its own input's grid) is resampled onto the
first sequence's grid in physical space, with linear interpolation and the volume's
minimum outside it; the export says so (``notes`` in the result, the command's output,
``powdr_export.json`` and dataset.json). Channels already on that grid are copied
unchanged. All runs under ``--from`` must come from models of the same sequences.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import PowdrError
from ..imaging.atomic import atomic_target, write_json_atomic
from ..imaging.preprocess import parse_labels
from ..imaging.resample import resample
from ..imaging.volume_io import Volume, load_volume, save_nifti
from ..qa.evaluate import SAMPLE_PATTERN
from ..training.data import strip_sequence
from .generate import label_file, original_label_map, safe_name

FILE_ENDING = ".nii.gz"
LABEL_VALUE_MODES = ("original", "consecutive")
SPLIT_FOLDS = 5


@dataclass
class Channel:
    """One sequence of a run: its name, output stem, samples (by index) and real input image."""

    sequence: str
    stem: str
    samples: list[Path]
    image: str | None = None  # the input image as the run's JSON recorded it


@dataclass
class Run:
    """One outpainting run found under ``--from``: its folder, stem, case name and files.

    ``stem`` and ``samples`` are the first sequence's; ``channels`` lists every sequence
    in the checkpoint's order (one channel for a single-sequence model).
    """

    folder: Path
    stem: str
    case: str
    metadata: dict[str, Any]
    samples: list[Path]
    channels: list[Channel] = field(default_factory=list)

    @property
    def label_path(self) -> Path:
        return label_file(self.folder, self.stem)

    @property
    def sequences(self) -> tuple[str, ...]:
        return run_sequences(self.metadata)


def run_sequences(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The sequences of the model that made a run, in channel order; () if its JSON does not say."""
    config = metadata.get("config")
    modality = config.get("modality") if isinstance(config, dict) else None
    if not isinstance(modality, str) or not modality.strip():
        return ()
    return tuple(part.strip() for part in modality.split(","))


def _samples_of(folder: Path, stem: str) -> list[tuple[int, Path]]:
    samples = []
    for path in folder.iterdir():
        match = SAMPLE_PATTERN.match(path.name)
        if match and match["stem"] == stem:
            samples.append((int(match["index"]), path))
    return sorted(samples)


def _sequence_stems(metadata: dict[str, Any], sequences: tuple[str, ...], where: Path) -> tuple[str, ...]:
    """The output stem of every sequence of a multi-sequence run, from its JSON.

    The JSON names each sequence's JSON file (``outputs.sequences.SEQ.metadata``); only
    the file name is used, so a moved output folder still exports.
    """
    outputs = metadata.get("outputs")
    per_sequence = outputs.get("sequences") if isinstance(outputs, dict) else None
    stems = []
    for sequence in sequences:
        entry = per_sequence.get(sequence) if isinstance(per_sequence, dict) else None
        name = Path(str(entry.get("metadata", ""))).name if isinstance(entry, dict) else ""
        if not name.endswith("_outpaint.json"):
            raise PowdrError(
                f"the run file {where} does not name the {sequence} outputs of its model "
                f"({', '.join(sequences)}); it was not written by this version's sample or generate"
            )
        stems.append(name[: -len("_outpaint.json")])
    return tuple(stems)


def _case_stem(stem: str, sequence: str) -> str:
    """'Brats18_X_t1' -> 'Brats18_X': a multi-sequence run's case is not one sequence's."""
    return strip_sequence(stem, (sequence,))


def _multi_sequence_run(root: Path, metadata_path: Path, metadata: dict[str, Any], stems: tuple[str, ...]) -> Run:
    """One run of a model of several sequences: every sequence's JSON and samples, checked."""
    folder = metadata_path.parent
    sequences = run_sequences(metadata)
    recorded = metadata.get("sequences") if isinstance(metadata.get("sequences"), dict) else {}
    channels: list[Channel] = []
    indices: list[int] | None = None
    for sequence, stem in zip(sequences, stems):
        if not (folder / f"{stem}_outpaint.json").is_file():
            raise PowdrError(
                f"the run of {', '.join(sequences)} in {folder} is incomplete: {stem}_outpaint.json ({sequence}) "
                "is missing; run 'generate' again to finish it"
            )
        samples = _samples_of(folder, stem)
        if not samples:
            raise PowdrError(f"the run {stem}_outpaint.json in {folder} has no sample files beside it")
        if indices is None:
            indices = [i for i, _ in samples]
        elif [i for i, _ in samples] != indices:
            raise PowdrError(
                f"the run in {folder} has samples {indices} of {sequences[0]} but {[i for i, _ in samples]} of "
                f"{sequence}; every sequence needs the same samples"
            )
        entry = recorded.get(sequence)
        image = entry.get("image") if isinstance(entry, dict) else None
        channels.append(Channel(sequence, stem, [path for _, path in samples], image))
    relative = folder.relative_to(root)
    case = safe_name("_".join(relative.parts)) if relative.parts else safe_name(_case_stem(stems[0], sequences[0]))
    return Run(folder, stems[0], case, metadata, channels[0].samples, channels)


def find_runs(from_dir: str | os.PathLike) -> list[Run]:
    """Every complete run (a ``STEM_outpaint.json`` with its samples) under ``from_dir``.

    A run in a subfolder (``generate``'s layout) is named after the subfolder path; a
    run directly in ``from_dir`` (``sample``'s layout) after its image stem (less the
    sequence's name for a run of several sequences). The JSON files of the sequences of
    one multi-sequence run make one run.
    """
    root = Path(from_dir)
    if not root.is_dir():
        raise PowdrError(f"--from {root} is not a folder")
    runs = []
    seen: set[tuple[Path, tuple[str, ...]]] = set()
    for metadata_path in sorted(root.rglob("*_outpaint.json")):
        if any(part.startswith(".") for part in metadata_path.relative_to(root).parts):
            continue
        stem = metadata_path.name[: -len("_outpaint.json")]
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, ValueError):
            raise PowdrError(f"the run file {metadata_path} is not valid JSON") from None
        if not isinstance(metadata, dict):
            raise PowdrError(f"the run file {metadata_path} is not a PowdrOutpaint run")
        folder = metadata_path.parent
        sequences = run_sequences(metadata)
        if len(sequences) > 1:
            stems = _sequence_stems(metadata, sequences, metadata_path)
            if (folder, stems) in seen:  # another sequence's JSON of a run already found
                continue
            seen.add((folder, stems))
            runs.append(_multi_sequence_run(root, metadata_path, metadata, stems))
            continue
        samples = _samples_of(folder, stem)
        if not samples:
            raise PowdrError(f"the run {metadata_path.name} in {folder} has no sample files beside it")
        relative = folder.relative_to(root)
        case = safe_name("_".join(relative.parts)) if relative.parts else safe_name(stem)
        paths = [p for _, p in samples]
        channel = Channel(sequences[0] if sequences else "MRI", stem, paths, metadata.get("image"))
        runs.append(Run(folder, stem, case, metadata, paths, [channel]))
    if not runs:
        raise PowdrError(f"no outpainting runs (*_outpaint.json) were found under {root}")
    cases = [r.case for r in runs]
    repeated = sorted({c for c in cases if cases.count(c) > 1})
    if repeated:
        raise PowdrError(f"several runs share the case name {', '.join(repeated)}; export them from separate folders")
    return runs


def sample_grid(path: Path) -> Volume:
    """The grid (shape, affine, header) of a NIfTI sample, without reading its voxels.

    ``data`` is a zero-stride placeholder of the right shape.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as error:  # noqa: BLE001 - any reader failure means an unreadable file
        raise PowdrError(f"the sample {path.name} could not be read ({error})") from None
    shape = tuple(int(v) for v in image.shape[:3])
    return Volume(np.broadcast_to(np.uint8(0), shape), image.affine.astype(float), image.header.copy(), path)


def run_label_map(run: Run, grid: Volume) -> np.ndarray:
    """The run's label map on ``grid`` with its original values."""
    if run.label_path.is_file():
        label = load_volume(run.label_path, "label map")
        if label.data.shape != grid.data.shape or not np.allclose(label.affine, grid.affine, atol=1e-4):
            return original_label_map(label, grid)
        return np.asarray(label.data)
    mask_path = run.metadata.get("mask")
    if not mask_path or not Path(mask_path).is_file():
        raise PowdrError(
            f"the run {run.stem} in {run.folder} has no {run.label_path.name} and its mask "
            f"{mask_path or '(unknown)'} is gone; rerun it with 'generate' or restore the mask"
        )
    labels = run.metadata.get("labels")
    kept = parse_labels(",".join(map(str, labels))) if isinstance(labels, list) else None
    return original_label_map(load_volume(mask_path, "mask"), grid, kept)


def _real_images(run: Run) -> list[Path]:
    """The real input image of every channel of a run (``--with-real``)."""
    paths = []
    for channel in run.channels:
        image = channel.image
        if not image or not Path(image).is_file():
            what = "real image" if len(run.channels) == 1 else f"real {channel.sequence} image"
            raise PowdrError(f"--with-real needs the {what} of {run.case}, but {image or '(unknown)'} is gone")
        paths.append(Path(image))
    return paths


def same_grid(a: Volume, b: Volume) -> bool:
    """Same shape and voxel-to-world affine (to 1e-4 mm)."""
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=1e-4)


def onto_grid(volume: Volume, grid: Volume) -> np.ndarray:
    """``volume`` resampled onto ``grid`` in physical space: linear, its minimum outside.

    Returns:
        float32 array of ``grid``'s shape (X, Y, Z).
    """
    grid_to_volume = np.linalg.solve(volume.affine, grid.affine)
    data = np.asarray(volume.data, dtype=np.float32)
    background = float(data.min())
    return resample(data, grid_to_volume, grid.data.shape, order=1, cval=background).astype(np.float32)


def channel_names(runs: list[Run], channel_name: str | None) -> list[str]:
    """dataset.json's channel names, in channel order.

    Default: the checkpoint's sequences in capitals (``T1``; ``T1, T1CE, T2, FLAIR``).
    ``channel_name`` overrides them: one name, or one per channel, comma-separated.
    """
    sequences = runs[0].sequences
    count = len(runs[0].channels)
    if count == 1:
        # As before multi-sequence models: the name given, else the modality, else "MRI".
        return [channel_name or str(runs[0].metadata.get("config", {}).get("modality", "MRI")).upper()]
    if channel_name is None:
        return [sequence.upper() for sequence in sequences]
    names = [name.strip() for name in channel_name.split(",")]
    if len(names) != count or not all(names):
        raise PowdrError(
            f"--channel-name gives {len(names)} name{'s' if len(names) != 1 else ''} but the runs have {count} "
            f"channels ({', '.join(sequences)}); give one per channel, comma-separated, e.g. "
            + ",".join(sequence.upper() for sequence in sequences)
        )
    return names


def _check_same_sequences(runs: list[Run]) -> None:
    """Refuse runs of models of different sequences: their channels would not mean the same."""
    kinds: dict[tuple[str, ...], list[str]] = {}
    for run in runs:
        kinds.setdefault(tuple(s.lower() for s in run.sequences), []).append(run.case)
    if len(kinds) > 1:
        described = " and ".join(
            f"{','.join(sequences) or 'unknown'} ({', '.join(cases[:3])}{', ...' if len(cases) > 3 else ''})"
            for sequences, cases in kinds.items()
        )
        raise PowdrError(
            f"the runs under --from come from models of different sequences: {described}; "
            "export each model's runs into its own dataset"
        )


def parse_label_names(text: str | None) -> dict[int, str]:
    """'1=necrosis,2=edema,4=enhancing' -> {1: 'necrosis', 2: 'edema', 4: 'enhancing'}."""
    names: dict[int, str] = {}
    if not text:
        return names
    for part in text.split(","):
        if not part.strip():
            continue
        value, _, name = part.partition("=")
        try:
            names[int(value)] = name.strip()
        except ValueError:
            raise PowdrError(f"--label-names must look like 1=necrosis,2=edema; got {part!r}") from None
        if not name.strip():
            raise PowdrError(f"--label-names gives no name for label {value.strip()}")
    return names


def _copy_atomic(source: Path, destination: Path) -> None:
    with atomic_target(destination) as temporary:
        shutil.copyfile(source, temporary)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, payload)


def dataset_folder(out_root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    return Path(out_root) / f"Dataset{dataset_id:03d}_{name}"


def _prepare_folder(out_root: Path, dataset_id: int, name: str, overwrite: bool) -> Path:
    if not 1 <= dataset_id <= 999:
        raise PowdrError(f"--dataset-id must be between 1 and 999 (nnU-Net's three digits); got {dataset_id}")
    folder = dataset_folder(out_root, dataset_id, name)
    if out_root.is_dir():
        clashes = [p.name for p in out_root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != folder]
        if clashes:
            raise PowdrError(
                f"dataset id {dataset_id} is already used by {clashes[0]} in {out_root}; choose another --dataset-id"
            )
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise PowdrError(f"{folder} already exists; pass --overwrite to replace it")
        if not (folder / "dataset.json").is_file():
            raise PowdrError(f"{folder} is not empty and holds no dataset.json; refusing to replace it")
        for sub in ("imagesTr", "labelsTr"):
            shutil.rmtree(folder / sub, ignore_errors=True)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    return folder


def _grouped_splits(groups: dict[str, list[str]], real: dict[str, str]) -> list[dict[str, list[str]]]:
    """Folds over cases: a case's volumes are all in training or all in validation.

    Validation uses the real volume of each held-out case when there is one, so the
    score measures real data; otherwise its synthetic volumes.
    """
    cases = sorted(groups)
    folds = min(SPLIT_FOLDS, len(cases))
    if folds < 2:
        return []
    splits = []
    for fold in range(folds):
        held_out = cases[fold::folds]
        train = [i for c in cases if c not in held_out for i in groups[c]]
        val: list[str] = []
        for case in held_out:
            val.extend([real[case]] if case in real else groups[case])
        splits.append({"train": sorted(train), "val": sorted(val)})
    return splits


def _write_channel(source: Path, destination: Path, kind: str, own_grid: Volume, grid: Volume, what: str) -> None:
    """Write one channel file of an exported case on ``grid`` (the case's first channel's).

    ``own_grid`` is the grid of this channel's samples: a real image must be on it.
    Volumes on ``grid`` are copied unchanged; others are resampled onto it (``onto_grid``).
    """
    if kind == "synthetic" and same_grid(own_grid, grid) and source.name.endswith(FILE_ENDING):
        # Engine outputs are already NIfTI on the image grid: copy the bytes.
        _copy_atomic(source, destination)
        return
    volume = load_volume(source, what)
    if kind == "real" and not same_grid(volume, own_grid):
        raise PowdrError(f"the real image {source.name} is not on the grid of its samples")
    if same_grid(volume, grid):
        save_nifti(destination, np.asarray(volume.data), volume.affine, volume.header)
    else:
        save_nifti(destination, onto_grid(volume, grid), grid.affine, grid.header)


def export_nnunet(
    from_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    dataset_id: int,
    name: str,
    with_real: bool = False,
    label_values: str = "original",
    channel_name: str | None = None,
    label_names: dict[int, str] | None = None,
    overwrite: bool = False,
    progress: str = "text",
) -> dict[str, Any]:
    """Write the runs under ``from_dir`` as nnU-Net v2 dataset ``DatasetDDD_NAME`` in ``out_root``.

    Runs of a model of several sequences give one channel per sequence in the
    checkpoint's order; a sequence whose files are not on the first sequence's grid is
    resampled onto it (linear interpolation) and a note says so. ``channel_name``: one
    name, or one per channel comma-separated (default: the sequences in capitals).
    Nothing under ``from_dir`` is modified; every file is written atomically.

    Returns:
        {"folder", "numTraining", "synthetic", "real", "labels" (dataset.json's), "mapping",
        "channel_names" (in channel order), "notes" (sentences: resampled sequences)}.
    """
    if label_values not in LABEL_VALUE_MODES:
        raise PowdrError(f"--label-values must be one of {', '.join(LABEL_VALUE_MODES)}")
    name = safe_name(name)
    runs = find_runs(from_dir)
    label_names = label_names or {}
    _check_same_sequences(runs)
    channels = channel_names(runs, channel_name)
    several = len(channels) > 1

    # The grid of every channel's samples; the case (its label, every channel) is written
    # on the first channel's, as nnU-Net needs all channels of a case on one grid.
    channel_grids = {run.case: [sample_grid(channel.samples[0]) for channel in run.channels] for run in runs}
    grids = {case: own[0] for case, own in channel_grids.items()}
    resampled: dict[str, list[str]] = {}
    for run in runs:
        for channel, own in zip(run.channels[1:], channel_grids[run.case][1:]):
            if not same_grid(own, grids[run.case]):
                resampled.setdefault(channel.sequence, []).append(run.case)
    notes = [
        f"the {sequence} volumes of {len(cases)} case{'s' if len(cases) > 1 else ''} ({', '.join(cases)}) are not "
        f"on the {runs[0].sequences[0]} grid; they were resampled onto it (linear interpolation), as nnU-Net "
        "needs every channel of a case on one grid"
        for sequence, cases in resampled.items()
    ]

    # First pass: the label values present in every run, so that a consecutive mapping
    # is the same for all cases even when a case lacks some label.
    present: set[int] = {0}
    for run in runs:
        present.update(int(v) for v in np.unique(run_label_map(run, grids[run.case])))
    values = sorted(present)
    if values[0] < 0:
        raise PowdrError(f"the label maps hold negative values ({values[0]}); nnU-Net needs labels >= 0")
    mapping = {v: (i if label_values == "consecutive" else v) for i, v in enumerate(values)}
    labels_json = {"background": 0}
    for value in values[1:]:
        labels_json[label_names.get(value, f"label_{value}")] = mapping[value]
    if len(set(labels_json)) != len(values):
        raise PowdrError("--label-names gives two labels the same name")

    # Every volume to write, one per channel; a missing real image is refused before any is written.
    jobs: list[tuple[str, Run, list[Path], str]] = []
    for run in runs:
        for position, sample in enumerate(run.samples):
            index = SAMPLE_PATTERN.match(sample.name)["index"]
            jobs.append((f"{run.case}_s{index}", run, [c.samples[position] for c in run.channels], "synthetic"))
        if with_real:
            jobs.append((f"{run.case}_real", run, _real_images(run), "real"))

    folder = _prepare_folder(Path(out_root), dataset_id, name, overwrite)
    provenance: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    real: dict[str, str] = {}
    iterator: Iterable = jobs
    bar = None
    if progress == "text":
        from tqdm import tqdm

        bar = tqdm(jobs, desc="exporting", unit="case" if several else "volume", file=sys.stderr,
                   dynamic_ncols=True)
        iterator = bar
    current_case, current_label = None, None
    lookup = np.zeros(max(values) + 1, dtype=np.int64)
    label_dtype = np.uint8 if max(mapping.values()) <= 255 else np.int32
    for value, exported in mapping.items():
        lookup[value] = exported
    try:
        for identifier, run, sources, kind in iterator:
            grid = grids[run.case]
            if current_case != run.case:
                label = run_label_map(run, grid)
                current_label = lookup[label.astype(np.int64)].astype(label_dtype)
                current_case = run.case
            written = []
            for number, (channel, source, own) in enumerate(zip(run.channels, sources, channel_grids[run.case])):
                what = "real image" if not several else f"real {channel.sequence} image"
                destination = folder / "imagesTr" / f"{identifier}_{number:04d}{FILE_ENDING}"
                _write_channel(source, destination, kind, own, grid, what if kind == "real" else "sample")
                written.append({
                    "channel": f"{number:04d}",
                    "sequence": channel.sequence,
                    "source": str(Path(source).resolve()),
                    "resampled": not same_grid(own, grid),
                })
            save_nifti(folder / "labelsTr" / f"{identifier}{FILE_ENDING}", current_label, grid.affine, grid.header)
            groups.setdefault(run.case, []).append(identifier)
            if kind == "real":
                real[run.case] = identifier
            provenance[identifier] = {
                "kind": kind,
                "case": run.case,
                "source": str(Path(sources[0]).resolve()),
                "run": str((run.folder / f"{run.stem}_outpaint.json").resolve()),
                "checkpoint_sha256": run.metadata.get("checkpoint_sha256"),
            }
            if several:
                provenance[identifier]["channels"] = written
    finally:
        if bar is not None:
            bar.close()

    extra: dict[str, Any] = {}
    if several:
        extra["sequences"] = list(runs[0].sequences)
    if resampled:
        extra["resampled_onto_first_sequence_grid"] = resampled
    dataset = {
        "channel_names": {str(i): channel for i, channel in enumerate(channels)},
        "labels": labels_json,
        "numTraining": len(jobs),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (
            f"{len(jobs) - len(real)} volumes outpainted around real lesions by PowdrOutpaint"
            + (f", plus {len(real)} real volumes" if real else "")
            + (f"; channels {', '.join(runs[0].sequences)}" if several else "")
        ),
        "powdr_outpaint": {
            "label_values": label_values,
            "original_to_exported": {str(k): v for k, v in mapping.items()},
            **extra,
        },
    }
    _write_json(folder / "dataset.json", dataset)
    _write_json(folder / "powdr_export.json", {"groups": groups, "files": provenance, "notes": notes})
    splits = _grouped_splits(groups, real)
    if splits:
        _write_json(folder / "splits_grouped.json", {"splits": splits})
    return {
        "folder": str(folder),
        "numTraining": len(jobs),
        "synthetic": len(jobs) - len(real),
        "real": len(real),
        "labels": labels_json,
        "mapping": mapping,
        "channel_names": channels,
        "notes": notes,
    }
