"""Training data: finding cases, preparing them once, and keeping them ready.

A case is an image and its tumour mask. Cases come from a folder in BraTS layout
(2018-2021: ``CASE/CASE_t1.nii.gz`` + ``CASE/CASE_seg.nii.gz``; 2023 and later:
``CASE/CASE-t1n.nii.gz`` + ``CASE/CASE-seg.nii.gz``) or from a CSV file with
``image`` and ``mask`` columns. A model of several sequences (``t1,t1ce,t2,flair``)
reads one file per sequence: ``CASE_t1ce.nii.gz`` ... in a BraTS folder, one column
per sequence (named like the sequence) in a CSV; a case missing one is skipped with
the reason. Every case is mapped onto the preset's model grid
with the same preprocessing as sampling, and the result is cached on disk in a
``.npz`` file keyed by the SHA-256 of both files, the model grid, the
normalisation, the labels and the dilation, so later epochs and later runs never
read the NIfTI files again. A case that cannot be used is listed with the reason
and skipped (the reason is cached too, so it is not re-read on every run).

Arrays of a prepared case are on the model grid (X, Y, Z): image float32 in
[-1, 1] ((S, X, Y, Z) for S > 1 sequences, each normalised by its own percentiles),
lesion and foreground bool, depth uint8 (voxels to the background).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import PowdrError
from ..imaging.atomic import atomic_target
from ..imaging.masks import dilate, foreground_depth, model_foreground
from ..imaging.preprocess import lesion_on_image_grid, prepare
from ..imaging.volume_io import NIFTI_SUFFIXES, load_volume, stem_of
from ..model.checkpoint import ModelConfig, file_sha256

# Bump when the cached arrays change meaning, so old cache files are not reused.
CACHE_VERSION = 2  # multi-sequence cases add their sequences to the key instead

# The same four sequences under their 2018-2021 and 2023+ names.
MODALITY_GROUPS: tuple[tuple[str, str], ...] = (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"))
MODALITIES: tuple[str, ...] = tuple(name for group in MODALITY_GROUPS for name in group)
SEGMENTATION_NAMES = ("seg",)

# Prepared arrays are kept in memory up to this many bytes per process, then read
# from the cache for every use (a paper-grid case is about 55 MB).
DEFAULT_MEMORY_BUDGET = 2 * 2**30


@dataclass(frozen=True)
class CaseFiles:
    """One training case on disk."""

    name: str
    image: Path
    mask: Path
    others: tuple[Path, ...] = ()  # the images of the second and later sequences, in model order

    @property
    def images(self) -> tuple[Path, ...]:
        return (self.image, *self.others)


@dataclass(frozen=True)
class SkippedCase:
    """A case that cannot be used, with the reason in a few words."""

    name: str
    reason: str


@dataclass
class PreparedCase:
    """A case on the model grid (see the module docstring for the arrays)."""

    name: str
    image: np.ndarray
    lesion: np.ndarray
    foreground: np.ndarray
    depth: np.ndarray
    lesion_voxels: int


def split_sequences(modality: str) -> tuple[str, ...]:
    """'t1,T2' -> ('t1', 't2'); each must be a known name (see MODALITIES), none twice."""
    names = tuple(part.strip().lower() for part in str(modality).split(","))
    groups = [modality_aliases(name) for name in names]
    if len(set(groups)) != len(groups):
        raise PowdrError(f"--modality names a sequence twice ({modality})")
    return names


def modality_aliases(modality: str) -> tuple[str, ...]:
    """The names a modality goes by: 't1' -> ('t1', 't1n'), 't2f' -> ('flair', 't2f')."""
    modality = modality.lower()
    for group in MODALITY_GROUPS:
        if modality in group:
            return group
    raise PowdrError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")


def sequence_names(sequence: str) -> tuple[str, ...]:
    """The lower-case names a sequence's files may carry: its BraTS aliases, or itself."""
    try:
        return modality_aliases(sequence)
    except PowdrError:  # a sequence BraTS does not know (e.g. "dwi") goes by its own name only
        return (sequence.lower(),)


def strip_sequence(stem: str, names: Iterable[str]) -> str:
    """'Brats18_X_t1ce' -> 'Brats18_X': ``stem`` without a trailing _NAME or -NAME of ``names``."""
    for name in names:
        if stem.lower().endswith((f"_{name.lower()}", f"-{name.lower()}")) and len(stem) > len(name) + 1:
            return stem[: -len(name) - 1]
    return stem


