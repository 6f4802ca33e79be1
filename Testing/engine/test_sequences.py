"""Models of several MRI sequences (BraTS T1, T1ce, T2, FLAIR) on the real four-sequence cases.

What a user relies on: a checkpoint says which sequences it makes and in which order; sample
takes one image per sequence and writes each sequence's outputs on that sequence's own grid
with the lesion voxels exact; training reads all four files of a case, skips cases missing
one, lowers its loss and yields a checkpoint that samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.model.checkpoint import ModelConfig, initial_checkpoint, load_model, read_checkpoint
from powdr_outpaint.model.transforms import SubbandScale, image_to_wavelet, make_condition, wavelet_to_image
from powdr_outpaint.outpainting.outpaint import OutpaintOptions, run_outpaint
from powdr_outpaint.training.data import discover_cases
from powdr_outpaint.training.train import read_log

FOUR = ("t1", "t1ce", "t2", "flair")
REPO = Path(__file__).resolve().parents[2]


def files_of(folder: Path) -> dict[str, Path]:
    return {s: folder / f"{folder.name}_{s}.nii.gz" for s in FOUR}


def reduce(source: Path, dest: Path, names: tuple[str, ...] = (*FOUR, "seg")) -> Path:
    """A copy of a real case at every second voxel (120 x 120 x 78 at 2 mm)."""
    folder = dest / source.name
    folder.mkdir(parents=True, exist_ok=True)
    for kind in names:
        image = nib.load(str(source / f"{source.name}_{kind}.nii.gz"))
        affine = image.affine.copy()
        affine[:3, :3] *= 2.0
        data = np.asarray(image.dataobj)[::2, ::2, ::2]
        nib.save(nib.Nifti1Image(data, affine, image.header), str(folder / f"{source.name}_{kind}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def four_sequence_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("four") / "four.pt"
    return initial_checkpoint(path, "tiny", seed=3, modality="t1,t1ce,t2,flair")


@pytest.fixture(scope="module")
def reduced_case(brats_dir, tmp_path_factory) -> Path:
    return reduce(sorted(p for p in brats_dir.iterdir() if p.is_dir())[0], tmp_path_factory.mktemp("reduced"))


# ----------------------------------------------------------------------------- checkpoints


def test_a_four_sequence_checkpoint_names_its_sequences_and_channels(four_sequence_model):
    config, _ = read_checkpoint(four_sequence_model)
    assert config.sequences == FOUR
    assert (config.network.in_channels, config.network.out_channels) == (64, 32)
    model = load_model(four_sequence_model)
    assert model.network(torch.zeros(1, 64, 24, 24, 16), torch.zeros(1, dtype=torch.long)).shape[1] == 32
    # A one-sequence model keeps its 16 -> 8 network and its configuration text.
    single = ModelConfig.from_preset("tiny")
    assert single.sequences == ("t1",) and single.network.in_channels == 16 and '"modality": "t1"' in single.to_json()


@pytest.mark.parametrize(
    "modality, message",
    [("t1,t1", "twice"), ("t1,,t2", "comma-separated"), ("t1 ,t2", "comma-separated"), ("t1/../x", "comma-separated")],
)
def test_bad_sequence_names_are_refused(modality, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_preset("tiny", modality=modality).validate()


def test_a_refine_stage_of_several_sequences_is_refused_clearly():
    with pytest.raises(ValueError, match="one sequence"):
        ModelConfig.from_preset("tiny-refine", modality="t1,t2").validate()


def test_wavelets_of_four_sequences_are_each_sequences_own():
    images = torch.rand(2, 4, 8, 8, 6) * 2 - 1
    subbands = image_to_wavelet(images, 3.0)
    assert subbands.shape == (2, 32, 4, 4, 3)
    assert torch.allclose(wavelet_to_image(subbands, 3.0), images, atol=1e-6)
    # Band-major: sequence k's band b is channel b * 4 + k, and equals its single-sequence transform.
    for k in range(4):
        alone = image_to_wavelet(images[:, k : k + 1], 3.0)
        assert torch.allclose(subbands[:, k::4], alone, atol=1e-6)
    lesion = torch.zeros(2, 1, 8, 8, 6)
    lesion[:, :, 2:5, 2:5, 2:4] = 1
    condition = make_condition(images, lesion, 3.0)
    assert condition.shape == (2, 32, 4, 4, 3)
    assert torch.allclose(condition[:, 2::4], make_condition(images[:, 2:3], lesion, 3.0), atol=1e-6)


def test_scaled_detail_bands_of_four_sequences_come_back_to_the_same_images():
    """Detail scaling multiplies every sequence's seven detail bands, leaves the low-pass bands as
    before and is undone exactly, so the diffusion changes what it weighs, not what it returns."""
    images = torch.rand(2, 4, 8, 8, 6) * 2 - 1
    plain = image_to_wavelet(images, 3.0)
    scaled = image_to_wavelet(images, SubbandScale(lll=3.0, detail=4.0))
    torch.testing.assert_close(scaled[:, :4], plain[:, :4])
    torch.testing.assert_close(scaled[:, 4:], plain[:, 4:] * 4.0)
    torch.testing.assert_close(wavelet_to_image(scaled, SubbandScale(3.0, 4.0)), images, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- sampling


def test_sample_keeps_the_lesion_exact_in_every_sequence_on_its_own_grid(four_sequence_model, reduced_case, tmp_path):
    files = files_of(reduced_case)
    # T2 on another grid (cropped, so another shape and origin): its outputs stay on that grid.
    t2 = nib.load(str(files["t2"]))
    cropped = t2.slicer[4:-6, 3:-5, 2:]
    files["t2"] = tmp_path / "other grid t2.nii.gz"
    nib.save(cropped, str(files["t2"]))
    mask = reduced_case / f"{reduced_case.name}_seg.nii.gz"
    messages = []

    class Collect:
        def stage(self, stage, message=""):
            messages.append(message)

        def __getattr__(self, name):
            return lambda *a, **k: None

    metadata = run_outpaint(
        files, mask, four_sequence_model, tmp_path / "out", OutpaintOptions(samples=2, steps=2, device="cpu"),
        Collect(),
    )
    outputs = metadata["outputs"]["sequences"]
    assert list(outputs) == list(FOUR)
    assert any("t2 image" in m and "own grid" in m for m in messages)
    for sequence in FOUR:
        original = nib.load(str(files[sequence]))
        data = np.asarray(original.dataobj, dtype=np.float64)
        lesion_on_grid = np.asarray(nib.load(outputs[sequence]["lesion"]).dataobj) > 0
        assert lesion_on_grid.any()
        for path in outputs[sequence]["samples"]:
            assert sequence in Path(path).name
            sample = nib.load(path)
            assert sample.shape == original.shape and np.allclose(sample.affine, original.affine)
            values = np.asarray(sample.dataobj, dtype=np.float64)
            assert np.array_equal(values[lesion_on_grid], data[lesion_on_grid])
            assert not np.array_equal(values[~lesion_on_grid], data[~lesion_on_grid])
        std = np.asarray(nib.load(outputs[sequence]["std"]).dataobj)
        assert std[lesion_on_grid].max() == 0 and std[~lesion_on_grid].max() > 0
        own = json.loads(Path(outputs[sequence]["metadata"]).read_text())
        assert own["sequence"] == sequence and own["sequences"][sequence]["image"] == str(files[sequence].resolve())
    # Each sequence is normalised by its own percentiles.
    percentiles = {s: tuple(metadata["sequences"][s]["intensity_percentiles"]) for s in FOUR}
    assert len(set(percentiles.values())) == 4


def test_the_sequences_are_made_together_not_one_by_one(four_sequence_model, reduced_case, tmp_path):
    """Swapping the FLAIR input changes the T1 output: one network sees every sequence."""
    files = files_of(reduced_case)
    mask = reduced_case / f"{reduced_case.name}_seg.nii.gz"
    options = OutpaintOptions(samples=1, steps=2, device="cpu", seed=5)
    first = run_outpaint(files, mask, four_sequence_model, tmp_path / "a", options)
    swapped = dict(files, flair=files["t2"])
    second = run_outpaint(swapped, mask, four_sequence_model, tmp_path / "b", options)
    t1_a = np.asarray(nib.load(first["outputs"]["sequences"]["t1"]["samples"][0]).dataobj)
    t1_b = np.asarray(nib.load(second["outputs"]["sequences"]["t1"]["samples"][0]).dataobj)
    assert not np.array_equal(t1_a, t1_b)


def test_the_command_line_names_what_is_missing(four_sequence_model, reduced_case, tmp_path):
    files = files_of(reduced_case)
    mask = reduced_case / f"{reduced_case.name}_seg.nii.gz"
    base = [sys.executable, "-m", "powdr_outpaint", "sample", "--checkpoint", str(four_sequence_model),
            "--mask", str(mask), "--out", str(tmp_path / "out"), "--steps", "1", "--samples", "1"]

    def run(*images: str) -> subprocess.CompletedProcess:
        argv = base + [part for image in images for part in ("--image", image)]
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO / "PowdrOutpaint", timeout=300)

    missing = run(*(f"{s}={files[s]}" for s in ("t1", "t1ce", "t2")))
    assert missing.returncode != 0 and "no image for flair" in missing.stderr
    assert "--image flair=FILE" in missing.stderr and "Traceback" not in missing.stderr
    bare = run(str(files["t1"]))
    assert bare.returncode != 0 and "makes 4 sequences together" in bare.stderr
    assert not (tmp_path / "out").exists()
    ok = run(*(f"{s.upper()}={files[s]}" for s in FOUR))  # names are not case-sensitive
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(list((tmp_path / "out").glob("*_flair_outpaint_s00.nii.gz"))) == 1


def test_a_single_sequence_model_takes_a_named_image_too(tiny_checkpoint, reduced_case, tmp_path):
    files = files_of(reduced_case)
    mask = reduced_case / f"{reduced_case.name}_seg.nii.gz"
    options = OutpaintOptions(samples=1, steps=2, device="cpu")
    plain = run_outpaint(files["t1"], mask, tiny_checkpoint, tmp_path / "plain", options)
    named = run_outpaint({"t1": files["t1"]}, mask, tiny_checkpoint, tmp_path / "named", options)
    a = np.asarray(nib.load(plain["outputs"]["samples"][0]).dataobj)
    b = np.asarray(nib.load(named["outputs"]["samples"][0]).dataobj)
    assert np.array_equal(a, b) and "sequences" not in plain["outputs"]
    with pytest.raises(PowdrError, match="flair is not one of its sequences"):
        run_outpaint({"t1": files["t1"], "flair": files["flair"]}, mask, tiny_checkpoint, tmp_path / "x", options)


# ----------------------------------------------------------------------------- training data


def test_brats_cases_are_found_with_every_sequence(brats_dir, tmp_path):
    cases, skipped = discover_cases(brats_dir, "t1,t1ce,t2,flair")
    assert len(cases) == 12 and not skipped
    for case in cases:
        assert [p.name for p in case.images] == [f"{case.name}_{s}.nii.gz" for s in FOUR]
    # A case without FLAIR is listed with the reason and skipped.
    root = tmp_path / "data"
    for number, folder in enumerate(sorted(p for p in brats_dir.iterdir() if p.is_dir())[:2]):
        (root / folder.name).mkdir(parents=True)
        for kind in (*FOUR, "seg"):
            if number == 1 and kind == "flair":
                continue
            (root / folder.name / f"{folder.name}_{kind}.nii.gz").symlink_to(folder / f"{folder.name}_{kind}.nii.gz")
    cases, skipped = discover_cases(root, "t1,t1ce,t2,flair")
    assert len(cases) == 1 and len(skipped) == 1 and "no flair image" in skipped[0].reason


def test_a_csv_names_one_column_per_sequence(brats_dir, tmp_path):
    folders = sorted(p for p in brats_dir.iterdir() if p.is_dir())[:2]
    rows = ["case,t1,t1c,t2,flair,mask"]  # t1c: the 2023 name of t1ce
    for folder in folders:
        rows.append(",".join([folder.name, *(str(folder / f"{folder.name}_{s}.nii.gz") for s in FOUR),
                              str(folder / f"{folder.name}_seg.nii.gz")]))
    listing = tmp_path / "cases.csv"
    listing.write_text("\n".join(rows) + "\n")
    cases, skipped = discover_cases(listing, "t1,t1ce,t2,flair")
    assert not skipped and [c.images[1].name for c in cases] == [f"{f.name}_t1ce.nii.gz" for f in folders]
    with pytest.raises(PowdrError, match="'t1', 't2' and 'mask'"):
        listing.write_text("image,mask\na.nii.gz,b.nii.gz\n")
        discover_cases(listing, "t1,t2")


@pytest.fixture(scope="module")
def trained_four(brats_dir, tmp_path_factory):
    """40 iterations of a tiny four-sequence model on three real cases (one skipped: no FLAIR)."""
    root = tmp_path_factory.mktemp("data4")
    folders = sorted(p for p in brats_dir.iterdir() if p.is_dir())[:4]
    for number, folder in enumerate(folders):
        (root / folder.name).mkdir()
        for kind in (*FOUR, "seg"):
            if number == 3 and kind == "flair":
                continue
            (root / folder.name / f"{folder.name}_{kind}.nii.gz").symlink_to(folder / f"{folder.name}_{kind}.nii.gz")
    out = tmp_path_factory.mktemp("run4")
    result = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "train", "--data", str(root), "--preset", "tiny",
         "--modality", "t1,t1ce,t2,flair", "--out", str(out), "--iterations", "40", "--save-every", "20",
         "--snapshot-every", "0", "--preview-every", "40", "--preview-steps", "2", "--device", "cpu",
         "--threads", "1", "--progress", "none", "--holdout", "1"],
        capture_output=True, text=True, timeout=900, cwd=REPO / "PowdrOutpaint",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result, folders


def test_training_four_sequences_lowers_the_loss_and_samples(trained_four, tmp_path):
    out, result, folders = trained_four
    rows = read_log(out / "train_log.csv")
    losses = np.array([r["loss"] for r in rows])
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.8 * losses[:10].mean(), (losses[:10].mean(), losses[-10:].mean())
    skipped = (out / "skipped_cases.csv").read_text()
    assert folders[3].name in skipped and "flair" in skipped
    config, _ = read_checkpoint(out / "latest.pt")
    assert config.sequences == FOUR and config.training.iterations == 40
    files = files_of(folders[0])
    mask = folders[0] / f"{folders[0].name}_seg.nii.gz"
    metadata = run_outpaint(files, mask, out / "latest.pt", tmp_path / "s", OutpaintOptions(samples=1, steps=3,
                                                                                            device="cpu"))
    flair = nib.load(metadata["outputs"]["sequences"]["flair"]["samples"][0])
    assert flair.shape == nib.load(str(files["flair"])).shape
    assert (out / "preview_0000040.png").is_file()


def test_resuming_with_other_sequences_is_refused(trained_four):
    out, _, folders = trained_four
    result = subprocess.run(
        [sys.executable, "-m", "powdr_outpaint", "train", "--data", str(folders[0].parent), "--preset", "tiny",
         "--modality", "t1", "--out", str(out), "--iterations", "41", "--resume", "--progress", "none"],
        capture_output=True, text=True, timeout=300, cwd=REPO / "PowdrOutpaint",
    )
    assert result.returncode != 0 and "--modality t1 differs" in result.stderr
