"""``powdr-outpaint evaluate`` on real outputs of ``sample``: metrics JSON, table and QA report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qa_data  # noqa: E402


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def sampled(brats_case, tiny_checkpoint, tmp_path_factory):
    """A full-size BraTS case outpainted with --preserve exact (tiny model, 2 samples, 3 steps)."""
    out = tmp_path_factory.mktemp("evaluate_sampled")
    code, _, err = qa_data.run_cli(
        "sample", "--image", brats_case["image"], "--mask", brats_case["mask"], "--checkpoint", tiny_checkpoint,
        "--samples", 2, "--steps", 3, "--device", "cpu", "--preserve", "exact", "--progress", "none", "--out", out,
    )
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def evaluated(sampled, brats_case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate_results")
    json_path, png_path = folder / "metrics.json", folder / "qa.png"
    code, out, err = qa_data.run_cli(
        "evaluate", "--original", brats_case["image"], "--mask", brats_case["mask"], "--samples", sampled,
        "--json", json_path, "--report", png_path, "--progress", "none",
    )
    assert code == 0, err
    return {"json": _strict(json_path.read_text()), "png": png_path, "table": out}


def test_lesion_is_preserved_exactly(evaluated):
    result = evaluated["json"]
    assert result["samples"] == 2 and result["preserve"] == "exact"
    assert result["lesion"]["max_abs_diff"] == 0.0
    assert all(entry["max_abs_diff_lesion"] == 0.0 for entry in result["per_sample"])


def test_metrics_are_complete_and_in_range(evaluated):
    result = evaluated["json"]
    assert result["shape"] == [240, 240, 155]
    settings = result["settings"]
    assert settings["ssim_window"] == 7 and settings["ms_ssim_scales"] == 5 and settings["histogram_bins"] == 50
    cosine, kl = result["diversity"]["cosine"], result["diversity"]["kl"]
    assert cosine["pairs"] == 1 and 0 < cosine["mean"] <= 1
    assert kl["mean"] >= 0
    for entry in result["per_sample"]:
        for key in ("ssim", "ms_ssim"):
            for region in ("inside", "outside"):
                assert -1 <= entry[key][region] <= 1, (key, region)
        # The lesion is copied, so windows inside it match the original far better than outside.
        assert entry["ssim"]["inside"] > entry["ssim"]["outside"]
    std = result["std_map"]
    assert std["inside"]["max"] == 0.0 and std["outside"]["mean"] > 0
    assert std["inside"]["voxels"] == result["lesion"]["voxels"] > 0


def test_terminal_table_is_short_and_readable(evaluated):
    table = evaluated["table"]
    lines = table.strip().splitlines()
    assert len(lines) <= 10
    assert "SSIM in" in table and "MS-SSIM out" in table and "cosine" in table and "std map" in table


def test_report_png_shows_six_panels_and_is_not_blank(evaluated):
    from PIL import Image

    path = evaluated["png"]
    assert path.is_file() and path.stat().st_size > 20_000
    report = evaluated["json"]["report"]
    assert report["panels"] == [
        "Condition", "Original", "Sample 1 (s00)", "Sample 2 (s01)", "Mean of 2", "Std (intensity units)"
    ]
    with Image.open(path) as image:
        description = image.text["Description"]
        pixels = np.asarray(image.convert("RGB"))
    panels = description.split(";")[0].removeprefix("panels: ").split(" | ")
    assert len(panels) == 6 and panels[-1] == "Std"
    assert pixels.shape[1] > pixels.shape[0]  # six columns by three rows
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000
    # Inferno's warm colours (red well above blue) appear only in the std map and its bar.
    red, green, blue = (pixels[..., i].astype(int) for i in range(3))
    assert np.count_nonzero((red > 150) & (blue < 80) & (red - green > 60)) > 1000


def test_json_to_standard_output(sampled, brats_case):
    code, out, err = qa_data.run_cli(
        "evaluate", "--original", brats_case["image"], "--mask", brats_case["mask"], "--samples", sampled,
        "--json", "-", "--progress", "none",
    )
    assert code == 0, err
    result = _strict(out)
    assert result["lesion"]["max_abs_diff"] == 0.0 and "SSIM in" in err


def test_run_metadata_supplies_the_original_and_mask(sampled, brats_case, evaluated):
    """Left out, --original and --mask are the image and mask the run recorded: the same figures."""
    code, out, err = qa_data.run_cli("evaluate", "--samples", sampled, "--json", "-", "--progress", "none")
    assert code == 0, err
    result = _strict(out)
    assert result["original"] == str(brats_case["image"].resolve()) and "sequences" not in result
    assert result["mask"] == str(brats_case["mask"].resolve())
    assert result == {k: v for k, v in evaluated["json"].items() if k != "report"}


def test_model_preservation_is_detected(brats_dir, tiny_checkpoint, tmp_path):
    """With --preserve model the raw network output is kept, and evaluate sees the difference."""
    case = qa_data.reduced_cases(brats_dir, tmp_path / "cases", 1)[0]
    out = tmp_path / "out"
    code, _, err = qa_data.run_cli(
        "sample", "--image", case["image"], "--mask", case["mask"], "--checkpoint", tiny_checkpoint,
        "--samples", 2, "--steps", 2, "--preserve", "model", "--progress", "none", "--out", out,
    )
    assert code == 0, err
    code, stdout, err = qa_data.run_cli(
        "evaluate", "--original", case["image"], "--mask", case["mask"], "--samples", out, "--json", "-",
        "--progress", "none",
    )
    assert code == 0, err
    result = _strict(stdout)
    assert result["preserve"] == "model" and result["lesion"]["max_abs_diff"] > 0
    assert result["settings"]["ms_ssim_scales"] == 4  # 78 slices: 78 -> 39 -> 19 -> 9
    # The form of a multi-sequence run, naming the run's one sequence, means the same.
    code, stdout, err = qa_data.run_cli(
        "evaluate", "--original", f"t1={case['image']}", "--mask", case["mask"], "--samples", out, "--json", "-",
        "--progress", "none",
    )
    assert code == 0, err
    assert _strict(stdout) == result


def test_clear_errors(brats_case, tmp_path, sampled):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = qa_data.run_cli(
        "evaluate", "--original", brats_case["image"], "--mask", brats_case["mask"], "--samples", empty,
    )
    assert code == 2 and "no outpainted samples" in err and "Traceback" not in err
    code, _, err = qa_data.run_cli(
        "evaluate", "--original", brats_case["image"], "--mask", brats_case["mask"], "--samples", sampled,
        "--report", tmp_path / "qa.jpg",
    )
    assert code == 2 and ".png" in err
    # A single-sequence run has one original; naming several sequences is refused in one sentence.
    code, _, err = qa_data.run_cli(
        "evaluate", "--original", f"t1={brats_case['image']}", "--original", f"t2={brats_case['image']}",
        "--mask", brats_case["mask"], "--samples", sampled,
    )
    assert code == 2 and "is of t1 only" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = qa_data.run_cli(
        "evaluate", "--original", f"flair={brats_case['image']}", "--mask", brats_case["mask"], "--samples", sampled,
    )
    assert code == 2 and "is of t1 only" in err and "not flair" in err, err


def test_samples_on_another_grid_are_refused(brats_dir, sampled, tmp_path):
    case = qa_data.reduced_cases(brats_dir, tmp_path / "cases", 1)[0]
    code, _, err = qa_data.run_cli(
        "evaluate", "--original", case["image"], "--mask", case["mask"], "--samples", sampled, "--progress", "none",
    )
    assert code == 2 and "not on the original image's grid" in err
