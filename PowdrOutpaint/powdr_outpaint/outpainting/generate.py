"""Outpainting many cases in one run: resumable, and split over processes under ``torchrun``.

Layout of the output folder, one subfolder per case::

    OUT/CASE/STEM_outpaint_s00.nii.gz ...      the samples (as ``sample`` writes them)
    OUT/CASE/STEM_outpaint_mean.nii.gz, _std, _lesion
    OUT/CASE/STEM_outpaint_label.nii.gz        the case's label map on the image grid
    OUT/CASE/STEM_outpaint.json                written last: the case is complete

A case is complete when its ``STEM_outpaint.json`` exists; a new run skips it. The
label map keeps the original label values (e.g. BraTS 0, 1, 2, 4); with ``--labels``,
labels that were not kept (and so were outpainted) become 0.

A model of several sequences (checkpoint modality ``t1,t1ce,t2,flair``) needs one image
per sequence and case. In a case folder each is found by its name: a file whose name
(without extension) is the sequence or ends in ``_SEQ`` / ``-SEQ`` for the sequence or
one of its BraTS aliases (``CASE_t1ce.nii.gz``, ``CASE-t1c.nii.gz``; ``_t1`` never
matches ``_t1ce``). In a CSV, one column per sequence, named like it or an alias
(``t1,t1ce,t2,flair,mask[,case]``). Every sequence then has its own ``STEM`` (the
image's stem, ending in the sequence's name) and files on its own input grid; the label
map is written once, on the first sequence's grid, under the first sequence's stem; the
case is complete when every sequence's JSON exists. A case missing a sequence fails with
a sentence naming it, and the run goes on with the others.

Under ``torchrun`` (RANK and WORLD_SIZE in the environment) rank r takes cases
r, r + W, r + 2W, ... of the sorted list; each case's seed depends on its name only,
so the split and resuming do not change the results.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import PowdrError
from ..imaging.preprocess import parse_labels
from ..imaging.resample import resample
from ..imaging.volume_io import NIFTI_SUFFIXES, NRRD_SUFFIXES, Volume, load_volume, save_nifti, stem_of
from ..model.checkpoint import read_checkpoint
from ..progress import Progress
from ..training.data import names_sequence, sequence_names, strip_sequence
from .outpaint import OutpaintOptions, output_names, run_outpaint, sequence_stem

IMAGE_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES
DEFAULT_MASK_GLOBS = ("*seg*", "*mask*", "*label*")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    """One input case: a name (used as its output folder), its image(s) and its label map.

    For a model of several sequences, ``sequences`` names them in the checkpoint's order
    and ``images`` holds one path per sequence (None where none was found); ``image`` is
    the first sequence's (or, when that is missing, where it was looked for). ``problem``
    says in one sentence why the case cannot be run (a sequence missing); such a case is
    reported as failed without being read.
    """

    name: str
    image: Path
    mask: Path
    sequences: tuple[str, ...] = ()
    images: tuple[Path | None, ...] = ()
    problem: str | None = None

    @property
    def inputs(self) -> Path | dict[str, Path]:
        """What ``run_outpaint`` takes: the image, or {sequence: image} for several sequences."""
        if not self.sequences:
            return self.image
        return {name: path for name, path in zip(self.sequences, self.images) if path is not None}

    @property
    def stems(self) -> list[str]:
        """The output file stems, one per sequence (the first names the label map)."""
        if not self.sequences:
            return [stem_of(self.image)]
        return [sequence_stem(path or self.image, name) for name, path in zip(self.sequences, self.images)]


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(IMAGE_SUFFIXES)


def safe_name(name: str) -> str:
    """A case name usable as a folder and an nnU-Net identifier (letters, digits, . _ -)."""
    cleaned = _SAFE_NAME.sub("_", name.strip()).strip("._")
    if not cleaned:
        raise PowdrError(f"the case name {name!r} has no usable characters")
    return cleaned


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern.lower()) for pattern in patterns)


def _missing_sentence(case: str, missing: list[str]) -> str:
    examples = ", ".join(f"{case}_{name}.nii.gz" for name in missing)
    aliases = [alias for name in missing for alias in sequence_names(name) if alias != name.lower()]
    also = f"; the names {', '.join(aliases)} count too" if aliases else ""
    images = "image" if len(missing) == 1 else "images"
    return f"the case {case} has no {' and '.join(missing)} {images} (looked for files named like {examples}{also})"


def _sequence_case(sub: Path, files: list[Path], mask: Path, sequences: tuple[str, ...]) -> Case:
    """A case folder of a model of several sequences: each sequence's file found by its name."""
    found: list[Path | None] = []
    missing: list[str] = []
    problems: list[str] = []
    for sequence in sequences:
        candidates = [p for p in files if p != mask and names_sequence(p, sequence)]
        if len(candidates) > 1:
            problems.append(
                f"the case folder {sub.name} has {len(candidates)} {sequence} images "
                f"({', '.join(p.name for p in candidates)}); keep one"
            )
        elif not candidates:
            missing.append(sequence)
        found.append(candidates[0] if len(candidates) == 1 else None)
    if missing:
        problems.insert(0, _missing_sentence(sub.name, missing))
    first = found[0] or sub / f"{sub.name}_{sequences[0]}.nii.gz"
    return Case(safe_name(sub.name), first, mask, sequences, tuple(found), "; ".join(problems) or None)


