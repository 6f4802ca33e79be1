"""Quality metrics of outpainted samples: diversity, fidelity to the original, lesion checks.

All functions are pure: arrays in, numbers out. Volumes are (X, Y, Z) arrays on one
grid, in the intensity units of the original image; masks are boolean arrays of the
same shape.

Definitions
-----------
Diversity (between the N samples, over the N(N-1)/2 unordered pairs):

* cosine similarity of the flattened volumes, ``<a, b> / (|a| |b|)``: 1 for identical
  samples, near 0 for independent zero-mean noise. MRI intensities are non-negative
  and every sample shares the lesion and the background, so real samples score high
  (typically > 0.9); differences between runs matter more than the absolute value.
* KL divergence of 50-bin intensity histograms. All samples use the same bin edges
  (from the smallest to the largest value over every sample), each histogram is
  turned into probabilities, ``epsilon`` (1e-10) is added to every bin and the result
  renormalised so that empty bins stay finite. KL is not symmetric, so a pair's value
  is the mean of both directions, ``(KL(p||q) + KL(q||p)) / 2``; identical samples
  give 0.

Fidelity (each sample against the original, inside and outside the lesion):

* SSIM with a 7x7x7 uniform window (scikit-image's default window; K1 = 0.01,
  K2 = 0.03, sample covariance), data range = the original's max - min. The SSIM map
  is averaged over the region's voxels, leaving out the 3-voxel border where the
  window does not fit (as scikit-image does for its mean SSIM).
* MS-SSIM (Wang, Simoncelli and Bovik, 2003) with the same window at up to 5 scales
  and the standard weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); each scale halves
  the volume by 2x2x2 averaging. A BraTS volume of 240 x 240 x 155 becomes
  120 x 120 x 77, 60 x 60 x 38, 30 x 30 x 19 and 15 x 15 x 9 voxels: the 7-voxel
  window still fits the 9 slices of the last scale, which the paper-standard
  11-voxel Gaussian window would not (it needs 161 slices at 5 scales). Smaller
  volumes use as many scales as fit, with the weights renormalised; the number used
  is reported. The region masks are halved with the volumes (a coarse voxel belongs
  to a region when at least half of its fine voxels do). Region means of negative
  contrast-structure terms are clipped to 0 before the fractional powers.
* "Inside" is the lesion; "outside" is the original's foreground (voxels above its
  minimum, i.e. the head for skull-stripped or background-zero images) without the
  lesion, so the empty background, identical in every sample, does not inflate the
  scores.

Realism (the new tissue: "brain" is the original's foreground, the region is the brain
outside the lesion; the intensity range is the 1st-99th percentile range of the original's
brain, the range the model normalises by):

* pairwise difference: for each pair of samples, the mean |a - b| over the region, in %
  of the intensity range; the smallest and the median pair are reported. Identical
  samples give 0; two different real brains registered to one atlas give 10-20 %.
* high-frequency ratio: the amount of fine detail, the root mean square of x - G2(x) over
  the region, where G2 is a Gaussian blur with sigma = 2 voxels, of a sample divided by
  that of the original. 1 for a sample as detailed as the original; the original itself
  taken to a coarser model grid and back to 1 mm (what a flawless model on that grid
  gives) reaches 0.47 at 3.6 mm, 0.58 at 2.4 mm and 0.66 at 1.8 mm on BraTS T1
  (Brats18_TCIA10_639_1).
* histogram distance: the 1-D Wasserstein (earth mover's) distance between the intensity
  distributions of a sample and of the original over the region, as a fraction of the
  intensity range. 0 for the same distribution; different real BraTS patients lie
  0.04-0.15 apart.

Lesion preservation: the maximum absolute difference between each sample and the
original over the lesion voxels (0 with ``--preserve exact``).

Uncertainty: statistics of the voxel-wise standard deviation map inside the lesion
and outside it (same regions as above).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

# Wang, Simoncelli and Bovik (2003), Table 1: the weights of scales 1..5.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 7
HISTOGRAM_BINS = 50
KL_EPSILON = 1e-10
K1 = 0.01
K2 = 0.03


@dataclass(frozen=True)
class PairStats:
    """A pairwise statistic over the N(N-1)/2 unordered sample pairs."""

    mean: float
    std: float
    pairs: int
    values: tuple[float, ...]

    def as_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "pairs": self.pairs, "values": list(self.values)}


def _pair_stats(values: list[float]) -> PairStats:
    if not values:
        return PairStats(float("nan"), float("nan"), 0, ())
    array = np.asarray(values, dtype=np.float64)
    return PairStats(float(array.mean()), float(array.std()), len(values), tuple(float(v) for v in values))


def _check_samples(samples: Sequence[np.ndarray], mask: np.ndarray | None) -> None:
    if len(samples) < 2:
        raise ValueError(f"pairwise statistics need at least 2 samples; got {len(samples)}")
    shape = samples[0].shape
    if any(s.shape != shape for s in samples):
        raise ValueError("all samples must have the same shape")
    if mask is not None and mask.shape != shape:
        raise ValueError(f"the mask shape {mask.shape} differs from the samples' {shape}")


def pairwise_cosine(
    samples: Sequence[np.ndarray],
    mask: np.ndarray | None = None,
    chunk_voxels: int = 1 << 20,
) -> PairStats:
    """Cosine similarity of every pair of flattened samples.

    Args:
        samples: N >= 2 arrays of one shape (any dtype).
        mask: optional boolean array; only its voxels enter the vectors.
        chunk_voxels: voxels converted to float64 at a time (bounds the extra memory).
    Returns:
        Mean and (population) std over the N(N-1)/2 pairs. A pair with an all-zero
        sample has no angle and gives NaN.
    """
    _check_samples(samples, mask)
    vectors = [np.asarray(s).reshape(-1) if mask is None else np.asarray(s)[mask] for s in samples]
    n, length = len(vectors), vectors[0].size
    gram = np.zeros((n, n), dtype=np.float64)
    # Accumulate the Gram matrix chunk by chunk in float64: exact enough for 10^7 voxels
    # without holding a float64 copy of every sample.
    for start in range(0, length, chunk_voxels):
        block = np.stack([v[start : start + chunk_voxels] for v in vectors]).astype(np.float64)
        gram += block @ block.T
    norms = np.sqrt(np.diag(gram))
    values = []
    for i in range(n):
        for j in range(i + 1, n):
            denominator = norms[i] * norms[j]
            values.append(float(gram[i, j] / denominator) if denominator > 0 else float("nan"))
    return _pair_stats(values)


def histograms(
    samples: Sequence[np.ndarray],
    bins: int = HISTOGRAM_BINS,
    mask: np.ndarray | None = None,
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity histograms of every sample on common bin edges.

    Returns:
        counts (N, bins) int64 and edges (bins + 1,) in intensity units. The edges span
        the smallest to the largest value over all samples unless ``value_range`` is given.
    """
    values = [np.asarray(s).reshape(-1) if mask is None else np.asarray(s)[mask] for s in samples]
    if value_range is None:
        low = min(float(v.min()) for v in values)
        high = max(float(v.max()) for v in values)
    else:
        low, high = (float(x) for x in value_range)
    if not high > low:
        # Constant data: one bin holds everything; widen the range so edges are distinct.
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    counts = np.stack([np.histogram(v, bins=edges)[0] for v in values]).astype(np.int64)
    return counts, edges


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, epsilon: float = KL_EPSILON) -> float:
    """KL(P || Q) in nats of two histograms (counts or probabilities) with ``epsilon`` smoothing."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    p = p / p.sum() + epsilon
    q = q / q.sum() + epsilon
    p /= p.sum()
    q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


def pairwise_kl(
    samples: Sequence[np.ndarray],
    bins: int = HISTOGRAM_BINS,
    epsilon: float = KL_EPSILON,
    mask: np.ndarray | None = None,
) -> PairStats:
    """Symmetrised KL divergence of the samples' histograms, over the N(N-1)/2 pairs (nats)."""
    _check_samples(samples, mask)
    counts, _ = histograms(samples, bins, mask)
    return pairwise_kl_from_histograms(counts, epsilon)


