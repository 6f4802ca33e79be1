"""Cascades (a first stage and a refine stage in one checkpoint) and training-time warps.

The properties a user relies on: a block-by-block refine stage gives what one pass over the
whole grid would give; the first stage's image lands where it belongs on the finer grid; a
joined checkpoint samples on the input's grid with the lesion exact; a refine stage trains
(its loss falls) on real cases; warped training items stay plausible and reproducible.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import qa_data
import torch
from test_train import brats_or_skip, command, environment, tiny_options

from powdr_outpaint.errors import CheckpointError, PowdrError
from powdr_outpaint.imaging.masks import foreground_depth
from powdr_outpaint.imaging.preprocess import Prepared
from powdr_outpaint.model.checkpoint import (
    ModelConfig, initial_checkpoint, initial_weights, load_model, save_cascade, save_checkpoint, weights_for_run,
)
from powdr_outpaint.model.diffusion import DiffusionConfig, Schedule
from powdr_outpaint.model.samplers import Sampler
from powdr_outpaint.outpainting.cascade import block_starts, coarse_on_fine, denoise_in_blocks
from powdr_outpaint.outpainting.outpaint import denoise, sample_generator
from powdr_outpaint.training.augment import WarpSettings, random_warp, warp_case
from powdr_outpaint.training.data import PreparedCase
from powdr_outpaint.model.transforms import COARSE_BLUR, degrade_coarse
from powdr_outpaint.training.train import read_log, resolve_settings, train

# ------------------------------------------------------------------ blocks


@pytest.mark.parametrize("size,block", [(64, 32), (48, 32), (32, 32), (24, 32), (100, 32), (33, 16)])
def test_blocks_cover_the_grid_with_overlap(size, block):
    starts = block_starts(size, block, block // 2)
    covered = np.zeros(size, dtype=int)
    for s in starts:
        assert 0 <= s and s + min(block, size) <= size
        covered[s : s + block] += 1
    assert covered.min() >= 1
    if size > block:
        assert all(b - a <= block - block // 2 for a, b in zip(starts, starts[1:]))


def test_blockwise_denoising_equals_one_pass_for_a_local_network():
    """A network whose output at a voxel depends only on that voxel (and t) cannot tell blocks
    from the whole grid, so the blended block-wise chain must equal the one-pass chain."""
    torch.manual_seed(0)
    weights = torch.randn(8, 17) * 0.3

    def local(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        scale = (1.0 + t.float() / 1000.0).view(-1, 1, 1, 1, 1)
        return torch.tanh(torch.einsum("oc,bcxyz->boxyz", weights, x)) * scale * 0.5

    schedule = Schedule.from_config(DiffusionConfig())
    condition = torch.rand(2, 9, 24, 20, 16) * 2 - 1
    sampler = Sampler(schedule, "ddim", 6, 0.0)
    whole = denoise(local, condition, sampler, [sample_generator(3, i, torch.device("cpu")) for i in range(2)], 3.0)
    blocks = denoise_in_blocks(
        local, condition, sampler, [sample_generator(3, i, torch.device("cpu")) for i in range(2)], 3.0, (16, 16, 8)
    )
    assert blocks.shape == whole.shape == (2, 1, 48, 40, 32)
    assert torch.allclose(blocks, whole, atol=1e-5)


def _prepared(image: np.ndarray, affine: np.ndarray) -> Prepared:
    return Prepared(
        image=None, lesion=None, model_image=image.astype(np.float32), model_lesion=np.zeros(image.shape, bool),
        model_affine=affine, model_to_input=np.eye(4), low=0.0, high=1.0, background=0.0, exact=True,
    )


def test_first_stage_lands_on_the_block_centres_of_the_finer_grid():
    """With the coarse grid on the fine grid's 2x2x2 block centres, the first stage's image is
    handed over unchanged; shifted grids move it by the shift in millimetres."""
    rng = np.random.default_rng(0)
    fine_affine = np.diag([1.8, 1.8, 1.8, 1.0])
    fine_affine[:3, 3] = [-100.0, -120.0, -70.0]
    coarse_affine = np.diag([3.6, 3.6, 3.6, 1.0])
    coarse_affine[:3, 3] = fine_affine[:3, 3] + 0.9
    coarse = rng.uniform(-1, 1, (16, 12, 8)).astype(np.float32)
    fine = _prepared(np.zeros((32, 24, 16)), fine_affine)
    handed = coarse_on_fine(coarse, _prepared(coarse, coarse_affine), fine)
    assert handed.shape == (16, 12, 8)
    np.testing.assert_allclose(handed, coarse, atol=1e-6)
    # The coarse grid one coarse voxel further right: what was at index i is now at i - 1.
    shifted = coarse_affine.copy()
    shifted[0, 3] -= 3.6
    moved = coarse_on_fine(coarse, _prepared(coarse, shifted), fine)
    np.testing.assert_allclose(moved[:-1], coarse[1:], atol=1e-6)
    assert np.all(moved[-1] == -1.0)  # outside the first stage's grid: background


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def cascade_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cascade")
    first = initial_checkpoint(folder / "first.pt", "tiny", seed=0)
    refine = initial_checkpoint(folder / "refine.pt", "tiny-refine", seed=1)
    return save_cascade(first, refine, folder / "cascade.pt")


def test_cascade_checkpoint_loads_both_stages_and_refuses_wrong_joins(cascade_checkpoint, tmp_path):
    model = load_model(cascade_checkpoint)
    assert model.config.stage == "outpaint" and model.refiner is not None
    assert model.refiner.config.stage == "refine" and model.refiner.config.grid.patch == (32, 32, 32)
    first = tmp_path / "first.pt"
    refine = tmp_path / "refine.pt"
    initial_checkpoint(first, "tiny")
    initial_checkpoint(refine, "tiny-refine")
    with pytest.raises(CheckpointError, match="not a refine-stage model"):
        save_cascade(first, first, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a first-stage model"):
        save_cascade(refine, refine, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="only the refine stage"):
        load_model(refine)
    other = tmp_path / "flair.pt"
    initial_checkpoint(other, "tiny-refine", modality="flair")
    with pytest.raises(CheckpointError, match="t1 and the refine stage on flair"):
        save_cascade(first, other, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_one_stage_of_a_cascade_can_be_replaced(cascade_checkpoint, tmp_path):
    """A new first stage joined to a cascade's refine stage, and a cascade's first stage to a new
    refine stage: each stage comes from where it was asked for."""
    joined = load_model(cascade_checkpoint)
    new_first = initial_checkpoint(tmp_path / "first.pt", "tiny", seed=7)
    new_refine = initial_checkpoint(tmp_path / "refine.pt", "tiny-refine", seed=8)

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    swapped_first = load_model(save_cascade(new_first, cascade_checkpoint, tmp_path / "a.pt"))
    assert same(swapped_first.network.state_dict(), load_model(new_first).network.state_dict())
    assert same(swapped_first.refiner.network.state_dict(), joined.refiner.network.state_dict())
    assert not same(swapped_first.network.state_dict(), joined.network.state_dict())

    swapped_refine = load_model(save_cascade(cascade_checkpoint, new_refine, tmp_path / "b.pt"))
    assert same(swapped_refine.network.state_dict(), joined.network.state_dict())
    assert not same(swapped_refine.refiner.network.state_dict(), joined.refiner.network.state_dict())


@pytest.mark.parametrize("tiling", ["whole", "blocks"])
def test_cascade_samples_on_the_input_grid_with_the_lesion_exact(cascade_checkpoint, brats_case, tmp_path, tiling):
    result = subprocess.run(
        command("sample", "--image", brats_case["image"], "--mask", brats_case["mask"], "--checkpoint",
                cascade_checkpoint, "--samples", 2, "--steps", 3, "--refine-steps", 2, "--refine-tiling", tiling,
                "--device", "cpu", "--progress", "json", "--out", tmp_path),
        capture_output=True, text=True, timeout=600, env=environment(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads(next(tmp_path.glob("*_outpaint.json")).read_text())
    assert recorded["options"]["refine_tiling"] == tiling
    original = nib.load(str(brats_case["image"]))
    lesion = np.asarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    data = np.asarray(original.dataobj)
    samples = sorted(tmp_path.glob("*_outpaint_s[0-9]*.nii.gz"))
    assert len(samples) == 2
    for path in samples:
        sample = nib.load(str(path))
        assert sample.shape == original.shape and np.allclose(sample.affine, original.affine)
        values = np.asarray(sample.dataobj)
        assert np.array_equal(values[lesion], data[lesion])
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    work = [e for e in events if e.get("event") == "progress" and e.get("step") is not None]
    # Both stages report progress, and the bar reaches its end only with the last detail step.
    assert {e.get("stage") for e in work} >= {"sampling", "refining"}
    assert work[-1]["fraction"] == 1.0 and work[-1]["stage"] == "refining" and work[-1]["sample"] == 2
    assert all(e["fraction"] < 1.0 for e in work[:-1])


# ------------------------------------------------------------------ training


def test_refine_stage_trains_on_real_blocks(tmp_path):
    data = qa_data.linked_cases(brats_or_skip()[:3], tmp_path / "data")
    options = replace(
        tiny_options(tmp_path / "run", data, tmp_path / "cache"), preset="tiny-refine", iterations=40, save_every=40
    )
    result = train(options)
    losses = np.array([row["loss"] for row in read_log(tmp_path / "run" / "train_log.csv")])
    assert result.final_step == 40 and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.8 * losses[:10].mean()


def test_fine_tuning_from_a_cascade_starts_from_the_stage_it_trains(cascade_checkpoint, tmp_path):
    """--init-from with a cascade (the bundled model is one) takes the refine stage for a refine
    run, and a file without a refine stage is refused before anything is written."""
    data = qa_data.linked_cases(brats_or_skip()[:2], tmp_path / "data")
    options = replace(
        tiny_options(tmp_path / "run", data, tmp_path / "cache"), preset="tiny-refine", iterations=1, save_every=1,
        init_from=str(cascade_checkpoint),
    )
    train(options)
    tuned = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["weights"]
    refine = load_model(cascade_checkpoint).refiner.network.state_dict()
    fresh = initial_checkpoint(tmp_path / "fresh.pt", "tiny-refine", seed=5)
    fresh_weights = torch.load(fresh, weights_only=True)["weights"]
    # One step of EMA (decay near 1) keeps the starting weights almost exactly.
    name = next(k for k in refine if k.endswith("weight") and refine[k].dim() == 5)
    assert torch.allclose(tuned[name], refine[name], atol=1e-3)
    assert not torch.allclose(tuned[name], fresh_weights[name], atol=1e-3)

    first_only = initial_checkpoint(tmp_path / "first.pt", "tiny")
    with pytest.raises(PowdrError, match="--init-from: first.pt holds no refine stage"):
        train(replace(options, out=str(tmp_path / "other"), init_from=str(first_only)))
    assert not (tmp_path / "other" / "latest.pt").exists()


def test_fine_tuning_a_detail_stage_starts_from_the_cascades_detail_stage(tmp_path):
    """A refine-stage network serves a cascade twice: a run on the detail stage's grid (a
    demo-detail run from the bundled model) starts from the detail stage, not from the refine
    stage one octave finer; a run on the refine stage's grid still starts from the refine stage."""
    data = qa_data.linked_cases(brats_or_skip()[:2], tmp_path / "data")
    # The demo first stage on 3.6 mm, a tiny-refine detail stage on its grid, a refine stage on 1.8 mm.
    first = initial_checkpoint(tmp_path / "first.pt", "demo", seed=1)
    refine = initial_checkpoint(tmp_path / "refine.pt", "refine", seed=2)
    detail = initial_checkpoint(tmp_path / "detail.pt", "tiny-refine", seed=3)
    cascade = save_cascade(first, refine, tmp_path / "cascade.pt", detail_path=detail)
    model = load_model(cascade)
    assert model.detailer.config.grid.shape == ModelConfig.from_preset("tiny-refine").grid.shape
    options = replace(
        tiny_options(tmp_path / "run", data, tmp_path / "cache"), preset="tiny-refine", iterations=1, save_every=1,
        init_from=str(cascade),
    )
    train(options)
    tuned = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["weights"]
    detail_weights = model.detailer.network.state_dict()
    fresh = torch.load(initial_checkpoint(tmp_path / "fresh.pt", "tiny-refine", seed=5), weights_only=True)["weights"]
    name = next(k for k in detail_weights if k.endswith("weight") and detail_weights[k].dim() == 5)
    assert torch.allclose(tuned[name], detail_weights[name], atol=1e-3)
    assert not torch.allclose(tuned[name], fresh[name], atol=1e-3)
    # The refine stage's own preset still gets the refine stage (its network differs from tiny-refine's).
    assert weights_for_run(cascade, ModelConfig.from_preset("refine"))[0].grid.shape == (128, 128, 96)