def _cases_from_folder(
    folder: Path, image_glob: str, mask_globs: tuple[str, ...], sequences: tuple[str, ...] = ()
) -> list[Case]:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise PowdrError(
            f"{folder} has no case subfolders; put each case (an image and its mask) in its own "
            "subfolder, or list the cases in a CSV file with columns image,mask"
        )
    cases = []
    for sub in subfolders:
        files = sorted(p for p in sub.iterdir() if _is_image_file(p))
        if not files:
            continue
        masks = [p for p in files if _matches(p.name, mask_globs)]
        if len(masks) != 1:
            raise PowdrError(
                f"the case folder {sub.name} has {len(masks)} mask files matching {', '.join(mask_globs)}; "
                "exactly one is needed (choose with --mask-glob)"
            )
        if sequences:
            cases.append(_sequence_case(sub, files, masks[0], sequences))
            continue
        images = [p for p in files if p not in masks and fnmatch.fnmatch(p.name.lower(), image_glob.lower())]
        if len(images) != 1:
            found = ", ".join(p.name for p in images) or "none"
            raise PowdrError(
                f"the case folder {sub.name} has {len(images)} candidate images ({found}); "
                "exactly one is needed (choose with --image-glob, e.g. '*_t1.nii.gz')"
            )
        cases.append(Case(safe_name(sub.name), images[0], masks[0]))
    if not cases:
        raise PowdrError(f"no case subfolder of {folder} holds an image (.nii, .nii.gz or .nrrd)")
    return cases


def _cases_from_csv(path: Path, sequences: tuple[str, ...] = ()) -> list[Case]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # not the Windows code page
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PowdrError(f"the case list {path.name} could not be read ({error})") from None
    wanted = (",".join(sequences) if sequences else "image") + ",mask"
    if not rows:
        raise PowdrError(f"the case list {path.name} has no rows (columns {wanted} and optionally case)")
    columns = {name.strip().lower(): name for name in rows[0].keys() if name}
    if sequences:
        # One column per sequence, named like it or one of its aliases (t1n for t1, t2f for flair).
        found = {s: next((columns[a] for a in sequence_names(s) if a in columns), None) for s in sequences}
        absent = [s for s, column in found.items() if column is None]
        if absent or "mask" not in columns:
            lacking = ", ".join(absent + ([] if "mask" in columns else ["mask"]))
            raise PowdrError(
                f"the case list {path.name} needs the columns {wanted} (optionally case), one per sequence "
                f"of the model (BraTS aliases such as t1n or t2f count); it lacks {lacking}"
            )
        image_columns = [found[s] for s in sequences]
    else:
        if "image" not in columns or "mask" not in columns:
            raise PowdrError(f"the case list {path.name} needs the columns image and mask (optionally case)")
        image_columns = [columns["image"]]
    name_column = next((columns[c] for c in ("case", "name", "id") if c in columns), None)

    def resolve(text: str) -> Path:
        # Relative paths are relative to the CSV's folder, so a dataset folder can move.
        return Path(text) if Path(text).is_absolute() else path.parent / text

    cases = []
    for number, row in enumerate(rows, start=2):
        texts = [(row.get(column) or "").strip() for column in image_columns]
        mask_text = (row.get(columns["mask"]) or "").strip()
        if not any(texts) or not mask_text:
            raise PowdrError(f"line {number} of {path.name} lacks an image or a mask")
        mask = resolve(mask_text)
        name = (row.get(name_column) or "").strip() if name_column else ""
        if not sequences:
            image = resolve(texts[0])
            cases.append(Case(safe_name(name or stem_of(image)), image, mask))
            continue
        images = [resolve(text) if text else None for text in texts]
        first = next(p for p in images if p is not None)
        # Without a case column the name is the first image's stem, less its sequence's name.
        name = safe_name(name or strip_sequence(stem_of(first), sequence_names(sequences[images.index(first)])))
        # A file that is named but absent is as missing as an empty cell: say so before reading anything.
        missing = [s for s, p in zip(sequences, images) if p is None or not p.is_file()]
        images = [p if p is not None and p.is_file() else None for p in images]
        problem = None
        if missing:
            problem = (
                f"the case {name} (line {number} of {path.name}) has no {' and '.join(missing)} "
                f"image{'s' if len(missing) > 1 else ''} (the {'cells are' if len(missing) > 1 else 'cell is'} "
                "empty or name files that do not exist)"
            )
        cases.append(Case(name, images[0] or first, mask, sequences, tuple(images), problem))
    return cases


