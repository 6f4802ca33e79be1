import numpy as np
import pytest
import pywt
import torch

from powdr_outpaint.model.wavelets import SUBBANDS, dwt3d, idwt3d

PYWT_KEYS = {"L": "a", "H": "d"}


@pytest.mark.parametrize("shape", [(8, 8, 8), (6, 4, 10), (4, 6, 16), (2, 2, 2)])
def test_every_subband_matches_pywavelets(shape):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=shape)
    ours = dwt3d(torch.from_numpy(volume)[None, None])
    reference = pywt.dwtn(volume, "haar")
    assert ours.shape == (1, 8, *(s // 2 for s in shape))
    for index, name in enumerate(SUBBANDS):
        key = "".join(PYWT_KEYS[letter] for letter in name)
        np.testing.assert_allclose(ours[0, index].numpy(), reference[key], rtol=1e-12, atol=1e-12)


def test_channels_are_stored_band_major():
    x = torch.randn(2, 3, 4, 4, 4)
    joint = dwt3d(x)
    for c in range(3):
        alone = dwt3d(x[:, c : c + 1])
        torch.testing.assert_close(joint[:, c::3], alone)


@pytest.mark.parametrize("shape", [(32, 32, 32), (16, 24, 40), (8, 8, 64)])
def test_round_trip_is_exact_in_float32(shape):
    x = torch.randn(2, 1, *shape, dtype=torch.float32) * 100
    back = idwt3d(dwt3d(x))
    relative = (back - x).norm() / x.norm()
    assert relative < 1e-6
    assert (back - x).abs().max() / x.abs().max() < 1e-5


def test_transform_is_orthonormal():
    x = torch.randn(1, 1, 8, 8, 8, dtype=torch.float64)
    assert torch.allclose(dwt3d(x).pow(2).sum(), x.pow(2).sum())


def test_odd_shapes_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="even sizes"):
        dwt3d(torch.zeros(1, 1, 8, 7, 8))
    with pytest.raises(ValueError, match="B, C, X, Y, Z"):
        dwt3d(torch.zeros(8, 8, 8))