def test_coarse_degradation_is_a_setting_of_refine_runs_only(tmp_path):
    """--coarse-blur/--coarse-noise are kept with a refine run (a resume cannot change them, an
    older run reads as the values it trained with) and refused, before anything is written, for a
    first stage, which has no coarse input."""
    data = qa_data.linked_cases(brats_or_skip()[:2], tmp_path / "data")
    options = replace(
        tiny_options(tmp_path / "run", data, tmp_path / "cache"), preset="tiny-refine", iterations=2, save_every=2,
        coarse_blur=2.5, coarse_noise=0.05,
    )
    train(options)
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["training_state"]
    assert state["settings"]["coarse_blur"] == 2.5 and state["settings"]["coarse_noise"] == 0.05
    with pytest.raises(PowdrError, match="--coarse-blur 1.0 differs from the run being resumed"):
        train(replace(options, resume=True, iterations=3, coarse_blur=1.0))
    stored = {k: v for k, v in state["settings"].items() if not k.startswith("coarse_")}
    assert resolve_settings(replace(options, coarse_blur=None, coarse_noise=None), stored).coarse_blur == COARSE_BLUR

    with pytest.raises(PowdrError, match="the tiny preset has none"):
        train(replace(options, out=str(tmp_path / "first"), preset="tiny", coarse_noise=None))
    assert not (tmp_path / "first" / "latest.pt").exists()
    with pytest.raises(PowdrError, match="--coarse-blur must lie in"):
        train(replace(options, out=str(tmp_path / "far"), coarse_blur=9.0))