def pairwise_kl_from_histograms(counts: np.ndarray, epsilon: float = KL_EPSILON) -> PairStats:
    """As :func:`pairwise_kl`, from histograms (N, bins) already on common bins."""
    values = []
    for i in range(len(counts)):
        for j in range(i + 1, len(counts)):
            forward = kl_divergence(counts[i], counts[j], epsilon)
            backward = kl_divergence(counts[j], counts[i], epsilon)
            values.append(0.5 * (forward + backward))
    return _pair_stats(values)


# --------------------------------------------------------------------------- SSIM


def ssim_maps(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float,
    win_size: int = SSIM_WINDOW,
) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and contrast-structure maps of SSIM (uniform window, sample covariance).

    ``luminance * contrast_structure`` is scikit-image's SSIM map for
    ``gaussian_weights=False, use_sample_covariance=True`` (checked by the tests);
    MS-SSIM needs the two factors apart, which scikit-image does not return.

    Args:
        x, y: arrays of one shape, every side >= ``win_size``.
        data_range: the dynamic range of the data (intensity units), > 0.
    Returns:
        (luminance, contrast_structure), float32 or float64 like the inputs, shape of x.
    """
    if win_size % 2 != 1 or min(x.shape) < win_size:
        raise ValueError(f"the SSIM window ({win_size}) must be odd and fit every side of {x.shape}")
    if not data_range > 0:
        raise ValueError("data_range must be positive")
    dtype = np.float32 if x.dtype == np.float32 and y.dtype == np.float32 else np.float64
    x = x.astype(dtype, copy=False)
    y = y.astype(dtype, copy=False)
    n = win_size**x.ndim
    cov_norm = n / (n - 1)
    mean_x = ndimage.uniform_filter(x, win_size)
    mean_y = ndimage.uniform_filter(y, win_size)
    var_x = cov_norm * (ndimage.uniform_filter(x * x, win_size) - mean_x * mean_x)
    var_y = cov_norm * (ndimage.uniform_filter(y * y, win_size) - mean_y * mean_y)
    cov = cov_norm * (ndimage.uniform_filter(x * y, win_size) - mean_x * mean_y)
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    luminance = (2 * mean_x * mean_y + c1) / (mean_x * mean_x + mean_y * mean_y + c1)
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    return luminance, contrast_structure


def _interior(shape: tuple[int, ...], win_size: int) -> np.ndarray:
    """True where the whole window lies inside the volume (scikit-image's crop)."""
    pad = (win_size - 1) // 2
    inside = np.zeros(shape, dtype=bool)
    inside[tuple(slice(pad, s - pad) for s in shape)] = True
    return inside


def _region_mean(values: np.ndarray, region: np.ndarray) -> float:
    count = int(np.count_nonzero(region))
    return float(values[region].mean(dtype=np.float64)) if count else float("nan")


def ssim_regions(
    sample: np.ndarray,
    original: np.ndarray,
    regions: dict[str, np.ndarray | None],
    data_range: float,
    win_size: int = SSIM_WINDOW,
) -> dict[str, float]:
    """Mean SSIM of ``sample`` vs ``original`` over each named region.

    The SSIM map is scikit-image's (``structural_similarity(full=True)``, uniform
    ``win_size`` window). Border voxels where the window does not fit are left out;
    a region of None means the whole volume (which then equals scikit-image's mean SSIM).

    Returns:
        {region name: mean SSIM}, NaN for a region with no interior voxel.
    """
    from skimage.metrics import structural_similarity

    dtype = np.float32 if sample.dtype == np.float32 and original.dtype == np.float32 else np.float64
    _, ssim_map = structural_similarity(
        original.astype(dtype, copy=False),
        sample.astype(dtype, copy=False),
        win_size=win_size,
        data_range=float(data_range),
        gaussian_weights=False,
        use_sample_covariance=True,
        full=True,
    )
    interior = _interior(sample.shape, win_size)
    return {
        name: _region_mean(ssim_map, interior if mask is None else (interior & mask))
        for name, mask in regions.items()
    }


def _halve(volume: np.ndarray) -> np.ndarray:
    """2x2x2 average pooling; an odd last voxel along an axis is dropped."""
    cropped = volume[tuple(slice(0, (s // 2) * 2) for s in volume.shape)]
    shape = []
    for size in cropped.shape:
        shape.extend([size // 2, 2])
    return cropped.reshape(shape).mean(axis=tuple(range(1, 2 * cropped.ndim, 2)), dtype=np.float64).astype(volume.dtype)


def _halve_mask(mask: np.ndarray) -> np.ndarray:
    fraction = _halve(mask.astype(np.float32))
    halved = fraction >= 0.5
    # A small region may vanish at coarse scales; keep every coarse voxel it touches.
    return halved if halved.any() or not mask.any() else fraction > 0


def ms_ssim_scales(shape: tuple[int, ...], win_size: int = SSIM_WINDOW, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales fit: the window must fit the shortest side at the last scale."""
    scales = 0
    sides = np.asarray(shape)
    while scales < max_scales and sides.min() >= win_size:
        scales += 1
        sides = sides // 2
    return scales


def ms_ssim_regions(
    sample: np.ndarray,
    original: np.ndarray,
    regions: dict[str, np.ndarray | None],
    data_range: float,
    win_size: int = SSIM_WINDOW,
    max_scales: int = len(MS_SSIM_WEIGHTS),
) -> tuple[dict[str, float], int]:
    """MS-SSIM of ``sample`` vs ``original`` over each named region (None: whole volume).

    Returns:
        ({region name: MS-SSIM}, number of scales used).
    """
    scales = ms_ssim_scales(sample.shape, win_size, max_scales)
    if scales == 0:
        raise ValueError(f"the volume {sample.shape} is smaller than the {win_size}-voxel SSIM window")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
    if scales < len(MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    dtype = np.float32 if sample.dtype == np.float32 and original.dtype == np.float32 else np.float64
    x = original.astype(dtype, copy=False)
    y = sample.astype(dtype, copy=False)
    masks = {name: (np.ones(x.shape, bool) if m is None else m) for name, m in regions.items()}
    terms: dict[str, list[float]] = {name: [] for name in regions}
    for scale in range(scales):
        luminance, contrast_structure = ssim_maps(x, y, data_range, win_size)
        last = scale == scales - 1
        values = luminance * contrast_structure if last else contrast_structure
        interior = _interior(x.shape, win_size)
        for name, mask in masks.items():
            terms[name].append(_region_mean(values, interior & mask))
        if not last:
            x, y = _halve(x), _halve(y)
            masks = {name: _halve_mask(m) for name, m in masks.items()}
    result = {}
    for name, values in terms.items():
        array = np.asarray(values, dtype=np.float64)
        if np.isnan(array).any():
            result[name] = float("nan")
            continue
        result[name] = float(np.prod(np.clip(array, 0.0, None) ** weights))
    return result, scales


# --------------------------------------------------------------- lesion and std map


def max_abs_difference(sample: np.ndarray, original: np.ndarray, mask: np.ndarray) -> float:
    """Largest |sample - original| over the voxels of ``mask`` (intensity units); 0 for an empty mask."""
    if not mask.any():
        return 0.0
    return float(np.max(np.abs(sample[mask].astype(np.float64) - original[mask].astype(np.float64))))


@dataclass(frozen=True)
class MapStats:
    """Summary of a map's values over a region (intensity units)."""

    voxels: int
    mean: float
    median: float
    p95: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def region_stats(values: np.ndarray, mask: np.ndarray) -> MapStats:
    """Mean, median, 95th percentile and maximum of ``values`` over ``mask``."""
    selected = np.asarray(values)[mask].astype(np.float64)
    if selected.size == 0:
        nan = float("nan")
        return MapStats(0, nan, nan, nan, nan)
    return MapStats(
        voxels=int(selected.size),
        mean=float(selected.mean()),
        median=float(np.median(selected)),
        p95=float(np.percentile(selected, 95)),
        max=float(selected.max()),
    )


def std_map_stats(std: np.ndarray, lesion: np.ndarray, outside: np.ndarray) -> dict[str, object]:
    """Statistics of the voxel-wise std map inside the lesion and in ``outside``.

    Returns:
        {"inside": MapStats dict, "outside": MapStats dict, "outside_to_inside_mean":
        ratio of the mean std outside to inside (inf when the lesion is fixed exactly,
        which JSON output writes as null)}.
    """
    inside_stats = region_stats(std, lesion)
    outside_stats = region_stats(std, outside)
    if inside_stats.mean > 0:
        ratio = outside_stats.mean / inside_stats.mean
    else:
        ratio = float("inf") if outside_stats.mean > 0 else float("nan")
    return {"inside": inside_stats.as_dict(), "outside": outside_stats.as_dict(), "outside_to_inside_mean": ratio}


def regions_of(original: np.ndarray, lesion: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluation regions: 'inside' (the lesion) and 'outside' (foreground minus lesion)."""
    foreground = original > original.min()
    return {"inside": lesion.astype(bool), "outside": foreground & ~lesion.astype(bool)}


# ----------------------------------------------------------------------------- realism

HIGH_FREQUENCY_SIGMA = 2.0  # voxels


def intensity_range(original: np.ndarray, brain: np.ndarray) -> float:
    """The 1st-99th percentile range of the original over ``brain`` (intensity units)."""
    values = np.asarray(original)[brain]
    if values.size == 0:
        raise ValueError("the brain region is empty")
    low, high = np.percentile(values.astype(np.float64), [1.0, 99.0])
    return float(high - low)


def pairwise_mean_abs_difference(
    samples: Sequence[np.ndarray], region: np.ndarray, scale: float
) -> PairStats:
    """Mean |a - b| over ``region`` for every pair, in % of ``scale`` (an intensity range)."""
    _check_samples(samples, region)
    if not scale > 0:
        raise ValueError("the intensity range must be positive")
    vectors = [np.asarray(s)[region].astype(np.float64) for s in samples]
    values = [
        float(np.abs(vectors[i] - vectors[j]).mean() / scale * 100.0)
        for i in range(len(vectors))
        for j in range(i + 1, len(vectors))
    ]
    return _pair_stats(values)


def high_frequency_energy(volume: np.ndarray, region: np.ndarray, sigma: float = HIGH_FREQUENCY_SIGMA) -> float:
    """Mean (x - G_sigma(x))^2 over ``region``: the energy of detail finer than ~sigma voxels."""
    volume = np.asarray(volume, dtype=np.float64)
    detail = volume - ndimage.gaussian_filter(volume, sigma, mode="nearest")
    return float(np.mean(detail[region] ** 2))


def high_frequency_ratio(
    sample: np.ndarray,
    original: np.ndarray,
    region: np.ndarray,
    sigma: float = HIGH_FREQUENCY_SIGMA,
    reference: float | None = None,
) -> float:
    """The RMS of a sample's fine detail over the original's, both over ``region``.

    ``reference``: the original's :func:`high_frequency_energy`, when already computed.
    """
    if reference is None:
        reference = high_frequency_energy(original, region, sigma)
    if not reference > 0:
        return float("nan")
    return float(np.sqrt(high_frequency_energy(sample, region, sigma) / reference))


def histogram_distance(sample: np.ndarray, original: np.ndarray, region: np.ndarray, scale: float) -> float:
    """1-D Wasserstein distance of the intensities over ``region``, as a fraction of ``scale``."""
    from scipy.stats import wasserstein_distance

    a = np.asarray(sample)[region].astype(np.float64)
    b = np.asarray(original)[region].astype(np.float64)
    if a.size == 0:
        return float("nan")
    return float(wasserstein_distance(a, b) / scale)
