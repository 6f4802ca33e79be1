"""Finding, checking, preparing and caching training cases (real BraTS files)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.imaging.preprocess import lesion_on_image_grid, prepare
from powdr_outpaint.imaging.volume_io import load_volume
from powdr_outpaint.model.checkpoint import ModelConfig
from powdr_outpaint.training import data as data_module
from powdr_outpaint.training.data import (
    CaseStore,
    PrepareSettings,
    cache_key,
    discover_cases,
    modality_aliases,
    prepare_all,
)

REPO = Path(__file__).resolve().parents[2]
BRATS = Path(os.environ.get("POWDR_BRATS_DIR", REPO.parent / "shared" / "data" / "brats18"))


def brats_or_skip() -> list[Path]:
    folders = sorted(p for p in BRATS.iterdir() if p.is_dir()) if BRATS.is_dir() else []
    if not folders:
        pytest.skip(f"BraTS sample data not found at {BRATS} "
                    "(set POWDR_BRATS_DIR or place ../shared beside the repository)")
    return folders


def tiny_settings(**changes) -> PrepareSettings:
    return PrepareSettings(config=ModelConfig.from_preset(changes.pop("preset", "tiny")), **changes)


def link_case(source: Path, target_root: Path, image_name: str, mask_name: str, folder: str | None = None) -> Path:
    """A case folder under ``target_root`` whose files link to a real BraTS case."""
    folder_path = target_root / (folder or source.name)
    folder_path.mkdir(parents=True, exist_ok=True)
    (folder_path / image_name).symlink_to(source / f"{source.name}_t1.nii.gz")
    (folder_path / mask_name).symlink_to(source / f"{source.name}_seg.nii.gz")
    return folder_path


def test_brats_2018_layout_finds_every_case():
    folders = brats_or_skip()
    cases, skipped = discover_cases(BRATS, "t1")
    assert [c.name for c in cases] == [f.name for f in folders]
    assert not skipped
    for case in cases:
        assert case.image.name == f"{case.name}_t1.nii.gz" and case.mask.name == f"{case.name}_seg.nii.gz"
    # 2023 names of the same sequence find the same files; a missing sequence is listed.
    assert [c.image for c in discover_cases(BRATS, "t1n")[0]] == [c.image for c in cases]
    # Every case holds all four sequences: each is found by its own name, never another's
    # (t1 must not pick up t1ce).
    for sequence in ("t1ce", "t2", "flair"):
        found, missing = discover_cases(BRATS, sequence)
        assert [c.name for c in found] == [f.name for f in folders] and not missing
        assert all(c.image.name == f"{c.name}_{sequence}.nii.gz" for c in found)


def test_a_case_without_the_sequence_is_listed(tmp_path):
    folders = brats_or_skip()
    root = tmp_path / "cases"
    complete = link_case(folders[0], root, f"{folders[0].name}_t1.nii.gz", f"{folders[0].name}_seg.nii.gz")
    (complete / f"{folders[0].name}_flair.nii.gz").symlink_to(folders[0] / f"{folders[0].name}_flair.nii.gz")
    link_case(folders[1], root, f"{folders[1].name}_t1.nii.gz", f"{folders[1].name}_seg.nii.gz")
    cases, skipped = discover_cases(root, "flair")
    assert [c.name for c in cases] == [folders[0].name]
    assert [s.name for s in skipped] == [folders[1].name]
    assert "no flair image" in skipped[0].reason


def test_brats_2023_layout_and_incomplete_cases(tmp_path):
    folders = brats_or_skip()
    root = tmp_path / "brats23"
    for source in folders[:2]:
        name = source.name.replace("Brats18_", "BraTS-GLI-")
        link_case(source, root, f"{name}-t1n.nii.gz", f"{name}-seg.nii.gz", folder=name)
    lonely = root / "BraTS-GLI-lonely"
    lonely.mkdir()
    (lonely / "BraTS-GLI-lonely-t1n.nii.gz").symlink_to(folders[2] / f"{folders[2].name}_t1.nii.gz")
    cases, skipped = discover_cases(root, "t1")
    assert [c.name for c in cases] == sorted(f.name.replace("Brats18_", "BraTS-GLI-") for f in folders[:2])
    assert all(c.image.name.endswith("-t1n.nii.gz") and c.mask.name.endswith("-seg.nii.gz") for c in cases)
    assert [(s.name, "no segmentation" in s.reason) for s in skipped] == [("BraTS-GLI-lonely", True)]
    assert discover_cases(root, "t1c")[0] == []


def test_a_single_case_folder_counts_as_one_case():
    folders = brats_or_skip()
    cases, skipped = discover_cases(folders[0], "t1")
    assert [c.name for c in cases] == [folders[0].name] and not skipped


def test_csv_list(tmp_path):
    folders = brats_or_skip()
    (tmp_path / "imgs").mkdir()
    for source in folders[:2]:
        shutil.copy(source / f"{source.name}_t1.nii.gz", tmp_path / "imgs")
    lines = ["image,mask"]
    for source in folders[:2]:
        lines.append(f"imgs/{source.name}_t1.nii.gz,{source / (source.name + '_seg.nii.gz')}")
    lines.append("imgs/missing.nii.gz,imgs/missing_seg.nii.gz")
    lines.append(",")
    listing = tmp_path / "cases.csv"
    listing.write_text("\n".join(lines) + "\n")
    cases, skipped = discover_cases(listing)
    assert [c.name for c in cases] == [f"{f.name}_t1" for f in folders[:2]]
    assert all(c.image.is_file() and c.mask.is_file() for c in cases)
    assert len(skipped) == 2 and "does not exist" in skipped[0].reason
    (tmp_path / "bad.csv").write_text("img,seg\na,b\n")
    with pytest.raises(PowdrError, match="'image' and 'mask' columns"):
        discover_cases(tmp_path / "bad.csv")
    with pytest.raises(PowdrError, match="does not exist"):
        discover_cases(tmp_path / "nowhere")
    with pytest.raises(PowdrError, match="unknown modality"):
        modality_aliases("dwi")


def test_preparation_matches_the_sampling_preprocessing(tmp_path):
    brats_or_skip()
    cases, _ = discover_cases(BRATS, "t1")
    settings = tiny_settings()
    usable, skipped = prepare_all(cases[:2], settings, tmp_path / "cache")
    assert len(usable) == 2 and not skipped
    store = CaseStore(usable)
    for index, files in enumerate(cases[:2]):
        image, mask = load_volume(files.image), load_volume(files.mask)
        expected = prepare(image, lesion_on_image_grid(mask, image, None), settings.config)
        case = store.get(index)
        np.testing.assert_array_equal(case.image, expected.model_image)
        np.testing.assert_array_equal(case.lesion, expected.model_lesion)
        assert case.lesion_voxels == int(expected.model_lesion.sum())
        assert case.image.shape == settings.config.grid.shape
        # The foreground holds the anatomy and the lesion, not the empty corners.
        assert case.foreground[case.lesion].all()
        assert case.foreground.mean() < 0.7 and (case.image[case.foreground] > -1).mean() > 0.95
        assert (case.depth[case.foreground] >= 1).all() and (case.depth[~case.foreground] == 0).all()
    np.testing.assert_array_equal(store.lesion_volumes, [c.lesion_voxels for c in usable])


def test_dilation_is_part_of_the_preparation(tmp_path):
    brats_or_skip()
    cases, _ = discover_cases(BRATS, "t1")
    plain = CaseStore(prepare_all(cases[:1], tiny_settings(), tmp_path / "cache")[0]).get(0)
    grown = CaseStore(prepare_all(cases[:1], tiny_settings(dilate=2), tmp_path / "cache")[0]).get(0)
    assert grown.lesion_voxels == plain.lesion_voxels  # the volume statistic is before dilation
    assert grown.lesion[plain.lesion].all() and grown.lesion.sum() > plain.lesion.sum() * 1.3
    np.testing.assert_array_equal(grown.image, plain.image)


def test_cache_is_reused_without_reading_nifti(tmp_path, monkeypatch):
    brats_or_skip()
    cases, _ = discover_cases(BRATS, "t1")
    first, _ = prepare_all(cases[:3], tiny_settings(), tmp_path / "cache")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 3 and all(name.endswith(".npz") for name in files)

    def refuse(*args, **kwargs):
        raise AssertionError("a cached case was read again")

    monkeypatch.setattr(data_module, "load_volume", refuse)
    again, skipped = prepare_all(cases[:3], tiny_settings(), tmp_path / "cache")
    assert again == first and not skipped
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == files
    # Another preset or other labels are other keys: those cases are prepared anew.
    assert cache_key(cases[0], tiny_settings(preset="small")) != cache_key(cases[0], tiny_settings())
    assert cache_key(cases[0], tiny_settings(labels=(1, 4))) != cache_key(cases[0], tiny_settings())
    with pytest.raises(AssertionError, match="read again"):
        prepare_all(cases[:1], tiny_settings(labels=(1, 4)), tmp_path / "cache")


def test_the_key_follows_the_file_contents(tmp_path):
    folders = brats_or_skip()
    source = folders[0]
    folder = link_case(source, tmp_path / "data", f"{source.name}_t1.nii.gz", f"{source.name}_seg.nii.gz")
    case = discover_cases(tmp_path / "data")[0][0]
    before = cache_key(case, tiny_settings())
    mask = nib.load(str(source / f"{source.name}_seg.nii.gz"))
    edited = np.asarray(mask.dataobj).copy()
    edited[edited > 0] = 1
    (folder / f"{source.name}_seg.nii.gz").unlink()
    nib.save(nib.Nifti1Image(edited, mask.affine, mask.header), str(folder / f"{source.name}_seg.nii.gz"))
    assert cache_key(case, tiny_settings()) != before


def test_unusable_cases_are_listed_and_skipped(tmp_path):
    folders = brats_or_skip()
    root = tmp_path / "data"
    good = folders[0]
    link_case(good, root, f"{good.name}_t1.nii.gz", f"{good.name}_seg.nii.gz")
    image = nib.load(str(good / f"{good.name}_t1.nii.gz"))
    seg = nib.load(str(good / f"{good.name}_seg.nii.gz"))

    def make(name: str, image_data, mask_data, image_bytes: bytes | None = None) -> None:
        folder = root / name
        folder.mkdir()
        if image_bytes is not None:
            (folder / f"{name}_t1.nii.gz").write_bytes(image_bytes)
        else:
            nib.save(nib.Nifti1Image(image_data, image.affine), str(folder / f"{name}_t1.nii.gz"))
        nib.save(nib.Nifti1Image(mask_data, seg.affine), str(folder / f"{name}_seg.nii.gz"))

    t1 = np.asarray(image.dataobj)
    labels = np.asarray(seg.dataobj)
    make("broken", None, labels, image_bytes=gzip.compress(b"not a nifti file at all"))
    make("empty_mask", t1, np.zeros_like(labels))
    make("wrong_shape", t1, labels[:-10])
    cases, missing = discover_cases(root)
    assert len(cases) == 4 and not missing
    usable, skipped = prepare_all(cases, tiny_settings(), tmp_path / "cache")
    assert [c.name for c in usable] == [good.name]
    reasons = {s.name: s.reason for s in skipped}
    assert set(reasons) == {"broken", "empty_mask", "wrong_shape"}
    assert "could not be read" in reasons["broken"]
    assert "empty" in reasons["empty_mask"]
    assert "shape" in reasons["wrong_shape"]
    # Reasons are cached with the file hash: a second pass does not read the files again.
    again, skipped_again = prepare_all(cases, tiny_settings(), tmp_path / "cache")
    assert again == usable and [s.reason for s in skipped_again] == [s.reason for s in skipped]