def test_stronger_coarse_degradation_takes_more_detail_away():
    """The refine stage's coarse input keeps less of the true image's detail the larger
    --coarse-blur is; with no blur and no noise it is the true image itself."""
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (8, 1, 16, 16, 12)).astype(np.float32))

    def detail_kept(blur: float) -> float:
        degraded = degrade_coarse(coarse, torch.Generator().manual_seed(3), blur, 0.0)
        return float((degraded - degraded.mean()).square().mean() / (coarse - coarse.mean()).square().mean())

    same = degrade_coarse(coarse, torch.Generator().manual_seed(3), 0.0, 0.0)
    assert torch.equal(same, coarse)
    assert detail_kept(2.5) < 0.8 * detail_kept(1.0) < 0.8


# ------------------------------------------------------------------ warps


def _case(shape=(40, 36, 32)) -> PreparedCase:
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] * 0.4)) ** 2).sum(axis=0))
    foreground = radius < 1.0
    image = np.where(foreground, np.cos(grid[0] / 3.0) * 0.5, -1.0).astype(np.float32)
    lesion = foreground & (np.linalg.norm(grid - (centre + np.array([6, 0, 0])[:, None, None, None]), axis=0) < 4)
    return PreparedCase("synthetic", image, lesion, foreground, foreground_depth(foreground), int(lesion.sum()))


