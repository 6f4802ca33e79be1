"""Resampling between grids: the axis-aligned fast path gives what a general 3-D spline gives."""

import numpy as np
import pytest
from scipy import ndimage

from powdr_outpaint.imaging.preprocess import blend_weights
from powdr_outpaint.imaging.resample import axis_order, resample


def _general(data, out_to_in, shape, order, cval):
    return ndimage.affine_transform(data, out_to_in[:3, :3], offset=out_to_in[:3, 3], output_shape=shape,
                                    order=order, mode="constant", cval=cval)


MAPPINGS = {
    # model grid -> 1 mm input: scaling and a shift, part of the output outside the input
    "scaled": (np.diag([0.55, 0.5, 0.6]), [-1.3, 0.2, -0.7]),
    # LPS scan against an RAS model grid: flips, and the first two axes swapped
    "flipped and permuted": (np.array([[0.0, -0.5, 0.0], [0.55, 0.0, 0.0], [0.0, 0.0, -0.56]]), [18.0, -2.0, 13.5]),
    # half-voxel shift on one axis only
    "shifted": (np.eye(3), [0.5, 0.25, 0.0]),
}


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("name", list(MAPPINGS))
def test_axis_aligned_resampling_matches_a_general_spline(name, order):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 18, 14)).astype(np.float32)
    matrix, offset = MAPPINGS[name]
    out_to_in = np.eye(4)
    out_to_in[:3, :3], out_to_in[:3, 3] = matrix, offset
    shape = (37, 33, 25)
    assert axis_order(matrix) is not None
    fast = resample(data, out_to_in, shape, order, cval=-5.0)
    expected = _general(data, out_to_in, shape, order, cval=-5.0)
    assert fast.dtype == data.dtype
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-5)
    # Outside the input exactly the fill value, as before.
    assert np.array_equal(fast == -5.0, expected == -5.0) and (fast == -5.0).any()


def test_oblique_mapping_takes_the_general_spline():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(16, 16, 16))
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    out_to_in = np.eye(4)
    out_to_in[:3, :3], out_to_in[:3, 3] = 0.8 * rotation, [2.0, -1.0, 0.5]
    assert axis_order(out_to_in[:3, :3]) is None
    np.testing.assert_array_equal(resample(data, out_to_in, (20, 20, 20), 3, 0.0),
                                  _general(data, out_to_in, (20, 20, 20), 3, 0.0))


def test_blend_weights_are_those_of_the_whole_grid_distance():
    lesion = np.zeros((60, 50, 40), bool)
    lesion[20:28, 15:30, 10:14] = True
    lesion[31, 33, 20] = True
    spacing = np.array([1.0, 0.9, 2.5])
    width = 3.6
    weights = blend_weights(lesion, spacing, width)
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    np.testing.assert_allclose(weights, np.clip(1.0 - distance / width, 0.0, 1.0), rtol=0, atol=1e-12)
    assert weights[lesion].min() == 1.0 and 0 < weights.sum() - lesion.sum()