def discover_cases(
    source: str | os.PathLike,
    image_glob: str = "*",
    mask_globs: tuple[str, ...] = DEFAULT_MASK_GLOBS,
    sequences: tuple[str, ...] | None = None,
) -> list[Case]:
    """The cases of a CSV file (columns image, mask, optional case) or of a folder of case folders.

    In a folder, each subfolder is one case: its mask is the one image file matching
    ``mask_globs`` (default ``*seg*``, ``*mask*``, ``*label*``), its image the one other
    file matching ``image_glob``. Returns the cases sorted by name; names must be unique.

    ``sequences`` (a checkpoint's ``ModelConfig.sequences``): with two or more, each case
    needs one image per sequence, found by name in a folder (see the module docstring) or
    in a CSV column per sequence; ``image_glob`` does not apply. A case missing one is
    still listed, with ``problem`` saying what is missing, so that it is reported.
    """
    source = Path(source)
    several = tuple(s.lower() for s in sequences) if sequences and len(sequences) > 1 else ()
    if several and image_glob != "*":
        raise PowdrError(
            f"--image-glob picks one image per case, but this model makes {len(several)} sequences "
            f"({', '.join(several)}); each is found by its name (CASE_{several[1]}.nii.gz, ...), "
            "so leave --image-glob out"
        )
    if source.is_dir():
        cases = _cases_from_folder(source, image_glob, tuple(mask_globs), several)
    elif source.is_file():
        cases = _cases_from_csv(source, several)
    else:
        raise PowdrError(f"--cases {source} is neither a CSV file nor a folder")
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PowdrError(f"case names must be unique; repeated: {', '.join(duplicates)}")
    return sorted(cases, key=lambda c: c.name)


def distributed_env(environ: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) outside torchrun."""
    environ = os.environ if environ is None else environ
    try:
        rank = int(environ.get("RANK", "0"))
        world = int(environ.get("WORLD_SIZE", "1"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise PowdrError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world:
        raise PowdrError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return rank, world, local


def shard(cases: list[Case], rank: int, world: int) -> list[Case]:
    """This rank's share: every world-th case, starting at ``rank``."""
    return cases[rank::world]