def test_warp_without_movement_is_the_identity():
    case = _case()
    still = WarpSettings(rotation_deg=0, scale=0, shift_mm=0, elastic_mm=0, mirror=False)
    coords = random_warp(case.image.shape, (2.0, 2.0, 2.0), np.random.default_rng(0), still)
    warped = warp_case(case, coords)
    np.testing.assert_allclose(warped.image, case.image, atol=1e-5)
    assert np.array_equal(warped.lesion, case.lesion) and np.array_equal(warped.foreground, case.foreground)


def test_warps_are_mild_reproducible_and_varied():
    case = _case()
    spacing = (3.6, 3.6, 3.6)
    first = warp_case(case, random_warp(case.image.shape, spacing, np.random.default_rng(5)))
    again = warp_case(case, random_warp(case.image.shape, spacing, np.random.default_rng(5)))
    other = warp_case(case, random_warp(case.image.shape, spacing, np.random.default_rng(6)))
    assert np.array_equal(first.image, again.image)
    assert not np.array_equal(first.image, other.image)
    # Mild: the brain keeps its volume within 25 %, the image its range, the lesion survives.
    for warped in (first, other):
        assert abs(int(warped.foreground.sum()) / int(case.foreground.sum()) - 1) < 0.25
        assert warped.image.min() >= -1.0 and warped.image.max() <= 1.0
        assert warped.lesion.any() and warped.lesion_voxels == int(warped.lesion.sum())
        assert warped.depth.max() > 0


