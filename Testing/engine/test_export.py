"""``powdr-outpaint export --format nnunet``: an nnU-Net v2 raw dataset, read back and checked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qa_data  # noqa: E402

from powdr_outpaint.outpainting.generate import discover_cases, run_generate
from powdr_outpaint.outpainting.outpaint import OutpaintOptions

# The reader lives in qa_data so that the multi-sequence tests use the same rules.
read_nnunet_raw = qa_data.read_nnunet_raw


@pytest.fixture(scope="module")
def generated(brats_dir, tiny_checkpoint, tmp_path_factory):
    """Two reduced BraTS cases outpainted by ``generate`` (2 samples each)."""
    root = tmp_path_factory.mktemp("export")
    cases = qa_data.reduced_cases(brats_dir, root / "cases", 2)
    options = OutpaintOptions(samples=2, steps=2, device="cpu")
    summary = run_generate(discover_cases(root / "cases"), tiny_checkpoint, root / "runs", options, progress="none")
    assert len(summary.generated) == 2
    return root, cases


export = qa_data.run_export


def test_default_export_keeps_original_labels(generated, tmp_path):
    root, cases = generated
    code, err = export(root / "runs", tmp_path)
    assert code == 0, err
    folder = tmp_path / "Dataset501_BrainOutpaint"
    read = read_nnunet_raw(folder)
    assert read["dataset"]["numTraining"] == 4
    assert read["ids"] == sorted(f"{c['name']}_s{i:02d}" for c in cases for i in range(2))
    assert read["dataset"]["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_4": 4}
    assert read["dataset"]["channel_names"] == {"0": "T1"}
    assert read["values"] == {0, 1, 2, 4}
    # BraTS values are not consecutive; the command says how to get what nnU-Net plans with.
    assert not read["consecutive"] and "--label-values consecutive" in err
    for case in cases:
        original, original_affine = qa_data.load(case["mask"])
        for index in range(2):
            label, affine = qa_data.load(folder / "labelsTr" / f"{case['name']}_s{index:02d}.nii.gz")
            np.testing.assert_array_equal(label, original)
            np.testing.assert_allclose(affine, original_affine, atol=1e-6)


def test_consecutive_export_with_real_cases(generated, tmp_path):
    root, cases = generated
    code, err = export(root / "runs", tmp_path, "--with-real", "--label-values", "consecutive",
                       "--label-names", "1=necrotic_core,2=edema,4=enhancing", dataset_id=502)
    assert code == 0, err
    folder = tmp_path / "Dataset502_BrainOutpaint"
    read = read_nnunet_raw(folder)
    assert read["consecutive"] and read["values"] == {0, 1, 2, 3}
    assert read["dataset"]["labels"] == {"background": 0, "necrotic_core": 1, "edema": 2, "enhancing": 3}
    assert read["dataset"]["powdr_outpaint"]["original_to_exported"] == {"0": 0, "1": 1, "2": 2, "4": 3}
    assert read["dataset"]["numTraining"] == 6
    for case in cases:
        real_image, real_affine = qa_data.load(folder / "imagesTr" / f"{case['name']}_real_0000.nii.gz")
        original_image, original_affine = qa_data.load(case["image"])
        np.testing.assert_array_equal(real_image, original_image)
        np.testing.assert_allclose(real_affine, original_affine, atol=1e-6)
        label, _ = qa_data.load(folder / "labelsTr" / f"{case['name']}_real.nii.gz")
        original_label, _ = qa_data.load(case["mask"])
        np.testing.assert_array_equal(label, np.where(original_label == 4, 3, original_label))
    # Folds keep a case's volumes together and validate on real volumes.
    splits = json.loads((folder / "splits_grouped.json").read_text())["splits"]
    assert len(splits) == 2
    for fold in splits:
        assert all(i.endswith("_real") for i in fold["val"])
        held_out = {i.rsplit("_", 1)[0] for i in fold["val"]}
        assert not any(i.rsplit("_", 1)[0] in held_out for i in fold["train"])


def test_export_of_a_sample_folder_rebuilds_the_labels(brats_dir, tiny_checkpoint, tmp_path):
    case = qa_data.reduced_cases(brats_dir, tmp_path / "cases", 1)[0]
    runs = tmp_path / "runs"
    code, _, err = qa_data.run_cli(
        "sample", "--image", case["image"], "--mask", case["mask"], "--checkpoint", tiny_checkpoint,
        "--samples", 1, "--steps", 2, "--labels", "1,4", "--progress", "none", "--out", runs,
    )
    assert code == 0, err
    code, err = export(runs, tmp_path / "raw")
    assert code == 0, err
    read = read_nnunet_raw(tmp_path / "raw" / "Dataset501_BrainOutpaint")
    stem = case["image"].name[: -len(".nii.gz")]
    assert read["ids"] == [f"{stem}_s00"]
    # Only the kept labels remain: oedema (2) was outpainted.
    assert read["values"] == {0, 1, 4}


def test_existing_datasets_are_protected(generated, tmp_path):
    root, _ = generated
    assert export(root / "runs", tmp_path)[0] == 0
    code, err = export(root / "runs", tmp_path)
    assert code == 2 and "--overwrite" in err
    assert export(root / "runs", tmp_path, "--overwrite")[0] == 0
    code, _, err = qa_data.run_cli(
        "export", "--from", root / "runs", "--dataset-id", 501, "--name", "Other", "--out", tmp_path,
        "--progress", "none",
    )
    assert code == 2 and "already used" in err
    code, _, err = qa_data.run_cli(
        "export", "--from", tmp_path / "nothing", "--dataset-id", 7, "--name", "X", "--out", tmp_path,
    )
    assert code == 2 and "not a folder" in err


def test_nnunet_v2_accepts_the_consecutive_export(generated, tmp_path, monkeypatch):
    """nnU-Net v2's own integrity check, when nnunetv2 is installed (it is not a dependency)."""
    verify = pytest.importorskip(
        "nnunetv2.experiment_planning.verify_dataset_integrity",
        reason="nnunetv2 is not installed; read_nnunet_raw checks the same rules",
    )
    root, _ = generated
    code, err = export(root / "runs", tmp_path, "--with-real", "--label-values", "consecutive", dataset_id=503)
    assert code == 0, err
    verify.verify_dataset_integrity(str(tmp_path / "Dataset503_BrainOutpaint"), 1)