def case_seed(seed: int, name: str) -> int:
    """A case's seed: from the run's seed and the case name, independent of order and rank."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)


def case_folder(out_dir: str | os.PathLike, case: Case) -> Path:
    return Path(out_dir) / case.name


def metadata_files(out_dir: str | os.PathLike, case: Case) -> list[Path]:
    """The run JSON of every sequence of the case (one for a single-sequence model)."""
    folder = case_folder(out_dir, case)
    return [folder / str(output_names(stem, 1)["metadata"]) for stem in case.stems]


def metadata_file(out_dir: str | os.PathLike, case: Case) -> Path:
    """The file whose presence marks a case as complete (the last sequence's JSON, written last)."""
    return metadata_files(out_dir, case)[-1]


def label_file(folder: str | os.PathLike, stem: str) -> Path:
    return Path(folder) / f"{stem}_outpaint_label.nii.gz"


def is_complete(out_dir: str | os.PathLike, case: Case) -> bool:
    """True when every sequence's JSON exists (a case with a ``problem`` never is)."""
    # Every file, not only the last: a run killed between two JSON files is redone.
    return case.problem is None and all(path.is_file() for path in metadata_files(out_dir, case))


def original_label_map(mask: Volume, image: Volume, labels: tuple[int, ...] | None = None) -> np.ndarray:
    """The label map on the image's grid with its original integer values.

    A mask on another grid is resampled by nearest neighbour in physical space (values
    are copied, never averaged). With ``labels``, other labels become 0: those regions
    were outpainted, so they no longer hold that tissue.

    Returns:
        (X, Y, Z) array of the image's shape, uint8 when the values fit, else int32.
    """
    values = np.rint(np.asarray(mask.data, dtype=np.float64)).astype(np.int64)
    same_grid = mask.data.shape == image.data.shape and np.allclose(mask.affine, image.affine, atol=1e-4)
    if not same_grid:
        image_to_mask = np.linalg.solve(mask.affine, image.affine)
        values = resample(values.astype(np.int32), image_to_mask, image.data.shape, order=0, cval=0).astype(np.int64)
    if labels is not None:
        values = np.where(np.isin(values, labels), values, 0)
    if values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8)
    return values.astype(np.int32)


def write_label_map(case: Case, folder: Path, labels: tuple[int, ...] | None) -> Path:
    """Write the case's label map (original values, image grid) beside its outputs.

    For several sequences: on the first sequence's grid, under its stem.
    """
    image = load_volume(case.image, f"{case.sequences[0]} image" if case.sequences else "image")
    mask = load_volume(case.mask, "mask")
    data = original_label_map(mask, image, labels)
    return save_nifti(label_file(folder, case.stems[0]), data, image.affine, image.header)


def _check_sequences(cases: list[Case], sequences: tuple[str, ...]) -> None:
    """Refuse cases found for other sequences than the checkpoint's, before anything is written."""
    wanted = tuple(s.lower() for s in sequences) if len(sequences) > 1 else ()
    for case in cases:
        if tuple(s.lower() for s in case.sequences) != wanted:
            have = ", ".join(case.sequences) or "one image"
            raise PowdrError(
                f"the case {case.name} was found with {have}, but the checkpoint makes {', '.join(sequences)}; "
                "find the cases with discover_cases(..., sequences=<the checkpoint's sequences>)"
            )


def _remove_partial_files(folder: Path) -> None:
    # A run killed mid-write leaves hidden temporary files (".NAME.part...") behind.
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(".") and ".part" in path.name and path.is_file():
                path.unlink(missing_ok=True)