def test_refined_image_keeps_the_first_stage_background():
    """The refine stage adds detail to the anatomy; it never paints where the first stage put
    nothing, and it is left alone everywhere else."""
    from powdr_outpaint.outpainting.cascade import keep_first_stage_background

    rng = np.random.default_rng(0)
    first = rng.uniform(-1, 1, (6, 5, 4)).astype(np.float32)
    first[:2] = -1.0
    refined = rng.uniform(-0.9, 1, (12, 10, 8)).astype(np.float32)
    kept = keep_first_stage_background(refined, first)
    assert np.all(kept[:4] == -1.0)
    np.testing.assert_array_equal(kept[4:], refined[4:])


# ------------------------------------------------------------------ detail stage


def _tiny_detail_stage(path: Path, seed: int = 2) -> Path:
    """A refine-stage network on the tiny first stage's own grid, with every layer random so its
    drawing shows in the samples (a trained one is measured in the model card)."""
    config = ModelConfig.from_preset("tiny-refine")
    first = ModelConfig.from_preset("tiny")
    config = replace(config, grid=replace(first.grid, patch=(32, 32, 32)))
    return save_checkpoint(path, config, initial_weights(config, seed))


def test_detail_stage_joins_only_a_first_stage_of_its_own_grid(cascade_checkpoint, tmp_path):
    detail = _tiny_detail_stage(tmp_path / "detail.pt")
    joined = save_cascade(cascade_checkpoint, None, tmp_path / "three.pt", detail_path=detail)
    model = load_model(joined)
    assert model.detailer is not None and model.refiner is not None  # the refine stage is kept
    assert model.detailer.config.grid.shape == model.config.grid.shape
    info = subprocess.run(command("info", "--checkpoint", joined, "--json"), capture_output=True, text=True,
                          env=environment())
    assert info.returncode == 0 and json.loads(info.stdout)["detail"]["parameters"] > 0
    # A refine stage on a grid neither the first stage's nor one octave finer is no detail stage of it.
    other = initial_checkpoint(tmp_path / "refine.pt", "tiny-refine")
    with pytest.raises(CheckpointError, match="must share the first stage's grid or be one octave finer"):
        save_cascade(cascade_checkpoint, None, tmp_path / "x.pt", detail_path=other)
    first = initial_checkpoint(tmp_path / "first.pt", "tiny")
    with pytest.raises(CheckpointError, match="holds no detail stage"):
        save_cascade(cascade_checkpoint, None, tmp_path / "x.pt", detail_path=first)
    with pytest.raises(CheckpointError, match="holds no detail stage"):
        save_cascade(first, None, tmp_path / "x.pt", detail_path=cascade_checkpoint)
    assert not (tmp_path / "x.pt").exists()
    # A cascade gives its detail stage to a new first stage, unchanged.
    again = load_model(save_cascade(first, None, tmp_path / "again.pt", detail_path=joined))
    for key, value in model.detailer.network.state_dict().items():
        assert torch.equal(again.detailer.network.state_dict()[key], value)


