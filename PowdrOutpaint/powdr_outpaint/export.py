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
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .atomic import atomic_target, write_json_atomic
from .errors import PowdrError
from .evaluate_cli import SAMPLE_PATTERN
from .generate import label_file, original_label_map, safe_name
from .preprocess import parse_labels
from .volume_io import Volume, load_volume, save_nifti

FILE_ENDING = ".nii.gz"
LABEL_VALUE_MODES = ("original", "consecutive")
SPLIT_FOLDS = 5


@dataclass
class Run:
    """One outpainting run found under ``--from``: its folder, stem, case name and files."""

    folder: Path
    stem: str
    case: str
    metadata: dict[str, Any]
    samples: list[Path]

    @property
    def label_path(self) -> Path:
        return label_file(self.folder, self.stem)


def find_runs(from_dir: str | os.PathLike) -> list[Run]:
    """Every complete run (a ``STEM_outpaint.json`` with its samples) under ``from_dir``.

    A run in a subfolder (``generate``'s layout) is named after the subfolder path; a
    run directly in ``from_dir`` (``sample``'s layout) after its image stem.
    """
    root = Path(from_dir)
    if not root.is_dir():
        raise PowdrError(f"--from {root} is not a folder")
    runs = []
    for metadata_path in sorted(root.rglob("*_outpaint.json")):
        if any(part.startswith(".") for part in metadata_path.relative_to(root).parts):
            continue
        stem = metadata_path.name[: -len("_outpaint.json")]
        try:
            metadata = json.loads(metadata_path.read_text())
        except (OSError, ValueError):
            raise PowdrError(f"the run file {metadata_path} is not valid JSON") from None
        folder = metadata_path.parent
        samples = []
        for path in folder.iterdir():
            match = SAMPLE_PATTERN.match(path.name)
            if match and match["stem"] == stem:
                samples.append((int(match["index"]), path))
        if not samples:
            raise PowdrError(f"the run {metadata_path.name} in {folder} has no sample files beside it")
        relative = folder.relative_to(root)
        case = safe_name("_".join(relative.parts)) if relative.parts else safe_name(stem)
        runs.append(Run(folder, stem, case, metadata, [p for _, p in sorted(samples)]))
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


def _real_image(run: Run) -> Path:
    image = run.metadata.get("image")
    if not image or not Path(image).is_file():
        raise PowdrError(f"--with-real needs the real image of {run.case}, but {image or '(unknown)'} is gone")
    return Path(image)


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

    Returns:
        {"folder", "numTraining", "synthetic", "real", "labels" (dataset.json's), "mapping"}.
    """
    if label_values not in LABEL_VALUE_MODES:
        raise PowdrError(f"--label-values must be one of {', '.join(LABEL_VALUE_MODES)}")
    name = safe_name(name)
    runs = find_runs(from_dir)
    label_names = label_names or {}

    # First pass: the label values present in every run, so that a consecutive mapping
    # is the same for all cases even when a case lacks some label.
    present: set[int] = {0}
    grids = {run.case: sample_grid(run.samples[0]) for run in runs}
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

    folder = _prepare_folder(Path(out_root), dataset_id, name, overwrite)
    modality = channel_name or str(runs[0].metadata.get("config", {}).get("modality", "MRI")).upper()
    provenance: dict[str, Any] = {}
    groups: dict[str, list[str]] = {}
    real: dict[str, str] = {}
    jobs: list[tuple[str, Run, Path, str]] = []
    for run in runs:
        for sample in run.samples:
            index = SAMPLE_PATTERN.match(sample.name)["index"]
            jobs.append((f"{run.case}_s{index}", run, sample, "synthetic"))
        if with_real:
            jobs.append((f"{run.case}_real", run, _real_image(run), "real"))

    iterator: Iterable = jobs
    bar = None
    if progress == "text":
        from tqdm import tqdm

        bar = tqdm(jobs, desc="exporting", unit="volume", file=sys.stderr, dynamic_ncols=True)
        iterator = bar
    current_case, current_label = None, None
    lookup = np.zeros(max(values) + 1, dtype=np.int64)
    label_dtype = np.uint8 if max(mapping.values()) <= 255 else np.int32
    for value, exported in mapping.items():
        lookup[value] = exported
    try:
        for identifier, run, source, kind in iterator:
            grid = grids[run.case]
            if current_case != run.case:
                label = run_label_map(run, grid)
                current_label = lookup[label.astype(np.int64)].astype(label_dtype)
                current_case = run.case
            image_path = folder / "imagesTr" / f"{identifier}_0000{FILE_ENDING}"
            if kind == "synthetic" and source.name.endswith(FILE_ENDING):
                # Engine outputs are already NIfTI on the image grid: copy the bytes.
                _copy_atomic(source, image_path)
            else:
                volume = load_volume(source, "real image")
                if volume.data.shape != grid.data.shape or not np.allclose(volume.affine, grid.affine, atol=1e-4):
                    raise PowdrError(f"the real image {source.name} is not on the grid of its samples")
                save_nifti(image_path, np.asarray(volume.data), volume.affine, volume.header)
            save_nifti(folder / "labelsTr" / f"{identifier}{FILE_ENDING}", current_label, grid.affine, grid.header)
            groups.setdefault(run.case, []).append(identifier)
            if kind == "real":
                real[run.case] = identifier
            provenance[identifier] = {
                "kind": kind,
                "case": run.case,
                "source": str(Path(source).resolve()),
                "run": str((run.folder / f"{run.stem}_outpaint.json").resolve()),
                "checkpoint_sha256": run.metadata.get("checkpoint_sha256"),
            }
    finally:
        if bar is not None:
            bar.close()

    dataset = {
        "channel_names": {"0": modality},
        "labels": labels_json,
        "numTraining": len(jobs),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": (
            f"{len(jobs) - len(real)} volumes outpainted around real lesions by PowdrOutpaint"
            + (f", plus {len(real)} real volumes" if real else "")
        ),
        "powdr_outpaint": {
            "label_values": label_values,
            "original_to_exported": {str(k): v for k, v in mapping.items()},
        },
    }
    _write_json(folder / "dataset.json", dataset)
    _write_json(folder / "powdr_export.json", {"groups": groups, "files": provenance})
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
    }
