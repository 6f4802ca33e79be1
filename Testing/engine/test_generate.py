"""``powdr-outpaint generate``: case discovery, label maps, splitting over ranks, and resuming."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qa_data  # noqa: E402

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.model.checkpoint import initial_checkpoint, save_cascade
from powdr_outpaint.imaging.volume_io import Volume, load_volume
from powdr_outpaint.outpainting.generate import (
    Case,
    case_seed,
    discover_cases,
    distributed_env,
    is_complete,
    metadata_file,
    original_label_map,
    run_generate,
    shard,
)
from powdr_outpaint.outpainting.outpaint import OutpaintOptions


@pytest.fixture(scope="module")
def three_cases(brats_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_cases")
    return root, qa_data.reduced_cases(brats_dir, root, 3)


def test_discovers_case_folders(three_cases):
    root, cases = three_cases
    found = discover_cases(root)
    assert [c.name for c in found] == [c["name"] for c in cases]
    assert all(c.image.name.endswith("_t1.nii.gz") and c.mask.name.endswith("_seg.nii.gz") for c in found)


def test_ambiguous_case_folder_is_explained(three_cases, tmp_path):
    _, cases = three_cases
    folder = tmp_path / "cases" / "A"
    folder.mkdir(parents=True)
    for name in ("A_t1.nii.gz", "A_flair.nii.gz", "A_seg.nii.gz"):
        (folder / name).write_bytes(cases[0]["image"].read_bytes())
    with pytest.raises(PowdrError, match="2 candidate images.*--image-glob"):
        discover_cases(tmp_path / "cases")
    assert [c.image.name for c in discover_cases(tmp_path / "cases", image_glob="*_t1.nii.gz")] == ["A_t1.nii.gz"]


def test_discovers_a_csv_with_relative_paths(three_cases, tmp_path):
    root, cases = three_cases
    listing = root / "cases.csv"
    lines = ["case,image,mask"] + [
        f"{c['name']}-x,{c['image'].relative_to(root)},{c['mask'].relative_to(root)}" for c in cases
    ]
    listing.write_text("\n".join(lines) + "\n")
    found = discover_cases(listing)
    assert [c.name for c in found] == [f"{c['name']}-x" for c in cases]
    assert all(c.image.is_file() and c.mask.is_file() for c in found)
    bad = tmp_path / "bad.csv"
    bad.write_text("picture,mask\na,b\n")
    with pytest.raises(PowdrError, match="columns image and mask"):
        discover_cases(bad)


def test_torchrun_split_covers_every_case_once():
    cases = [Case(f"c{i}", Path(f"c{i}.nii.gz"), Path(f"m{i}.nii.gz")) for i in range(7)]
    parts = [shard(cases, rank, 3) for rank in range(3)]
    assert sorted(c.name for part in parts for c in part) == sorted(c.name for c in cases)
    assert [len(p) for p in parts] == [3, 2, 2]
    assert distributed_env({}) == (0, 1, 0)
    assert distributed_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (2, 4, 0)
    with pytest.raises(PowdrError, match="does not fit"):
        distributed_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_case_seeds_depend_on_the_name_only():
    assert case_seed(0, "A") == case_seed(0, "A")
    assert case_seed(0, "A") != case_seed(0, "B") and case_seed(0, "A") != case_seed(1, "A")


def test_label_map_keeps_original_values_and_grid(brats_case):
    image = load_volume(brats_case["image"])
    mask = load_volume(brats_case["mask"])
    labels = original_label_map(mask, image)
    assert labels.dtype == np.uint8 and labels.shape == image.data.shape
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(labels, mask.data)
    # Labels that were not kept were outpainted, so they are cleared.
    kept = original_label_map(mask, image, (1, 4))
    assert set(np.unique(kept)) == {0, 1, 4}
    # A mask on another grid (flipped and shifted) is resampled by nearest neighbour.
    flipped = mask.data[::-1].copy()
    affine = mask.affine.copy()
    affine[:3, 0] *= -1
    affine[:3, 3] = mask.affine[:3, 3] + mask.affine[:3, 0] * (mask.data.shape[0] - 1)
    resampled = original_label_map(Volume(flipped, affine), image)
    np.testing.assert_array_equal(resampled, mask.data)


def test_rank_processes_only_its_share(three_cases, tiny_checkpoint, tmp_path):
    root, _ = three_cases
    cases = discover_cases(root)
    options = OutpaintOptions(samples=1, steps=2, device="cpu")
    summary = run_generate(cases, tiny_checkpoint, tmp_path / "out", options, progress="none", rank=1, world=2)
    assert summary.generated == [cases[1].name] and summary.assigned == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == [cases[1].name]
    label = tmp_path / "out" / cases[1].name / f"{cases[1].image.name[:-7]}_outpaint_label.nii.gz"
    assert set(np.unique(np.asarray(nib.load(str(label)).dataobj))) <= {0, 1, 2, 4}


def test_killed_run_resumes_without_redoing_finished_cases(three_cases, tiny_checkpoint, tmp_path):
    root, _ = three_cases
    cases = discover_cases(root)
    out = tmp_path / "out"
    command = qa_data.cli_command(
        "generate", "--cases", root, "--checkpoint", tiny_checkpoint, "--per-case", 2, "--steps", 2,
        "--device", "cpu", "--progress", "json", "--out", out,
    )
    first = metadata_file(out, cases[0])
    process = subprocess.Popen(
        command, env=qa_data.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not first.exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the first case did not finish in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    complete_at_kill = [c.name for c in cases if is_complete(out, c)]
    assert cases[0].name in complete_at_kill and len(complete_at_kill) < 3

    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / cases[0].name).iterdir()}
    result = subprocess.run(command, env=qa_data.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and not done["failed"]
    assert set(done["skipped"]) == set(complete_at_kill)
    assert set(done["generated"]) == {c.name for c in cases} - set(complete_at_kill)
    # The first case's files were not written again.
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / cases[0].name).iterdir()} == finished
    for case in cases:
        folder = out / case.name
        names = {p.name for p in folder.iterdir()}
        stem = case.image.name[: -len(".nii.gz")]
        assert {f"{stem}_outpaint_s00.nii.gz", f"{stem}_outpaint_s01.nii.gz", f"{stem}_outpaint.json",
                f"{stem}_outpaint_label.nii.gz"} <= names
        assert not [n for n in names if n.startswith(".")], names  # no temporary files left


def test_generate_passes_the_refine_options_of_a_cascade(three_cases, tmp_path):
    """generate samples a cascade with the refine options sample has, and records them per case."""
    root, _ = three_cases
    first_case = sorted(p for p in root.iterdir() if p.is_dir())[0]
    folder = qa_data.linked_cases([first_case], tmp_path / "one")
    first = initial_checkpoint(tmp_path / "first.pt", "tiny")
    cascade = save_cascade(first, initial_checkpoint(tmp_path / "refine.pt", "tiny-refine"), tmp_path / "c.pt")
    out = tmp_path / "out"
    result = subprocess.run(
        qa_data.cli_command("generate", "--cases", folder, "--checkpoint", cascade, "--per-case", 1, "--steps", 2,
                            "--refine-steps", 1, "--refine-tiling", "blocks", "--device", "cpu",
                            "--progress", "none", "--out", out),
        env=qa_data.subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads(next((out / first_case.name).glob("*_outpaint.json")).read_text())["options"]
    assert (recorded["refine_steps"], recorded["refine_tiling"]) == (1, "blocks")


def test_bad_checkpoint_fails_before_any_case(three_cases, tmp_path):
    root, _ = three_cases
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    code, _, err = qa_data.run_cli(
        "generate", "--cases", root, "--checkpoint", bogus, "--per-case", 1, "--out", tmp_path / "out",
        "--progress", "none",
    )
    assert code == 2 and "checkpoint" in err and not (tmp_path / "out").exists()
