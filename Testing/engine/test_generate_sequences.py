"""``generate`` and ``export`` with a model of four sequences (t1, t1ce, t2, flair).

An untrained test-sized checkpoint and reduced real BraTS cases keep each run to seconds;
what is checked does not depend on training: every sequence of every case is written on
its own input's grid with the lesion copied exactly, a case missing a sequence is
reported while the others complete, and the nnU-Net export holds one channel per
sequence in the checkpoint's order.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qa_data  # noqa: E402

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.model.checkpoint import initial_checkpoint
from powdr_outpaint.outpainting.generate import discover_cases, is_complete, run_generate
from powdr_outpaint.outpainting.outpaint import OutpaintOptions

SEQUENCES = qa_data.SEQUENCES
# The second case's flair loses its first 3 x and 2 y slices: another grid, same place in space.
CROP = (3, 2, 0)
UNCROPPED = (slice(None), slice(None), slice(None))


@pytest.fixture(scope="module")
def four_checkpoint(tmp_path_factory) -> Path:
    return initial_checkpoint(tmp_path_factory.mktemp("checkpoint4") / "tiny4.pt", "tiny", seed=0,
                              modality=",".join(SEQUENCES))


def crop_onto_another_grid(path: Path, crop: tuple[int, int, int]) -> tuple[slice, ...]:
    """Rewrite ``path`` without its first ``crop`` voxels per axis, origin moved so nothing moves in space.

    Returns the slices of the original grid that the new file covers.
    """
    image = nib.load(str(path))
    region = tuple(slice(c, None) for c in crop)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array(crop, dtype=float) + image.affine[:3, 3]
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[region], affine, image.header), str(path))
    return region


def cli_events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def four_sequence_run(brats_dir, four_checkpoint, tmp_path_factory):
    """Two reduced BraTS cases with four sequences each, through ``generate`` (2 samples, 2 steps).

    The second case's flair is on another grid than its other sequences and its mask.
    Returns (root, cases, {case: {sequence: slices of the mask's grid}}, the done event).
    """
    root = tmp_path_factory.mktemp("generate4")
    cases = qa_data.reduced_cases(brats_dir, root / "cases", 2, SEQUENCES)
    regions = {case["name"]: {sequence: UNCROPPED for sequence in SEQUENCES} for case in cases}
    regions[cases[1]["name"]]["flair"] = crop_onto_another_grid(cases[1]["images"]["flair"], CROP)
    code, out, err = qa_data.run_cli(
        "generate", "--cases", root / "cases", "--checkpoint", four_checkpoint, "--per-case", 2, "--steps", 2,
        "--device", "cpu", "--progress", "json", "--out", root / "runs",
    )
    assert code == 0, err
    return root, cases, regions, cli_events(out)[-1]


def test_finds_each_sequence_by_name_and_alias(tmp_path):
    """BraTS 2018 and 2023 names, never t1ce for t1, and a CSV with a column per sequence."""
    layouts = {
        "A": ["A_t1.nii.gz", "A_t1ce.nii.gz", "A_t2.nii.gz", "A_flair.nii.gz", "A_seg.nii.gz"],
        "B": ["B-t2f.nii.gz", "B-t1c.nii.gz", "B-t1n.nii.gz", "B-t2w.nii.gz", "B-seg.nii.gz"],
        "C": ["C_t1ce.nii.gz", "C_t2.nii.gz", "C_flair.nii.gz", "C_seg.nii.gz"],  # no t1
    }
    for case, names in layouts.items():
        (tmp_path / "cases" / case).mkdir(parents=True)
        for name in names:
            (tmp_path / "cases" / case / name).write_bytes(b"")
    found = {c.name: c for c in discover_cases(tmp_path / "cases", sequences=SEQUENCES)}
    assert [p.name for p in found["A"].images] == layouts["A"][:4]
    assert [p.name for p in found["B"].images] == ["B-t1n.nii.gz", "B-t1c.nii.gz", "B-t2w.nii.gz", "B-t2f.nii.gz"]
    assert found["A"].problem is None and found["B"].problem is None
    assert found["A"].stems == [f"A_{s}" for s in SEQUENCES]
    # C_t1ce is C's t1ce, not its t1: the case misses t1 and says so.
    assert found["C"].images[0] is None and [p.name for p in found["C"].images[1:]] == layouts["C"][:3]
    assert "has no t1 image" in found["C"].problem and "C_t1.nii.gz" in found["C"].problem
    with pytest.raises(PowdrError, match="leave --image-glob out"):
        discover_cases(tmp_path / "cases", image_glob="*_t1.nii.gz", sequences=SEQUENCES)

    listing = tmp_path / "cases.csv"
    listing.write_text(
        "case,T1n,t1c,t2w,t2f,mask\n"
        "A,cases/A/A_t1.nii.gz,cases/A/A_t1ce.nii.gz,cases/A/A_t2.nii.gz,cases/A/A_flair.nii.gz,cases/A/A_seg.nii.gz\n"
        "C,cases/C/C_t1ce.nii.gz,cases/C/C_t1ce.nii.gz,cases/C/C_t2.nii.gz,,cases/C/C_seg.nii.gz\n"
    )
    rows = {c.name: c for c in discover_cases(listing, sequences=SEQUENCES)}
    assert rows["A"].images == found["A"].images and rows["A"].problem is None
    assert rows["C"].images[3] is None and "has no flair image" in rows["C"].problem
    (tmp_path / "short.csv").write_text("t1,t1ce,t2,mask\na,b,c,d\n")
    with pytest.raises(PowdrError, match="lacks flair"):
        discover_cases(tmp_path / "short.csv", sequences=SEQUENCES)


def test_cases_found_for_one_image_are_refused_before_writing(tmp_path, four_checkpoint):
    (tmp_path / "cases" / "A").mkdir(parents=True)
    for name in ("A_t1.nii.gz", "A_seg.nii.gz"):
        (tmp_path / "cases" / "A" / name).write_bytes(b"")
    single = discover_cases(tmp_path / "cases")
    with pytest.raises(PowdrError, match="checkpoint makes t1, t1ce, t2, flair"):
        run_generate(single, four_checkpoint, tmp_path / "out", OutpaintOptions(samples=1, steps=2), "none")
    assert not (tmp_path / "out").exists()


def test_generate_writes_every_sequence_on_its_grid_with_exact_lesions(four_sequence_run):
    root, cases, regions, done = four_sequence_run
    assert done["event"] == "done" and done["generated"] == [c["name"] for c in cases] and not done["failed"]
    for case in cases:
        name, folder = case["name"], root / "runs" / case["name"]
        mask, mask_affine = qa_data.load(case["mask"])
        # The label map: original values on the first sequence's (t1's) grid.
        label, label_affine = qa_data.load(folder / f"{name}_t1_outpaint_label.nii.gz")
        np.testing.assert_array_equal(label, mask)
        np.testing.assert_allclose(label_affine, mask_affine, atol=1e-6)
        metadata = json.loads((folder / f"{name}_t1_outpaint.json").read_text())
        assert list(metadata["outputs"]["sequences"]) == list(SEQUENCES)
        for sequence in SEQUENCES:
            stem = f"{name}_{sequence}"
            original = nib.load(str(case["images"][sequence]))
            data = np.asarray(original.dataobj)
            lesion = mask[regions[name][sequence]] > 0
            assert lesion.shape == data.shape and lesion.any()
            for index in range(2):
                sample = nib.load(str(folder / f"{stem}_outpaint_s{index:02d}.nii.gz"))
                assert sample.shape == original.shape, (stem, index)
                np.testing.assert_allclose(sample.affine, original.affine, atol=1e-5, err_msg=stem)
                values = np.asarray(sample.dataobj)
                # The lesion is the real one, voxel for voxel; the rest was made by the model.
                np.testing.assert_array_equal(values[lesion], data[lesion], err_msg=f"{stem} s{index:02d}")
                assert np.abs(values[~lesion] - data[~lesion]).max() > 0, stem
            for kind in ("mean", "std", "lesion"):
                output = nib.load(str(folder / f"{stem}_outpaint_{kind}.nii.gz"))
                assert output.shape == original.shape, (stem, kind)
                np.testing.assert_allclose(output.affine, original.affine, atol=1e-5)
            np.testing.assert_array_equal(qa_data.load(folder / f"{stem}_outpaint_lesion.nii.gz")[0] > 0, lesion)
            assert json.loads((folder / f"{stem}_outpaint.json").read_text())["sequence"] == sequence


def test_case_missing_flair_is_reported_and_the_others_complete(brats_dir, four_checkpoint, tmp_path):
    cases = qa_data.reduced_cases(brats_dir, tmp_path / "cases", 2, SEQUENCES)
    complete, lacking = cases
    aside = tmp_path / "aside.nii.gz"
    shutil.move(lacking["images"]["flair"], aside)
    out = tmp_path / "out"
    arguments = (
        "generate", "--cases", tmp_path / "cases", "--checkpoint", four_checkpoint, "--per-case", 2, "--steps", 2,
        "--device", "cpu", "--progress", "json", "--out", out,
    )
    code, stdout, err = qa_data.run_cli(*arguments)
    events = cli_events(stdout)
    done = next(e for e in events if e["event"] == "done")
    assert code == 2 and done["generated"] == [complete["name"]]
    assert list(done["failed"]) == [lacking["name"]]
    assert f"the case {lacking['name']} has no flair image" in done["failed"][lacking["name"]]
    assert f"1 of 2 cases failed ({lacking['name']}: " in err and "flair" in err
    assert not (out / lacking["name"]).exists()
    found = {c.name: c for c in discover_cases(tmp_path / "cases", sequences=SEQUENCES)}
    assert is_complete(out, found[complete["name"]]) and not is_complete(out, found[lacking["name"]])
    written = {p.name: p.stat().st_mtime_ns for p in (out / complete["name"]).iterdir()}
    assert len(written) == 4 * 6 + 1  # per sequence 2 samples, mean, std, lesion, JSON; one label map

    # With the flair back, a second run does only that case.
    shutil.move(aside, lacking["images"]["flair"])
    code, stdout, err = qa_data.run_cli(*arguments)
    done = cli_events(stdout)[-1]
    assert code == 0, err
    assert done["skipped"] == [complete["name"]] and done["generated"] == [lacking["name"]]
    assert {p.name: p.stat().st_mtime_ns for p in (out / complete["name"]).iterdir()} == written
    assert len(list((out / lacking["name"]).iterdir())) == 4 * 6 + 1


def export(source: Path, out: Path, *extra: object, dataset_id: int = 511) -> tuple[int, str]:
    return qa_data.run_export(source, out, *extra, dataset_id=dataset_id, name="Brain4")


def test_nnunet_export_has_one_channel_per_sequence_in_checkpoint_order(four_sequence_run, tmp_path):
    root, cases, regions, _ = four_sequence_run
    code, err = export(root / "runs", tmp_path, "--with-real")
    assert code == 0, err
    folder = tmp_path / "Dataset511_Brain4"
    read = qa_data.read_nnunet_raw(folder)  # every channel present and on its label's grid
    dataset = read["dataset"]
    assert dataset["channel_names"] == {"0": "T1", "1": "T1CE", "2": "T2", "3": "FLAIR"}
    assert dataset["numTraining"] == 6 and len(read["ids"]) == 6
    assert read["ids"] == sorted(f"{c['name']}_{kind}" for c in cases for kind in ("s00", "s01", "real"))
    # The second case's flair is on another grid: resampled onto its t1 grid, and the command says so.
    cropped = cases[1]["name"]
    assert "flair" in err and "resampled" in err and cropped in err
    assert dataset["powdr_outpaint"]["resampled_onto_first_sequence_grid"] == {"flair": [cropped]}
    for case in cases:
        name = case["name"]
        mask, mask_affine = qa_data.load(case["mask"])
        for identifier in (f"{name}_s00", f"{name}_s01", f"{name}_real"):
            label, label_affine = qa_data.load(folder / "labelsTr" / f"{identifier}.nii.gz")
            np.testing.assert_array_equal(label, mask)
            np.testing.assert_allclose(label_affine, mask_affine, atol=1e-6)
        for channel, sequence in enumerate(SEQUENCES):
            region = regions[name][sequence]
            sources = {
                f"{name}_s00": root / "runs" / name / f"{name}_{sequence}_outpaint_s00.nii.gz",
                f"{name}_s01": root / "runs" / name / f"{name}_{sequence}_outpaint_s01.nii.gz",
                f"{name}_real": case["images"][sequence],
            }
            for identifier, source in sources.items():
                exported, _ = qa_data.load(folder / "imagesTr" / f"{identifier}_{channel:04d}.nii.gz")
                original, _ = qa_data.load(source)
                assert exported.shape == mask.shape
                # Channel k holds sequence k (a whole-voxel shift is resampled by copying values).
                np.testing.assert_array_equal(exported[region], original, err_msg=f"{identifier} {sequence}")
                if region != UNCROPPED:
                    assert np.all(exported[: CROP[0]] == original.min())  # outside the flair: its background


def test_export_of_runs_in_one_folder_names_the_case_without_its_sequence(four_sequence_run, tmp_path):
    """A ``sample`` output folder (no label map: it is rebuilt from the mask in the JSON)."""
    root, cases, _, _ = four_sequence_run
    name = cases[0]["name"]
    flat = tmp_path / "flat"
    shutil.copytree(root / "runs" / name, flat, ignore=shutil.ignore_patterns("*_label.nii.gz"))
    code, err = export(flat, tmp_path / "raw", dataset_id=512)
    assert code == 0, err
    read = qa_data.read_nnunet_raw(tmp_path / "raw" / "Dataset512_Brain4")
    assert read["ids"] == [f"{name}_s00", f"{name}_s01"] and read["values"] == {0, 1, 2, 4}
    assert "resampled" not in err  # all four sequences share a grid


def test_export_refuses_incomplete_and_mixed_runs_and_wrong_channel_names(
    four_sequence_run, brats_dir, tiny_checkpoint, tmp_path
):
    root, cases, _, _ = four_sequence_run
    name = cases[0]["name"]
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs" / name, runs / name)
    code, err = export(runs, tmp_path / "raw", "--channel-name", "T1,T2")
    assert code == 2 and "--channel-name gives 2 names but the runs have 4 channels" in err
    assert not (tmp_path / "raw").exists()
    assert export(runs, tmp_path / "raw", "--channel-name", "a,b,c,d", dataset_id=513)[0] == 0
    assert json.loads((tmp_path / "raw" / "Dataset513_Brain4" / "dataset.json").read_text())["channel_names"] == {
        "0": "a", "1": "b", "2": "c", "3": "d"
    }

    # A run of a single-sequence model beside it: its channel 0 would not mean the same.
    single = qa_data.reduced_cases(brats_dir, tmp_path / "single", 1)[0]
    code, _, err = qa_data.run_cli(
        "sample", "--image", single["image"], "--mask", single["mask"], "--checkpoint", tiny_checkpoint,
        "--samples", 1, "--steps", 2, "--progress", "none", "--out", runs / "single",
    )
    assert code == 0, err
    code, err = export(runs, tmp_path / "mixed", dataset_id=514)
    assert code == 2 and "different sequences" in err and not (tmp_path / "mixed").exists()
    shutil.rmtree(runs / "single")

    # A run killed between two sequences' JSON files is not exported half, and generate redoes it.
    (runs / name / f"{name}_flair_outpaint.json").unlink()
    code, err = export(runs, tmp_path / "partial", dataset_id=515)
    assert code == 2 and "incomplete" in err and "flair" in err and not (tmp_path / "partial").exists()
    case = next(c for c in discover_cases(root / "cases", sequences=SEQUENCES) if c.name == name)
    assert is_complete(root / "runs", case) and not is_complete(runs, case)
