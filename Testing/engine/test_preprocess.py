"""Geometry and intensity mapping between the user's grid and the model grid."""

from dataclasses import replace

import nibabel as nib
import nrrd
import numpy as np
import pytest

from powdr_outpaint.errors import PowdrError
from powdr_outpaint.imaging.preprocess import (
    binarise,
    clear_haze,
    denormalise,
    has_clean_background,
    lesion_on_image_grid,
    match_tissue_level,
    normalise,
    parse_labels,
    prepare,
    to_input_grid,
)
from powdr_outpaint.imaging.volume_io import Volume, load_volume
from powdr_outpaint.model.checkpoint import ModelConfig
from powdr_outpaint.model.presets import GridConfig


@pytest.fixture(scope="module")
def case(brats_case):
    image = load_volume(brats_case["image"])
    mask = load_volume(brats_case["mask"], "mask")
    return image, mask, binarise(mask.data)


def _config(shape, spacing):
    return replace(ModelConfig.from_preset("tiny"), grid=GridConfig(shape, spacing))


def test_same_spacing_round_trip_is_exact(case):
    image, _, lesion = case
    prepared = prepare(image, lesion, _config((224, 224, 160), (1.0, 1.0, 1.0)))
    assert prepared.exact  # BraTS (LPS, 1 mm) onto the RAS 1 mm grid: flips and shifts only
    back = to_input_grid(prepared.model_image, prepared)
    data = image.data.astype(np.float64)
    low, high = prepared.low, prepared.high
    # Voxels inside the normalisation window come back to their own value.
    window = (data > low + 0.02 * (high - low)) & (data < high)
    assert window.sum() > 100_000
    np.testing.assert_allclose(back[window], data[window], rtol=1e-5, atol=1e-3 * (high - low))
    # The background stays the input's background value.
    assert np.all(back[data == data.min()] == data.min())


def test_resampled_round_trip_keeps_the_anatomy(case):
    image, _, lesion = case
    prepared = prepare(image, lesion, ModelConfig.from_preset("tiny"))
    assert not prepared.exact
    assert prepared.model_image.shape == (48, 48, 32)
    assert prepared.model_image.min() >= -1 and prepared.model_image.max() <= 1
    back = to_input_grid(prepared.model_image, prepared)
    assert back.shape == image.data.shape
    brain = image.data > 0
    correlation = np.corrcoef(back[brain], np.clip(image.data[brain], prepared.low, prepared.high))[0, 1]
    assert correlation > 0.8


def test_cubic_output_keeps_more_detail_and_an_exact_background(case):
    from powdr_outpaint.qa import metrics

    image, _, lesion = case
    prepared = prepare(image, lesion, _config((128, 128, 96), (1.8, 1.8, 1.8)))  # the refine stage's grid
    assert not prepared.exact
    data = image.data.astype(np.float64)
    brain = metrics.regions_of(data, lesion)["outside"]
    cubic = to_input_grid(prepared.model_image, prepared)
    linear = to_input_grid(prepared.model_image, prepared, order=1)
    detail = {name: metrics.high_frequency_ratio(back, data, brain) for name, back in
              (("cubic", cubic), ("linear", linear))}
    assert detail["cubic"] > detail["linear"] + 0.05, detail
    # No ringing outside what the model drew: its range, and background where trilinear gives it.
    values = denormalise(prepared.model_image, prepared.low, prepared.high, prepared.background)
    assert cubic.min() >= values.min() and cubic.max() <= values.max()
    np.testing.assert_array_equal(cubic[linear == prepared.background], prepared.background)
    assert np.corrcoef(cubic[brain], linear[brain])[0, 1] > 0.98


def test_faint_haze_in_the_air_is_cleared_and_anatomy_is_not(case):
    image, _, lesion = case
    prepared = prepare(image, lesion, ModelConfig.from_preset("tiny"))
    model_image = prepared.model_image.copy()
    # A faint patch in a corner of the field of view, away from the brain (2 % of the range).
    patch = np.zeros(model_image.shape, dtype=bool)
    patch[:6, :6, :6] = True
    assert np.all(model_image[patch] <= -1.0)
    model_image[patch] = -1.0 + 2 * 0.02
    cleared = clear_haze(model_image)
    assert np.all(cleared[patch] == -1.0)
    brain = prepared.model_image > -1.0 + 2 * 0.05
    np.testing.assert_array_equal(cleared[brain], model_image[brain])
    # BraTS air is exactly background; an image whose air is noise is left as drawn.
    data = image.data
    assert has_clean_background(data)
    noise = np.random.default_rng(0).uniform(0, 5, data.shape)
    assert not has_clean_background(np.where(data > data.min(), data, data.min() + noise))