class _Overall:
    """One progress display for the whole run: a bar (text) or JSON lines with the case."""

    def __init__(self, mode: str, cases: int, stream: TextIO | None, prefix: str, bar: bool = True):
        self.mode = mode
        self.show_bar = bar
        self.cases = cases
        self.stream = stream
        self.prefix = prefix
        self.started = time.perf_counter()
        self.units_per_case: int | None = None
        self.base = 0
        self.index = 0
        self.name = ""
        self.bar = None
        self._last_json = 0.0

    def _json(self, payload: dict[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps(payload) + "\n")
        stream.flush()

    def begin_case(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        if self.mode == "json":
            self._json({"event": "case", "case": name, "case_index": index + 1, "cases": self.cases})

    def case_units(self, total: int) -> None:
        if self.units_per_case is None:
            self.units_per_case = total
            if self.mode == "text" and self.show_bar:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=total * self.cases, desc=f"{self.prefix}cases", unit="step",
                    file=self.stream or sys.stderr, dynamic_ncols=True,
                )

    def case_advance(self, done: int, fields: dict[str, Any]) -> None:
        total = (self.units_per_case or 1) * self.cases
        current = self.base + done
        if self.mode == "text" and self.bar is not None:
            self.bar.n = min(current, total)
            self.bar.set_postfix_str(
                f"case {self.index + 1}/{self.cases} {self.name}, sample {fields.get('sample', '?')}", refresh=False
            )
            self.bar.refresh()
        elif self.mode == "json":
            now = time.perf_counter()
            if now - self._last_json < 0.2 and done < (self.units_per_case or 0):
                return
            self._last_json = now
            elapsed = now - self.started
            eta = elapsed / current * (total - current) if current else None
            payload = {
                "event": "progress", "stage": "sampling", "case": self.name, "case_index": self.index + 1,
                "cases": self.cases, "fraction": round(current / total, 4),
                "eta_s": None if eta is None else round(eta, 1),
            }
            payload.update(fields)
            self._json(payload)

    def end_case(self, status: str, message: str = "") -> None:
        self.base += self.units_per_case or 0
        if self.mode == "text":
            text = f"{self.prefix}{self.name}: {status}{' (' + message + ')' if message else ''}"
            if self.bar is not None:
                self.bar.n = min(self.base, self.bar.total)
                self.bar.refresh()
                self.bar.write(text, file=self.stream or sys.stderr)
            else:
                print(text, file=self.stream or sys.stderr, flush=True)
        elif self.mode == "json":
            self._json({"event": "case_done", "case": self.name, "status": status, "message": message})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CaseProgress(Progress):
    """The engine's progress interface, forwarded to the run's overall display."""

    def __init__(self, overall: _Overall):
        super().__init__("none")
        self.overall = overall

    def stage(self, stage: str, message: str = "") -> None:  # the bar says enough
        pass

    def start_work(self, total_units: int, description: str) -> None:
        self.total_units = max(1, total_units)
        self.overall.case_units(self.total_units)

    def advance(self, done_units: int, **fields: Any) -> None:
        self.overall.case_advance(done_units, fields)

    def done(self, outputs: dict[str, Any], message: str = "") -> None:
        pass


@dataclass
class GenerateSummary:
    """What one process did: case names generated, skipped (complete before) and failed."""

    rank: int = 0
    world: int = 1
    assigned: int = 0
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run_generate(
    cases: list[Case],
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: OutpaintOptions,
    progress: str = "text",
    rank: int = 0,
    world: int = 1,
    stream: TextIO | None = None,
) -> GenerateSummary:
    """Outpaint this rank's share of ``cases`` into ``out_dir``/CASE, skipping complete ones.

    A case that fails with a user error (or that misses a sequence of a multi-sequence
    checkpoint: ``case.problem``) is reported and the run goes on with the next;
    ``summary.failed`` lists them. ``options.seed`` is combined with each case's name.
    ``cases`` must have been found for the checkpoint's sequences (``discover_cases``'s
    ``sequences``).
    """
    options.validate()
    labels = parse_labels(options.labels)
    # A bad checkpoint would fail every case: refuse it once, before anything is written.
    config, _ = read_checkpoint(checkpoint)
    _check_sequences(cases, config.sequences)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PowdrError(f"--out {out_dir} exists and is not a folder")
    started = time.perf_counter()
    mine = shard(cases, rank, world)
    summary = GenerateSummary(rank=rank, world=world, assigned=len(mine))
    todo = []
    for case in mine:
        if is_complete(out_dir, case):
            summary.skipped.append(case.name)
        else:
            todo.append(case)
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""
    if progress == "text" and summary.skipped:
        print(
            f"{prefix}{len(summary.skipped)} of {len(mine)} cases already complete: skipped",
            file=stream or sys.stderr, flush=True,
        )
    # Under torchrun only rank 0 draws a bar (bars of several processes garble a
    # terminal); every rank still prints a line per finished case.
    overall = _Overall(progress, len(todo), stream, prefix, bar=rank == 0)
    try:
        for index, case in enumerate(todo):
            overall.begin_case(index, case.name)
            folder = case_folder(out_dir, case)
            _remove_partial_files(folder)
            case_options = replace(options, seed=case_seed(options.seed, case.name))
            try:
                if case.problem is not None:
                    raise PowdrError(case.problem)  # nothing to read: no folder is made for it
                folder.mkdir(parents=True, exist_ok=True)
                write_label_map(case, folder, labels)
                run_outpaint(case.inputs, case.mask, checkpoint, folder, case_options, _CaseProgress(overall))
            except PowdrError as error:
                summary.failed[case.name] = str(error)
                if case.problem is None and not is_complete(out_dir, case):
                    label_file(folder, case.stems[0]).unlink(missing_ok=True)
                overall.end_case("failed", str(error))
                continue
            summary.generated.append(case.name)
            overall.end_case("done")
    finally:
        overall.close()
    summary.seconds = time.perf_counter() - started
    return summary
