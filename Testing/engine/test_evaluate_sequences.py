"""``powdr-outpaint evaluate`` on a run of a multi-sequence model (t1, t1ce, t2, flair).

Real BraTS cases reduced to every second voxel, outpainted by an untrained "tiny" model
of four sequences (2 samples, 2 steps): the figures mean nothing about quality, but every
sequence must be evaluated against its own original, the lesion of each must be kept
exactly, and the JSON, the table and the PNG must cover every sequence.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qa_data  # noqa: E402

FOUR = ("t1", "t1ce", "t2", "flair")


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _originals(images: dict[str, Path], order=None) -> list[str]:
    """``--original SEQ=FILE`` arguments; ``order`` maps a sequence to the file of another one."""
    order = order or {}
    args: list[str] = []
    for name in images:
        args += ["--original", f"{name}={images[order.get(name, name)]}"]
    return args


def _sample(case: dict, sequences: tuple[str, ...], out: Path, checkpoints: Path, samples: int = 2) -> Path:
    from powdr_outpaint.model.checkpoint import initial_checkpoint

    checkpoint = initial_checkpoint(checkpoints / f"tiny_{len(sequences)}.pt", "tiny", modality=",".join(sequences),
                                    seed=0)
    images: list[str] = []
    for name in sequences:
        images += ["--image", f"{name}={case['images'][name]}"]
    code, _, err = qa_data.run_cli(
        "sample", *images, "--mask", case["mask"], "--checkpoint", checkpoint, "--samples", samples, "--steps", 2,
        "--device", "cpu", "--preserve", "exact", "--progress", "none", "--out", out,
    )
    assert code == 0, err
    return out


def _evaluate(*argv: object) -> dict:
    code, out, err = qa_data.run_cli("evaluate", *argv, "--json", "-", "--progress", "none")
    assert code == 0, err
    return _strict(out)


@pytest.fixture(scope="module")
def case(brats_dir, tmp_path_factory):
    """One real case, all four sequences and the segmentation, at half resolution."""
    return qa_data.reduced_cases(brats_dir, tmp_path_factory.mktemp("sequence_cases"), 1, FOUR)[0]


@pytest.fixture(scope="module")
def run4(case, tmp_path_factory):
    return _sample(case, FOUR, tmp_path_factory.mktemp("run4"), tmp_path_factory.mktemp("checkpoints4"))


@pytest.fixture(scope="module")
def evaluated(case, run4, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate4")
    json_path, png_path = folder / "metrics.json", folder / "qa.png"
    code, out, err = qa_data.run_cli(
        "evaluate", *_originals(case["images"]), "--mask", case["mask"], "--samples", run4,
        "--json", json_path, "--report", png_path, "--progress", "none",
    )
    assert code == 0, err
    return {"json": _strict(json_path.read_text()), "png": png_path, "table": out}


@pytest.fixture(scope="module")
def evaluated2(case, tmp_path_factory):
    """A two-sequence run in non-alphabetical order (flair, t1) of one sample (no diversity, no second
    sample panel), evaluated without --original and --mask."""
    out = _sample(case, ("flair", "t1"), tmp_path_factory.mktemp("run2"), tmp_path_factory.mktemp("checkpoints2"), 1)
    png_path = tmp_path_factory.mktemp("evaluate2") / "qa.png"
    result = _evaluate("--samples", out, "--report", png_path)
    return {"json": result, "png": png_path, "run": out}


def test_every_sequence_is_evaluated_and_its_lesion_kept_exactly(evaluated, case):
    result = evaluated["json"]
    assert list(result["sequences"]) == list(FOUR) == result["sequence_order"]
    assert result["samples"] == 2 and result["preserve"] == "exact"
    assert result["lesion_max_abs_diff"] == 0.0 and result["notes"] == []
    for name, section in result["sequences"].items():
        assert section["original"] == str(case["images"][name].resolve())
        assert section["stem"].endswith(f"_{name}") and section["shape"] == [120, 120, 78]
        assert section["lesion"]["max_abs_diff"] == 0.0 and section["lesion"]["voxels"] > 0
        assert all(entry["max_abs_diff_lesion"] == 0.0 for entry in section["per_sample"])
        assert [entry["file"] for entry in section["per_sample"]] == [
            f"{section['stem']}_outpaint_s00.nii.gz", f"{section['stem']}_outpaint_s01.nii.gz"
        ]
        assert section["diversity"]["cosine"]["pairs"] == 1
        assert section["realism"]["pairwise_difference_pct"]["min"] > 0
        assert section["std_map"]["inside"]["max"] == 0.0 and section["std_map"]["outside"]["mean"] > 0
    # Each sequence has its own intensities, so its figures are its own.
    ranges = [section["realism"]["intensity_range"] for section in result["sequences"].values()]
    assert len(set(ranges)) == 4


def test_each_sequence_is_compared_with_its_own_original(evaluated, case, run4):
    """Giving t1's original as t2's and t2's as t1's changes exactly those two sequences' figures."""
    right = evaluated["json"]["sequences"]
    swapped = _evaluate(*_originals(case["images"], {"t1": "t2", "t2": "t1"}), "--mask", case["mask"],
                        "--samples", run4)
    for name in ("t1", "t2"):
        wrong = swapped["sequences"][name]
        # The kept lesion is copied from the sequence's own original, so only that one matches it.
        assert wrong["lesion"]["max_abs_diff"] > 0 and right[name]["lesion"]["max_abs_diff"] == 0
        # Windows inside the lesion match the own original (copied there) far better than another sequence.
        assert wrong["fidelity_mean"]["ssim"]["inside"] < right[name]["fidelity_mean"]["ssim"]["inside"] - 0.1
    for name in ("t1ce", "flair"):
        assert swapped["sequences"][name]["per_sample"] == right[name]["per_sample"]
    assert swapped["lesion_max_abs_diff"] > 0
    notes = " ".join(swapped["notes"])
    assert len(swapped["notes"]) == 2 and "t1 original" in notes and "t2 original" in notes