def test_new_tissue_drawn_too_dark_is_put_back_on_the_input_level(case):
    from powdr_outpaint.qa import metrics

    image, _, lesion = case
    prepared = prepare(image, lesion, ModelConfig.from_preset("tiny"))
    data = image.data.astype(np.float64)
    background = prepared.background
    # What a model that drew the healthy tissue 20 % too dark would give, with its own
    # rendering of the lesion (bright here, so that it would mislead the level if counted).
    drawn = np.where(lesion, prepared.high * 2.0, background + (data - background) * 0.8)
    matched, factor = match_tissue_level(drawn, prepared)
    assert factor == pytest.approx(1.25, rel=1e-3)
    outside = metrics.regions_of(data, lesion)["outside"]
    scale = metrics.intensity_range(data, data > background)
    assert metrics.histogram_distance(drawn, data, outside, scale) > 0.05
    assert metrics.histogram_distance(matched, data, outside, scale) < 0.002
    # The background stays exactly background; the lesion's voxels are not touched here.
    assert np.all(matched[data == background] == background)
    np.testing.assert_array_equal(matched[lesion], drawn[lesion])
    # A factor beyond what a plausible sample needs is clamped, not trusted.
    _, clamped = match_tissue_level(background + (data - background) * 0.3, prepared)
    assert clamped == pytest.approx(1.5)


def test_lesion_is_kept_inside_the_field_of_view(case):
    image, _, _ = case
    config = _config((96, 96, 64), (1.0, 1.0, 1.0))  # smaller than the brain
    lesion = np.zeros(image.data.shape, bool)
    brain = np.argwhere(image.data > 0)
    corner = brain.min(axis=0) + 3
    lesion[tuple(slice(c, c + 5) for c in corner)] = True
    prepared = prepare(image, lesion, config)
    assert prepared.model_lesion.sum() == lesion.sum()


def test_lesion_larger_than_the_field_of_view_is_refused(case):
    image, _, _ = case
    lesion = image.data > 0
    with pytest.raises(PowdrError, match="larger than the model's field of view"):
        prepare(image, lesion, _config((96, 96, 64), (1.0, 1.0, 1.0)))


def test_mask_on_another_grid_is_resampled_in_physical_space(case):
    image, mask, lesion = case
    # The same labels stored flipped along the first axis and cropped: same physical place.
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = image.data.shape[0] - 1
    crop = np.eye(4)
    crop[:3, 3] = [0, 10, 5]
    other = Volume(
        data=mask.data[::-1, 10:, 5:].copy(),
        affine=image.affine @ flip @ crop,
    )
    resampled = lesion_on_image_grid(other, image, None)
    assert np.array_equal(resampled, lesion)
    # Half the resolution: nearest neighbour keeps the lesion in place.
    coarse = Volume(data=mask.data[::2, ::2, ::2].copy(), affine=image.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    resampled = lesion_on_image_grid(coarse, image, None)
    dice = 2 * (resampled & lesion).sum() / (resampled.sum() + lesion.sum())
    assert dice > 0.85


def test_mask_elsewhere_in_space_is_refused(case):
    image, mask, _ = case
    far = image.affine.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(PowdrError, match="does not overlap"):
        lesion_on_image_grid(Volume(mask.data, far), image, None)


def test_labels_and_empty_masks(case):
    _, mask, _ = case
    assert parse_labels("1, 4") == (1, 4)
    assert parse_labels(None) is None
    with pytest.raises(PowdrError, match="comma-separated"):
        parse_labels("one")
    only_enhancing = binarise(mask.data, (4,))
    assert only_enhancing.sum() == (mask.data == 4).sum()
    with pytest.raises(PowdrError, match="empty"):
        lesion_on_image_grid(Volume(np.zeros_like(mask.data), mask.affine), Volume(mask.data, mask.affine), None)


def test_percentile_normalisation_does_not_assume_a_range(brats_dir):
    # This case stores raw scanner values up to 32767.
    case = brats_dir / "Brats18_TCIA10_639_1"
    image = load_volume(case / "Brats18_TCIA10_639_1_t1.nii.gz")
    lesion = binarise(load_volume(case / "Brats18_TCIA10_639_1_seg.nii.gz").data)
    prepared = prepare(image, lesion, ModelConfig.from_preset("tiny"))
    brain = prepared.model_image[prepared.model_image > -1]
    assert 0.3 < np.median((brain + 1) / 2) < 0.8
    np.testing.assert_allclose(normalise(np.array([prepared.low, prepared.high]), prepared.low, prepared.high), [-1, 1])


def test_nrrd_and_nifti_give_the_same_geometry(case, tmp_path, brats_case):
    image, _, _ = case
    nifti = nib.load(brats_case["image"])
    # NRRD stores LPS; convert the RAS affine for the header.
    lps = np.diag([-1.0, -1.0, 1.0]) @ nifti.affine[:3]
    header = {"space": "left-posterior-superior", "space directions": lps[:, :3].T, "space origin": lps[:, 3]}
    path = tmp_path / "t1.nrrd"
    nrrd.write(str(path), image.data, header)
    loaded = load_volume(path)
    np.testing.assert_allclose(loaded.affine, image.affine, atol=1e-6)
    assert np.array_equal(loaded.data, image.data)


def test_dilation_grows_the_lesion_by_a_physical_radius():
    from powdr_outpaint.imaging.preprocess import dilate_lesion

    lesion = np.zeros((21, 21, 21), bool)
    lesion[10, 10, 10] = True
    grown = dilate_lesion(lesion, np.array([1.0, 1.0, 2.0]), 4.0)
    assert grown[10, 10, 10] and grown[14, 10, 10] and not grown[15, 10, 10]
    assert grown[10, 10, 12] and not grown[10, 10, 13]  # 2 mm voxels along the last axis
    assert np.array_equal(dilate_lesion(lesion, np.ones(3), 0), lesion)
