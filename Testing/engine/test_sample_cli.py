"""``powdr-outpaint sample`` end to end, in a real subprocess, on a BraTS case."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest


def run_sample(image, mask, checkpoint, out, *extra, progress="json"):
    command = [
        sys.executable, "-m", "powdr_outpaint", "sample",
        "--image", str(image), "--mask", str(mask), "--checkpoint", str(checkpoint),
        "--samples", "3", "--steps", "5", "--device", "cpu", "--progress", progress,
        "--out", str(out), *map(str, extra),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def load(path):
    image = nib.load(str(path))
    return image.get_fdata(dtype=np.float64), image.affine


@pytest.fixture(scope="module")
def sampled(brats_case, tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sampled")
    result = run_sample(brats_case["image"], brats_case["mask"], tiny_checkpoint, out, "--batch-size", 2)
    assert result.returncode == 0, result.stderr
    return out, result


def test_outputs_are_named_and_complete(sampled, brats_case):
    out, _ = sampled
    stem = brats_case["image"].name[: -len(".nii.gz")]
    expected = {f"{stem}_outpaint_s{i:02d}.nii.gz" for i in range(3)} | {
        f"{stem}_outpaint_{kind}.nii.gz" for kind in ("mean", "std", "lesion")
    } | {f"{stem}_outpaint.json"}
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    metadata = json.loads((out / f"{stem}_outpaint.json").read_text())
    assert metadata["checkpoint_sha256"] and metadata["options"]["seed"] == 0
    # The default sampler is recorded (the steps are the test's own --steps).
    assert metadata["options"]["sampler"] == "dpm++2m" and metadata["options"]["steps"] == 5
    assert {"torch", "numpy", "powdr_outpaint"} <= set(metadata["versions"])
    assert metadata["timings"]["total_s"] > 0


def test_every_output_is_on_the_input_grid(sampled, brats_case):
    out, _ = sampled
    reference = nib.load(str(brats_case["image"]))
    for path in out.glob("*.nii.gz"):
        image = nib.load(str(path))
        assert image.shape == reference.shape, path.name
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5, err_msg=path.name)


def test_lesion_is_preserved_and_std_is_zero_inside_it(sampled, brats_case):
    out, _ = sampled
    original, _ = load(brats_case["image"])
    lesion = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    samples = [load(p)[0] for p in sorted(out.glob("*_outpaint_s[0-9]*.nii.gz"))]
    assert len(samples) == 3
    for sample in samples:
        assert np.array_equal(sample[lesion], original[lesion])
    saved_lesion, _ = load(next(out.glob("*_outpaint_lesion.nii.gz")))
    assert np.array_equal(saved_lesion > 0, lesion)
    std, _ = load(next(out.glob("*_outpaint_std.nii.gz")))
    mean, _ = load(next(out.glob("*_outpaint_mean.nii.gz")))
    assert np.all(std[lesion] == 0)
    brain_outside = (original > 0) & ~lesion
    assert np.mean(std[brain_outside] > 0) > 0.9
    average = np.mean(samples, axis=0)
    np.testing.assert_allclose(mean, average, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(std, np.std(samples, axis=0), rtol=1e-4, atol=1e-3)


def test_json_progress_lines(sampled):
    _, result = sampled
    events = [json.loads(line) for line in result.stdout.splitlines()]
    progress = [e for e in events if e["event"] == "progress" and e.get("stage") == "sampling" and "step" in e]
    assert progress, result.stdout
    for key in ("stage", "step", "total", "sample", "samples", "eta_s", "fraction"):
        assert key in progress[-1]
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["total"] == 5
    assert events[-1]["event"] == "done" and len(events[-1]["outputs"]["samples"]) == 3


def test_same_seed_gives_identical_outputs_and_another_seed_does_not(sampled, brats_case, tiny_checkpoint, tmp_path):
    out, _ = sampled
    again = run_sample(brats_case["image"], brats_case["mask"], tiny_checkpoint, tmp_path / "a", "--batch-size", 2)
    assert again.returncode == 0, again.stderr
    for name in ("s00", "s02", "std"):
        first = load(next(out.glob(f"*_outpaint_{name}.nii.gz")))[0]
        second = load(next((tmp_path / "a").glob(f"*_outpaint_{name}.nii.gz")))[0]
        assert np.array_equal(first, second), name
    other = run_sample(brats_case["image"], brats_case["mask"], tiny_checkpoint, tmp_path / "b", "--seed", 7)
    assert other.returncode == 0, other.stderr
    first = load(next(out.glob("*_outpaint_s00.nii.gz")))[0]
    different = load(next((tmp_path / "b").glob("*_outpaint_s00.nii.gz")))[0]
    assert not np.array_equal(first, different)


def test_new_tissue_is_scaled_to_the_input_level_by_one_factor_per_sample(sampled, brats_case, tiny_checkpoint,
                                                                         tmp_path):
    out, _ = sampled
    stem = brats_case["image"].name[: -len(".nii.gz")]
    factors = json.loads((out / f"{stem}_outpaint.json").read_text())["tissue_scale"]
    assert len(factors) == 3 and all(2 / 3 <= f <= 1.5 for f in factors)
    raw = run_sample(brats_case["image"], brats_case["mask"], tiny_checkpoint, tmp_path, "--batch-size", 2,
                     "--tissue-level", "model")
    assert raw.returncode == 0, raw.stderr
    assert json.loads((tmp_path / f"{stem}_outpaint.json").read_text())["tissue_scale"] == []
    original, _ = load(brats_case["image"])
    lesion = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    background = original.min()
    # Away from the lesion's seam, each sample is the raw one scaled about the background.
    from scipy import ndimage
    far = ~ndimage.binary_dilation(lesion, iterations=12)
    for index, factor in enumerate(factors):
        scaled, _ = load(out / f"{stem}_outpaint_s{index:02d}.nii.gz")
        drawn, _ = load(tmp_path / f"{stem}_outpaint_s{index:02d}.nii.gz")
        np.testing.assert_allclose(scaled[far] - background, factor * (drawn[far] - background),
                                   rtol=1e-4, atol=1e-3 * (original.max() - background))


def test_labels_option_and_model_preservation(brats_case, tiny_checkpoint, tmp_path):
    result = run_sample(
        brats_case["image"], brats_case["mask"], tiny_checkpoint, tmp_path,
        "--labels", "4", "--preserve", "model", "--sampler", "ddim", "--eta", "0.5", progress="text",
    )
    assert result.returncode == 0, result.stderr
    assert "sampling" in result.stderr  # the progress bar
    seg = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj)
    saved = load(next(tmp_path.glob("*_outpaint_lesion.nii.gz")))[0] > 0
    assert np.array_equal(saved, seg == 4)
    original, _ = load(brats_case["image"])
    sample, _ = load(next(tmp_path.glob("*_outpaint_s00.nii.gz")))
    # With --preserve model the lesion is the network's rendering, not a copy.
    assert not np.array_equal(sample[seg == 4], original[seg == 4])


def test_nrrd_input_and_mask_on_another_grid(brats_case, tiny_checkpoint, tmp_path):
    import nrrd

    reference = nib.load(str(brats_case["image"]))
    seg = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj)
    # The mask as NRRD (LPS) on a cropped, flipped grid.
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = seg.shape[1] - 1 - 20
    affine = reference.affine @ np.array([[1, 0, 0, 30], [0, 1, 0, 20], [0, 0, 1, 0], [0, 0, 0, 1.0]]) @ flip
    data = seg[30:, 20:, :][:, ::-1, :]
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    mask_path = tmp_path / "mask.nrrd"
    nrrd.write(str(mask_path), np.ascontiguousarray(data), {
        "space": "left-posterior-superior", "space directions": lps[:, :3].T, "space origin": lps[:, 3],
    })
    result = run_sample(brats_case["image"], mask_path, tiny_checkpoint, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    saved = load(next((tmp_path / "out").glob("*_outpaint_lesion.nii.gz")))[0] > 0
    expected = np.zeros_like(saved)
    expected[30:, 20:, :] = seg[30:, 20:, :] > 0
    assert np.array_equal(saved, expected)


def _write(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("problem", ["empty mask", "no overlap", "4-D image", "NaN image", "lesion too large",
                                     "missing image", "bad checkpoint"])
def test_bad_input_gives_one_clear_error_and_writes_nothing(problem, brats_case, tiny_checkpoint, tmp_path):
    reference = nib.load(str(brats_case["image"]))
    data = reference.get_fdata(dtype=np.float32)
    affine = reference.affine
    seg = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj)
    image, mask, checkpoint = brats_case["image"], brats_case["mask"], tiny_checkpoint
    expected = {
        "empty mask": "empty", "no overlap": "does not overlap", "4-D image": "single 3-D volume",
        "NaN image": "NaN", "lesion too large": "larger than the model's field of view",
        "missing image": "does not exist", "bad checkpoint": "not a PyTorch file",
    }[problem]
    if problem == "empty mask":
        mask = _write(tmp_path / "m.nii.gz", np.zeros_like(seg), affine)
    elif problem == "no overlap":
        far = affine.copy()
        far[:3, 3] += 500
        mask = _write(tmp_path / "m.nii.gz", seg, far)
    elif problem == "4-D image":
        image = _write(tmp_path / "i.nii.gz", np.stack([data, data], axis=-1), affine)
    elif problem == "NaN image":
        data[100, 100, 70] = np.nan
        image = _write(tmp_path / "i.nii.gz", data, affine)
    elif problem == "lesion too large":
        mask = _write(tmp_path / "m.nii.gz", np.ones_like(seg), affine)
    elif problem == "missing image":
        image = tmp_path / "nothing.nii.gz"
    elif problem == "bad checkpoint":
        checkpoint = tmp_path / "c.pt"
        checkpoint.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    result = run_sample(image, mask, checkpoint, out, progress="text")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [result.stderr.strip().splitlines()[-1]]
    assert not out.exists()


def test_checkpoint_trained_on_dilated_masks_dilates_at_sampling(brats_case, tmp_path):
    from powdr_outpaint.model.checkpoint import initial_checkpoint, read_checkpoint, save_checkpoint, with_training

    config, payload = read_checkpoint(initial_checkpoint(tmp_path / "plain.pt", "tiny"))
    dilated = save_checkpoint(tmp_path / "dilated.pt", with_training(config, dilate=1), payload["weights"])
    result = run_sample(brats_case["image"], brats_case["mask"], dilated, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    seg = np.asanyarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    used = load(next((tmp_path / "out").glob("*_outpaint_lesion.nii.gz")))[0] > 0
    assert used[seg].all() and used.sum() > seg.sum()
    original, _ = load(brats_case["image"])
    sample, _ = load(next((tmp_path / "out").glob("*_outpaint_s00.nii.gz")))
    assert np.array_equal(sample[used], original[used])
