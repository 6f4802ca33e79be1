"""Helpers shared by the quality-assurance tests (metrics, evaluate, generate, export).

The sample data are real BraTS cases from ``../shared/data/brats18`` (see
Testing/conftest.py). Tests that run the model many times use copies reduced to every
second voxel (120 x 120 x 78 at 2 mm): still real anatomy and labels, eight times
less to write, so a case takes a second or two on two CPU cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "PowdrOutpaint"


SEQUENCES = ("t1", "t1ce", "t2", "flair")  # BraTS 2018's four, in the usual channel order


def case_files(case_dir: Path, sequences: tuple[str, ...] = ("t1",)) -> dict:
    """{'image' (the first sequence's), 'mask', 'name', 'images' ({sequence: path})} of a BraTS case folder."""
    images = {sequence: case_dir / f"{case_dir.name}_{sequence}.nii.gz" for sequence in sequences}
    return {
        "image": images[sequences[0]],
        "mask": case_dir / f"{case_dir.name}_seg.nii.gz",
        "name": case_dir.name,
        "images": images,
    }


def linked_cases(folders: list[Path], root: Path) -> Path:
    """A data folder ``root`` holding links to the given case folders (nothing copied)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        (root / folder.name).symlink_to(folder, target_is_directory=True)
    return root


def reduced_cases(
    brats_dir: Path, dest: Path, count: int, sequences: tuple[str, ...] = ("t1",)
) -> list[dict]:
    """Copies of the first ``count`` BraTS cases at every second voxel, one folder per case.

    ``sequences``: which images to copy besides the segmentation (e.g. ``SEQUENCES``).
    """
    sources = sorted(p for p in brats_dir.iterdir() if p.is_dir() and p.name.startswith("Brats18_"))[:count]
    cases = []
    for source in sources:
        folder = dest / source.name
        folder.mkdir(parents=True, exist_ok=True)
        for kind in (*sequences, "seg"):
            image = nib.load(str(source / f"{source.name}_{kind}.nii.gz"))
            data = np.asarray(image.dataobj)[::2, ::2, ::2]
            affine = image.affine.copy()
            affine[:3, :3] *= 2.0
            nib.save(nib.Nifti1Image(data, affine, image.header), str(folder / f"{source.name}_{kind}.nii.gz"))
        cases.append(case_files(folder, sequences))
    return cases


def run_export(source: Path, out: Path, *extra: object, dataset_id: int = 501,
               name: str = "BrainOutpaint") -> tuple[int, str]:
    """``powdr-outpaint export --format nnunet`` in this process; returns (exit code, stderr)."""
    code, _, err = run_cli(
        "export", "--from", source, "--format", "nnunet", "--dataset-id", dataset_id, "--name", name,
        "--out", out, "--progress", "none", *extra,
    )
    return code, err


def run_cli(*argv: object) -> tuple[int, str, str]:
    """``powdr-outpaint ARGV`` in this process; returns (exit code, stdout, stderr)."""
    from powdr_outpaint.commands.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def subprocess_env() -> dict[str, str]:
    """The environment for ``python -m powdr_outpaint`` in a child process (engine importable)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ENGINE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def cli_command(*argv: object) -> list[str]:
    return [sys.executable, "-m", "powdr_outpaint", *map(str, argv)]


def sample_on_input_grid(case: dict, checkpoint: Path, out: Path, *options: object):
    """``sample`` one volume of a BraTS case in a child process; checks what every run owes the
    user (the input's grid, the lesion copied exactly) and returns (sample array, completed process)."""
    import subprocess

    result = subprocess.run(
        cli_command("sample", "--image", case["image"], "--mask", case["mask"], "--checkpoint", checkpoint,
                    "--samples", 1, "--device", "cpu", "--out", out, *options),
        capture_output=True, text=True, timeout=600, env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    original = nib.load(str(case["image"]))
    lesion = np.asarray(nib.load(str(case["mask"])).dataobj) > 0
    sample = np.asarray(nib.load(str(next(out.glob("*_outpaint_s00.nii.gz")))).dataobj)
    assert sample.shape == original.shape
    assert np.array_equal(sample[lesion], np.asarray(original.dataobj)[lesion])
    return sample, result


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


NNUNET_REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")


def read_nnunet_raw(folder: Path) -> dict:
    """Read a raw dataset back by nnU-Net v2's dataset.json conventions; assert each rule.

    The rules are those of nnU-Net v2's dataset format and integrity check: the four
    required keys; channels named "0".."C-1"; images ``ID_XXXX<file_ending>`` with every
    channel present; a label ``ID<file_ending>`` for each ID; numTraining equal to the
    number of IDs; label files holding only declared values; every channel's grid equal
    to its label's. Returns the dataset.json, the IDs, the label values found and whether
    the declared labels are consecutive (nnU-Net v2 requires it before planning).
    """
    dataset = json.loads((folder / "dataset.json").read_text())
    assert all(key in dataset for key in NNUNET_REQUIRED_KEYS), set(NNUNET_REQUIRED_KEYS) - set(dataset)
    channels = dataset["channel_names"]
    assert sorted(channels, key=int) == [str(i) for i in range(len(channels))]
    ending = dataset["file_ending"]
    assert ending == ".nii.gz"
    labels = dataset["labels"]
    assert labels["background"] == 0 and all(isinstance(v, int) for v in labels.values())
    declared = sorted(labels.values())
    pattern = re.compile(rf"^(?P<id>.+)_(?P<channel>\d{{4}}){re.escape(ending)}$")
    found: dict[str, set[int]] = {}
    for path in (folder / "imagesTr").iterdir():
        match = pattern.match(path.name)
        assert match, f"{path.name} does not follow ID_XXXX{ending}"
        found.setdefault(match["id"], set()).add(int(match["channel"]))
    assert all(ch == set(range(len(channels))) for ch in found.values())
    assert dataset["numTraining"] == len(found)
    assert {p.name for p in (folder / "labelsTr").iterdir()} == {f"{i}{ending}" for i in found}
    values: set[int] = set()
    for identifier in found:
        label = nib.load(str(folder / "labelsTr" / f"{identifier}{ending}"))
        for channel in range(len(channels)):
            image = nib.load(str(folder / "imagesTr" / f"{identifier}_{channel:04d}{ending}"))
            assert image.shape == label.shape, (identifier, channel)
            np.testing.assert_allclose(image.affine, label.affine, atol=1e-6, err_msg=f"{identifier} {channel}")
            np.testing.assert_allclose(image.header.get_zooms(), label.header.get_zooms(), atol=1e-6)
        data = np.asarray(label.dataobj)
        assert np.issubdtype(data.dtype, np.integer), identifier
        present = set(int(v) for v in np.unique(data))
        assert present <= set(declared), (identifier, present, declared)
        values |= present
    return {
        "dataset": dataset,
        "ids": sorted(found),
        "values": values,
        "consecutive": declared == list(range(len(declared))),
    }
