"""The random-mask generator of strategy B, on real brain foregrounds from BraTS."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from powdr_outpaint.imaging.masks import ball, dilate, foreground_depth, largest_component, random_mask
from powdr_outpaint.model.checkpoint import ModelConfig
from powdr_outpaint.training.data import PrepareSettings, discover_cases, prepare_case

REPO = Path(__file__).resolve().parents[2]
BRATS = Path(os.environ.get("POWDR_BRATS_DIR", REPO.parent / "shared" / "data" / "brats18"))
SIX = ndimage.generate_binary_structure(3, 1)


def brats_or_skip() -> Path:
    if not BRATS.is_dir() or not any(BRATS.iterdir()):
        pytest.skip(f"BraTS sample data not found at {BRATS} "
                    "(set POWDR_BRATS_DIR or place ../shared beside the repository)")
    return BRATS


@pytest.fixture(scope="module")
def model_cases() -> list:
    """Four BraTS cases on the model grids of the tiny (4.8 mm) and small (2.4 mm) presets."""
    cases, _ = discover_cases(brats_or_skip(), "t1")
    out = {}
    for preset in ("tiny", "small"):
        settings = PrepareSettings(ModelConfig.from_preset(preset))
        out[preset] = [prepare_case(files, settings) for files in cases[:4]]
    return out


def check_mask(mask: np.ndarray, foreground: np.ndarray, target: int) -> None:
    assert mask.dtype == bool and mask.shape == foreground.shape
    _, components = ndimage.label(mask, structure=SIX)
    assert components == 1, f"{components} 6-connected components"
    assert not (mask & ~foreground).any(), "the mask leaves the foreground"
    assert abs(int(mask.sum()) - target) <= 0.1 * target, f"{int(mask.sum())} voxels for a target of {target}"


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_hundred_seeds_connected_inside_and_on_volume(model_cases, preset):
    cases = model_cases[preset]
    # Targets follow the tumour volumes of these cases on this grid, as in training.
    volumes = np.array([c.lesion_voxels for c in cases])
    assert volumes.min() > 10
    rng = np.random.default_rng(1234)
    centres = []
    for seed in range(100):
        case = cases[seed % len(cases)]
        target = int(rng.choice(volumes) * rng.uniform(0.7, 1.3))
        mask = random_mask(case.foreground, target, seed, depth=case.depth)
        check_mask(mask, case.foreground, target)
        centres.append(np.argwhere(mask).mean(axis=0))
    # Placement varies: the blobs are not all put in one spot.
    assert np.std(np.array(centres), axis=0).min() > 1.0


def test_native_resolution_large_targets():
    """1 mm brain grid with tumour-sized targets (32 000 to 185 000 voxels in BraTS)."""
    brats = brats_or_skip()
    case = sorted(p for p in brats.iterdir() if p.is_dir())[0]
    data = np.asarray(nib.load(str(case / f"{case.name}_t1.nii.gz")).dataobj)
    foreground = largest_component(ndimage.binary_fill_holes(data > data.min()))
    depth = foreground_depth(foreground)
    for seed, target in enumerate((32_000, 90_000, 185_000)):
        check_mask(random_mask(foreground, target, seed, depth=depth), foreground, target)


def test_reproducible_from_the_seed(model_cases):
    case = model_cases["tiny"][0]
    target = case.lesion_voxels
    first = random_mask(case.foreground, target, 7)
    again = random_mask(case.foreground, target, 7, depth=case.depth)
    from_generator = random_mask(case.foreground, target, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, from_generator)
    others = [random_mask(case.foreground, target, s) for s in range(8, 13)]
    assert all(not np.array_equal(first, other) for other in others)


def test_shapes_are_compact_blobs(model_cases):
    """Blobs resemble tumours: far from a line or a sheet, not a perfect ball either."""
    case = model_cases["small"][0]
    target = 4000
    for seed in range(5):
        mask = random_mask(case.foreground, target, seed, depth=case.depth)
        extent = np.ptp(np.argwhere(mask), axis=0) + 1
        ball_diameter = 2 * (3 * target / (4 * np.pi)) ** (1 / 3)
        assert extent.max() < 3.5 * ball_diameter and extent.min() > 0.3 * ball_diameter
        surface = int((mask & ~ndimage.binary_erosion(mask, SIX)).sum())
        # A ball of this volume has about 1200 surface voxels; a sheet or line would have all.
        assert surface < 0.6 * target


def test_thin_foreground_falls_back_to_the_whole_grid():
    # A strip 3 voxels wide, 1 thick and 200 long: the box a few radii around the seed
    # holds fewer than 100 strip voxels, so reaching 400 needs growth along the whole grid.
    foreground = np.zeros((200, 5, 3), dtype=bool)
    foreground[:, 1:4, 1] = True
    for seed in range(10):
        check_mask(random_mask(foreground, 400, seed), foreground, 400)


def test_small_islands_are_not_used():
    foreground = np.zeros((30, 30, 30), dtype=bool)
    foreground[2:5, 2:5, 2:5] = True  # 27 voxels
    foreground[10:28, 10:28, 10:28] = True
    for seed in range(20):
        check_mask(random_mask(foreground, 1000, seed), foreground, 1000)


def test_impossible_targets_are_refused():
    foreground = np.zeros((10, 10, 10), dtype=bool)
    foreground[2:6, 2:6, 2:6] = True  # 64 voxels
    with pytest.raises(ValueError, match="fewer than the requested"):
        random_mask(foreground, 65, 0)
    with pytest.raises(ValueError):
        random_mask(foreground, 0, 0)
    with pytest.raises(ValueError, match="empty"):
        random_mask(np.zeros((5, 5, 5), dtype=bool), 3, 0)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_dilate_matches_a_spherical_structuring_element(radius):
    rng = np.random.default_rng(radius)
    mask = np.zeros((30, 31, 32), dtype=bool)
    mask[tuple(rng.integers(3, 27, size=(3, 12)))] = True
    # Independent construction of the ball: every offset with |d| <= r.
    offsets = np.array([(i, j, k) for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)
                        for k in range(-radius, radius + 1) if i * i + j * j + k * k <= radius * radius])
    structure = np.zeros((2 * radius + 1,) * 3, dtype=bool)
    structure[tuple((offsets + radius).T)] = True
    np.testing.assert_array_equal(ball(radius), structure)
    expected = ndimage.binary_dilation(mask, structure=structure)
    np.testing.assert_array_equal(dilate(mask, radius), expected)
    np.testing.assert_array_equal(dilate(mask, 0), mask)
    if radius == 1:
        np.testing.assert_array_equal(structure, SIX)