def test_table_has_a_titled_block_per_sequence(evaluated, case):
    *blocks, tail = evaluated["table"].strip().split("\n\n")
    assert [block.split(" == ")[0].removeprefix("== ") for block in blocks] == list(FOUR)
    for name, block in zip(FOUR, blocks):
        lines = block.splitlines()
        assert f"{case['name']}_{name}: 2 samples" in lines[0] and "MS-SSIM out" in lines[1]
        assert lines[-1].startswith("std map") and len(lines) <= 10
    assert "max |sample - original| in the lesion over all of them 0" in tail


def test_report_has_one_row_per_sequence(evaluated, evaluated2):
    from PIL import Image

    report = evaluated["json"]["report"]
    assert report["rows"] == list(FOUR) and report["planes"] == ["axial"]
    assert report["panels"] == [
        "Condition", "Original", "Sample 1 (s00)", "Sample 2 (s01)", "Mean of 2", "Std"
    ]
    with Image.open(evaluated["png"]) as image:
        assert image.text["Description"].startswith("rows: t1 | t1ce | t2 | flair; panels: Condition")
        pixels = np.asarray(image.convert("RGB")).astype(int)
    with Image.open(evaluated2["png"]) as image:
        assert image.text["Description"].startswith("rows: flair | t1;")
        size2 = image.size
    # The figure grows by a row per sequence instead of shrinking the panels.
    assert pixels.shape[1] == size2[0] and 1.6 < pixels.shape[0] / size2[1] < 2.2
    # Inferno's warm colours appear only in the std maps and their bars: four separate bands, one a row.
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    warm_rows = np.flatnonzero(((red > 150) & (blue < 80) & (red - green > 60)).sum(axis=1) > 5)
    bands = 1 + int(np.count_nonzero(np.diff(warm_rows) > 20))
    assert bands == 4, warm_rows


def test_recorded_originals_are_used_when_none_are_given(evaluated2, case):
    result = evaluated2["json"]
    assert list(result["sequences"]) == ["flair", "t1"]  # the checkpoint's order, not the alphabet's
    assert result["mask"] == str(case["mask"].resolve()) and result["lesion_max_abs_diff"] == 0.0
    for name, section in result["sequences"].items():
        assert section["original"] == str(case["images"][name].resolve())
    explicit = _evaluate("--original", f"t1={case['images']['t1']}", "--original", f"flair={case['images']['flair']}",
                         "--mask", case["mask"], "--samples", evaluated2["run"])
    assert list(explicit["sequences"]) == ["flair", "t1"] and explicit["sequences"] == result["sequences"]


def test_one_sequence_alone_gives_the_single_run_layout(evaluated, case, run4):
    """``--original CASE_t2.nii.gz`` evaluates t2's samples only, as a single-sequence run."""
    alone = _evaluate("--original", case["images"]["t2"], "--mask", case["mask"], "--samples", run4)
    section = evaluated["json"]["sequences"]["t2"]
    assert alone["sequence"] == "t2" and "sequences" not in alone
    assert set(alone) - {"sequence"} == set(section)
    assert alone["per_sample"] == section["per_sample"] and alone["realism"] == section["realism"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"drop": "flair"}, ["--original lacks flair", "--original flair=FILE"]),
        ({"add": "dwi"}, ["has no dwi", "t1, t1ce, t2, flair"]),
        ({"twice": "t2"}, ["names t2 twice"]),
        ({"plain": True}, ["SEQUENCE=FILE"]),
    ],
    ids=["missing", "extra", "twice", "mixed"],
)
def test_clear_errors(case, run4, change, expected):
    args = _originals(case["images"])
    if "drop" in change:
        index = args.index(f"{change['drop']}={case['images'][change['drop']]}")
        del args[index - 1:index + 1]
    if "add" in change:
        args += ["--original", f"{change['add']}={case['images']['t1']}"]
    if "twice" in change:
        args += ["--original", f"{change['twice']}={case['images']['t1']}"]
    if "plain" in change:
        args += ["--original", case["images"]["t1"]]
    code, _, err = qa_data.run_cli("evaluate", *args, "--mask", case["mask"], "--samples", run4, "--progress", "none")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err


def test_plain_original_of_another_name_asks_for_every_sequence(case, run4, tmp_path):
    other = tmp_path / "scan.nii.gz"
    other.write_bytes(case["images"]["t1"].read_bytes())
    code, _, err = qa_data.run_cli("evaluate", "--original", other, "--mask", case["mask"], "--samples", run4)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "t1, t1ce, t2, flair" in err and "--original t1=FILE" in err


def test_recorded_original_that_has_gone_is_named(case, run4, tmp_path):
    """Without --original the run's own images are needed; a moved one is named with the way out."""
    moved = tmp_path / "run"
    moved.mkdir()
    for path in run4.iterdir():
        text = path.read_bytes()
        if path.suffix == ".json":
            text = text.replace(str(case["images"]["t2"].resolve()).encode(), str(tmp_path / "gone.nii.gz").encode())
        (moved / path.name).write_bytes(text)
    code, _, err = qa_data.run_cli("evaluate", "--samples", moved, "--progress", "none")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "t2 image" in err and "gone.nii.gz" in err and "--original t2=FILE" in err