def names_sequence(path: str | os.PathLike, sequence: str) -> bool:
    """True if the file's stem is the sequence or ends in ``_SEQ`` or ``-SEQ`` (or an alias).

    A whole-word match, so ``CASE_t1ce.nii.gz`` is not a t1 image.
    """
    stem = stem_of(path)
    names = sequence_names(sequence)
    return stem.lower() in names or strip_sequence(stem, names) != stem


def _find_file(folder: Path, case: str, suffixes: Iterable[str]) -> Path | None:
    """CASE_suffix or CASE-suffix with a NIfTI extension, if present."""
    for suffix in suffixes:
        for separator in ("_", "-"):
            for extension in NIFTI_SUFFIXES:
                path = folder / f"{case}{separator}{suffix}{extension}"
                if path.is_file():
                    return path
    return None


def _brats_case(folder: Path, modality: str) -> CaseFiles | SkippedCase:
    name = folder.name
    sequences = split_sequences(modality)
    images = [_find_file(folder, name, modality_aliases(sequence)) for sequence in sequences]
    mask = _find_file(folder, name, SEGMENTATION_NAMES)
    missing = [sequence for sequence, image in zip(sequences, images) if image is None]
    if missing:
        return SkippedCase(name, f"no {' or '.join(missing)} image ({name}_{missing[0]}.nii.gz or similar)")
    if mask is None:
        return SkippedCase(name, f"no segmentation ({name}_seg.nii.gz or {name}-seg.nii.gz)")
    return CaseFiles(name, images[0], mask, tuple(images[1:]))  # type: ignore[arg-type]