def test_detail_stage_redraws_the_first_stage_and_keeps_the_lesion(cascade_checkpoint, brats_case, tmp_path):
    """Sampling runs the first stage, the detail stage and the refine stage, reports each step of
    all three, and still returns the input's grid with the lesion exact."""
    detail = _tiny_detail_stage(tmp_path / "detail.pt")
    joined = save_cascade(cascade_checkpoint, None, tmp_path / "three.pt", detail_path=detail)
    outputs = {}
    for name, checkpoint in (("two", cascade_checkpoint), ("three", joined)):
        out = tmp_path / name
        result = subprocess.run(
            command("sample", "--image", brats_case["image"], "--mask", brats_case["mask"], "--checkpoint",
                    checkpoint, "--samples", 1, "--steps", 3, "--refine-steps", 2, "--seed", 4,
                    "--device", "cpu", "--progress", "json", "--out", out),
            capture_output=True, text=True, timeout=600, env=environment(),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        outputs[name] = (next(out.glob("*_outpaint_s00.nii.gz")), events)
    original = nib.load(str(brats_case["image"]))
    lesion = np.asarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    two, three = (np.asarray(nib.load(str(outputs[k][0])).dataobj) for k in ("two", "three"))
    assert three.shape == original.shape
    assert np.array_equal(three[lesion], np.asarray(original.dataobj)[lesion])
    # The same seed and first stage: what differs outside the lesion is the detail stage's drawing.
    assert np.abs(three[~lesion].astype(float) - two[~lesion]).mean() > 0
    work = [e for e in outputs["three"][1] if e.get("event") == "progress" and e.get("step") is not None]
    # The bar counts 3 + 2 + 2 steps (JSON lines are throttled, so not every step has its own).
    fractions = np.array([e["fraction"] for e in work])
    assert np.allclose(fractions * 7, np.round(fractions * 7), atol=1e-3)
    assert not np.allclose(fractions * 5, np.round(fractions * 5), atol=1e-3)
    assert work[-1]["fraction"] == 1.0 and "refine step 2/2" in work[-1]["message"]
    assert all(e["fraction"] < 1.0 for e in work[:-1])


# ------------------------------------------------------------------ a first stage one octave coarser


def _coarse_first_stage(path: Path, seed: int = 0) -> Path:
    """The tiny network on 24x24x16 voxels of 9.6 mm: one octave coarser than the tiny detail stage."""
    config = ModelConfig.from_preset("tiny")
    config = replace(config, grid=replace(config.grid, shape=(24, 24, 16), spacing=(9.6, 9.6, 9.6)))
    return save_checkpoint(path, config, initial_weights(config, seed))


def test_a_coarse_first_stage_reaches_the_finer_detail_stage_uninterpolated(brats_case):
    """The detail stage was trained to draw from the exact 2x2x2 block means of its own grid; a
    first stage one octave coarser must reach it as those values, not resampled across a
    millimetre's offset (grids planned on their own snap to the input's voxels)."""
    from powdr_outpaint.imaging.preprocess import lesion_on_image_grid, prepare
    from powdr_outpaint.imaging.volume_io import load_volume
    from powdr_outpaint.outpainting.cascade import octave_finer_affine

    image = load_volume(brats_case["image"], "image")
    lesion = lesion_on_image_grid(load_volume(brats_case["mask"], "mask"), image, None)
    coarse = prepare(image, lesion, ModelConfig.from_preset("demo-coarse"))
    fine = prepare(image, lesion, ModelConfig.from_preset("demo-detail"), octave_finer_affine(coarse.model_affine))
    drawn = np.random.default_rng(0).uniform(-1, 1, coarse.model_image.shape).astype(np.float32)
    np.testing.assert_allclose(coarse_on_fine(drawn, coarse, fine), drawn, atol=1e-5)
    # The finer grid holds the same lesion and the same image, twice as finely.
    assert fine.model_lesion.sum() > 4 * coarse.model_lesion.sum()
    means = fine.model_image.reshape(32, 2, 32, 2, 24, 2).mean(axis=(1, 3, 5))
    assert np.corrcoef(means.ravel(), coarse.model_image.ravel())[0, 1] > 0.97


def test_cascade_with_a_coarse_first_stage_samples_on_the_input_grid(cascade_checkpoint, brats_case, tmp_path):
    """First stage 9.6 mm, detail stage 4.8 mm, refine stage 3.6 mm: the file joins, the user
    gets the input's grid with the lesion exact, and the progress bar counts all three stages."""
    first = _coarse_first_stage(tmp_path / "coarse.pt")
    detail = _tiny_detail_stage(tmp_path / "detail.pt")
    joined = save_cascade(first, cascade_checkpoint, tmp_path / "three.pt", detail_path=detail)
    model = load_model(joined)
    assert model.detailer.config.grid.shape == tuple(2 * s for s in model.config.grid.shape)
    sample, result = qa_data.sample_on_input_grid(
        brats_case, joined, tmp_path / "out", "--steps", 3, "--refine-steps", 2, "--seed", 4, "--progress", "json"
    )
    lesion = np.asarray(nib.load(str(brats_case["mask"])).dataobj) > 0
    assert np.abs(sample[~lesion].astype(float)).mean() > 0
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    work = [e for e in events if e.get("event") == "progress" and e.get("step") is not None]
    fractions = np.array([e["fraction"] for e in work])
    assert np.allclose(fractions * 7, np.round(fractions * 7), atol=1e-3)
    assert work[-1]["fraction"] == 1.0 and "refine step 2/2" in work[-1]["message"]