def _csv_cases(path: Path, sequences: tuple[str, ...] = ("t1",)) -> tuple[list[CaseFiles], list[SkippedCase]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            fields = [(f or "").strip().lower() for f in (reader.fieldnames or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PowdrError(f"the case list {path.name} could not be read ({error})") from None
    # One sequence: an 'image' column. Several: one column per sequence, named like it
    # (or one of its aliases: t1n for t1, t2f for flair, ...).
    columns = ["image"] if len(sequences) == 1 and "image" in fields else [
        next((alias for alias in modality_aliases(s) if alias in fields), s) for s in sequences
    ]
    if "mask" not in fields or any(column not in fields for column in columns):
        wanted = "'image' and 'mask'" if len(sequences) == 1 else ", ".join(f"'{s}'" for s in sequences) + " and 'mask'"
        raise PowdrError(f"the case list {path.name} needs a header with {wanted} columns")
    cases: list[CaseFiles] = []
    skipped: list[SkippedCase] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        empty = [c for c in (*columns, "mask") if not row.get(c)]
        if empty:
            skipped.append(SkippedCase(f"line {number}", f"empty {' and '.join(empty)} entry"))
            continue

        def resolve(text: str) -> Path:
            file = Path(text).expanduser()
            return file if file.is_absolute() else path.parent / file

        images = [resolve(row[c]) for c in columns]
        image = images[0]
        mask = resolve(row["mask"])
        name = row.get("name") or stem_of(image)
        # Names label cache files and logs, so keep them unique.
        count = seen.get(name, 0)
        seen[name] = count + 1
        if count:
            name = f"{name}~{count}"
        absent = [file for file in images if not file.is_file()]
        if absent:
            skipped.append(SkippedCase(name, f"the image {absent[0]} does not exist"))
        elif not mask.is_file():
            skipped.append(SkippedCase(name, f"the mask {mask} does not exist"))
        else:
            cases.append(CaseFiles(name, image, mask, tuple(images[1:])))
    return cases, skipped


def discover_cases(source: str | os.PathLike, modality: str = "t1") -> tuple[list[CaseFiles], list[SkippedCase]]:
    """Find the cases of a BraTS-layout folder or a CSV list (sorted by name for folders).

    Returns the cases whose files exist and the ones that lack a file. A folder that is
    itself one case (holding CASE_t1.nii.gz and CASE_seg.nii.gz) counts as one case.
    """
    source = Path(source).expanduser()
    sequences = split_sequences(modality)
    if not source.exists():
        raise PowdrError(f"the training data {source} does not exist")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise PowdrError(f"--data must be a folder of cases or a .csv list; got the file {source.name}")
        return _csv_cases(source, sequences)
    own = _brats_case(source, modality)
    folders = sorted((p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if isinstance(own, CaseFiles) and not folders:
        return [own], []
    cases: list[CaseFiles] = []
    skipped: list[SkippedCase] = []
    for folder in folders:
        found = _brats_case(folder, modality)
        (cases if isinstance(found, CaseFiles) else skipped).append(found)
    return cases, skipped


@dataclass(frozen=True)
class PrepareSettings:
    """Everything preprocessing depends on besides the files themselves."""

    config: ModelConfig
    labels: tuple[int, ...] | None = None
    dilate: int = 0

    def key_material(self) -> dict[str, object]:
        return {
            "cache_version": CACHE_VERSION,
            "preset": self.config.preset,
            "grid": [list(self.config.grid.shape), list(self.config.grid.spacing)],
            "normalisation": json.loads(self.config.to_json())["normalisation"],
            "labels": list(self.labels) if self.labels else None,
            "dilate": int(self.dilate),
        }


def cache_key(files: CaseFiles, settings: PrepareSettings) -> str:
    """Hex key of a case's prepared arrays: file contents plus preprocessing settings."""
    material = dict(settings.key_material())
    material["image_sha256"] = file_sha256(files.image)
    material["mask_sha256"] = file_sha256(files.mask)
    if files.others:
        material["sequences"] = list(settings.config.sequences)
        material["other_sha256"] = [file_sha256(other) for other in files.others]
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def prepare_case(files: CaseFiles, settings: PrepareSettings) -> PreparedCase:
    """Read one case and map it onto the model grid; PowdrError with the reason if unusable."""
    sequences = settings.config.sequences
    if len(files.images) != len(sequences):
        raise PowdrError(f"the case has {len(files.images)} images but the model {len(sequences)} sequences")
    image = load_volume(files.image, "image")
    mask = load_volume(files.mask, "mask")
    if mask.data.shape != image.data.shape and np.allclose(mask.affine, image.affine, atol=1e-4):
        raise PowdrError(f"the mask has shape {mask.data.shape} but the image {image.data.shape}")
    lesion = lesion_on_image_grid(mask, image, settings.labels)
    prepared = prepare(image, lesion, settings.config)
    model_lesion = prepared.model_lesion
    foreground = model_foreground(image.data, prepared.model_to_input, model_lesion)
    model_image = prepared.model_image.astype(np.float32)
    if files.others:
        # Every sequence on the grid placed on the first one, each from its own file and grid.
        channels = [model_image]
        for name, path in zip(sequences[1:], files.others):
            other = load_volume(path, f"{name} image")
            other_lesion = lesion_on_image_grid(mask, other, settings.labels)
            channels.append(prepare(other, other_lesion, settings.config, prepared.model_affine).model_image)
        model_image = np.stack(channels).astype(np.float32)
    return PreparedCase(
        name=files.name,
        image=model_image,
        lesion=dilate(model_lesion, settings.dilate),
        foreground=foreground,
        depth=foreground_depth(foreground),
        lesion_voxels=int(model_lesion.sum()),
    )


def _atomic_write(path: Path, write: Callable[[object], None]) -> None:
    with atomic_target(path) as temporary:
        with open(temporary, "wb") as stream:
            write(stream)


class CaseCache:
    """Prepared cases on disk: ``NAME-KEY.npz`` (arrays) or ``NAME-KEY.skip.json`` (why not)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _stem(self, name: str, key: str) -> str:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]
        return f"{safe}-{key[:24]}"

    def array_path(self, name: str, key: str) -> Path:
        return self.folder / f"{self._stem(name, key)}.npz"

    def skip_path(self, name: str, key: str) -> Path:
        return self.folder / f"{self._stem(name, key)}.skip.json"

    def save(self, case: PreparedCase, key: str) -> Path:
        path = self.array_path(case.name, key)
        _atomic_write(
            path,
            lambda stream: np.savez(
                stream,
                image=case.image,
                lesion=case.lesion,
                foreground=case.foreground,
                depth=case.depth,
                lesion_voxels=np.int64(case.lesion_voxels),
                grid_shape=np.array(case.lesion.shape, dtype=np.int64),
            ),
        )
        return path

    def save_skip(self, name: str, key: str, reason: str) -> None:
        _atomic_write(self.skip_path(name, key), lambda stream: stream.write(json.dumps({"reason": reason}).encode()))

    def load(self, path: Path, name: str) -> PreparedCase:
        with np.load(path, allow_pickle=False) as arrays:
            return PreparedCase(
                name=name,
                image=arrays["image"],
                lesion=arrays["lesion"],
                foreground=arrays["foreground"],
                depth=arrays["depth"],
                lesion_voxels=int(arrays["lesion_voxels"]),
            )


@dataclass(frozen=True)
class CachedCase:
    """A usable case: where its prepared arrays are and its tumour volume (model voxels)."""

    name: str
    key: str
    path: Path
    lesion_voxels: int


def _prepare_one(files: CaseFiles, settings: PrepareSettings, folder: str) -> CachedCase | SkippedCase:
    """Prepare a case unless cached; runs in worker processes too, so it takes plain arguments."""
    cache = CaseCache(folder)
    try:
        key = cache_key(files, settings)
    except OSError as error:
        return SkippedCase(files.name, f"unreadable ({error.strerror or error})")
    path = cache.array_path(files.name, key)
    skip = cache.skip_path(files.name, key)
    if skip.is_file():
        try:
            return SkippedCase(files.name, json.loads(skip.read_text())["reason"])
        except (OSError, ValueError, KeyError):
            skip.unlink(missing_ok=True)
    if path.is_file():
        try:
            # Only the small members are read here: a run over many cases starts quickly.
            with np.load(path, allow_pickle=False) as arrays:
                voxels = int(arrays["lesion_voxels"])
                if tuple(arrays["grid_shape"].tolist()) == tuple(settings.config.grid.shape):
                    return CachedCase(files.name, key, path, voxels)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    try:
        case = prepare_case(files, settings)
    except PowdrError as error:
        reason = str(error)
        cache.save_skip(files.name, key, reason)
        return SkippedCase(files.name, reason)
    cache.save(case, key)
    return CachedCase(files.name, key, path, case.lesion_voxels)


def prepare_all(
    cases: list[CaseFiles],
    settings: PrepareSettings,
    cache_folder: str | os.PathLike,
    workers: int = 0,
    on_case: Callable[[int, int], None] | None = None,
) -> tuple[list[CachedCase], list[SkippedCase]]:
    """Make sure every case is in the cache; returns (usable, skipped) in input order.

    ``workers`` > 1 prepares cases in that many processes. ``on_case(done, total)``
    reports progress.
    """
    folder = str(Path(cache_folder))
    CaseCache(folder)
    results: list[CachedCase | SkippedCase] = []
    if workers > 1 and len(cases) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_prepare_one, files, settings, folder) for files in cases]
            for done, future in enumerate(futures, start=1):
                results.append(future.result())
                if on_case:
                    on_case(done, len(cases))
    else:
        for done, files in enumerate(cases, start=1):
            results.append(_prepare_one(files, settings, folder))
            if on_case:
                on_case(done, len(cases))
    usable = [r for r in results if isinstance(r, CachedCase)]
    skipped = [r for r in results if isinstance(r, SkippedCase)]
    return usable, skipped


class CaseStore:
    """Random access to prepared cases, from memory when they fit the budget, else from the cache."""

    def __init__(self, cases: list[CachedCase], memory_budget: int = DEFAULT_MEMORY_BUDGET):
        if not cases:
            raise ValueError("a case store needs at least one case")
        self.cases = list(cases)
        self._memory: dict[int, PreparedCase] = {}
        self._reader = CaseCache(self.cases[0].path.parent)
        first = self.get(0)
        per_case = sum(a.nbytes for a in (first.image, first.lesion, first.foreground, first.depth))
        self.in_memory = per_case * len(self.cases) <= memory_budget
        if self.in_memory:
            self._memory[0] = first

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def lesion_volumes(self) -> np.ndarray:
        """Tumour volumes of all cases in model-grid voxels (before dilation), int64 (N,)."""
        return np.array([c.lesion_voxels for c in self.cases], dtype=np.int64)

    def get(self, index: int) -> PreparedCase:
        cached = self._memory.get(index)
        if cached is not None:
            return cached
        entry = self.cases[index]
        case = self._reader.load(entry.path, entry.name)
        if getattr(self, "in_memory", False):
            self._memory[index] = case
        return case
