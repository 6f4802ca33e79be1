"""Why do a model's samples look alike? Measurements on one real case, in one process.

1. Sensitivity of the x0 prediction to the noisy input: at timestep t, x_t is drawn from
   q(x_t | x_0) of the real case with four different noises; the network's x0 predictions
   are compared pairwise (mean |difference| over the brain outside the lesion, in % of the
   normalised intensity range [-1, 1]). A model that predicts the same x0 whatever x_t
   holds can only produce diversity through the noise the sampler injects itself.
2. Memorisation: how far each sample lies from every training case (all BraTS cases are
   registered to one atlas, so they are compared voxel by voxel on the model grid, brain
   outside the lesion, % of the range), beside how far the real held-out case lies from them.
   A sample much closer to one training brain than any real brain is to another has been
   recalled, not generated.
3. The same four seeds sampled with variants of the sampler: the default (DDPM, K steps,
   x0 clipped), without clipping, DDIM with eta = 1, and DDPM with more steps. Each gives
   the smallest, median and largest pairwise difference.

Usage:
    python Testing/Benchmarks/diagnose_diversity.py --checkpoint CKPT \
        --image CASE_t1.nii.gz --mask CASE_seg.nii.gz [--steps 100] [--long-steps 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import numpy as np
import torch

from powdr_outpaint.model.checkpoint import load_model
from powdr_outpaint.model.diffusion import Schedule
from powdr_outpaint.model.runtime import FastForward
from powdr_outpaint.model.samplers import Sampler
from powdr_outpaint.model.transforms import image_to_wavelet, make_condition, wavelet_to_image
from powdr_outpaint.outpainting.outpaint import denoise, load_case, sample_generator


def pairwise_percent(images: list[np.ndarray], region: np.ndarray) -> list[float]:
    """Mean |a - b| over ``region`` for every pair, in % of the range [-1, 1] (i.e. / 2)."""
    return [float(np.abs(a - b)[region].mean() / 2.0 * 100.0) for a, b in itertools.combinations(images, 2)]


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--mask", required=True)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--long-steps", type=int, default=0, help="also sample with this many DDPM steps")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", nargs="*", default=[], help="training images (t1) to measure memorisation against")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.checkpoint)
    case = load_case(args.image, args.mask, model, None)
    config = model.config
    lll = config.normalisation.subband_scale
    device = torch.device("cpu")
    forward = FastForward(model.network, device, args.precision)
    image = torch.from_numpy(case.prepared.model_image)[None, None]
    lesion_np = case.prepared.model_lesion
    lesion = torch.from_numpy(lesion_np)[None, None]
    region = (case.prepared.model_image > -0.99) & ~lesion_np  # brain outside the lesion
    condition = make_condition(image, lesion, lll)
    x0_true = image_to_wavelet(image, lll)
    schedule = Schedule.from_config(config.diffusion)
    report: dict[str, object] = {"checkpoint": args.checkpoint, "image": args.image, "region_voxels": int(region.sum())}

    sensitivity = {}
    for t in (999, 900, 750, 500, 300, 150, 50):
        generators = [sample_generator(123, i, device) for i in range(args.samples)]
        noise = torch.stack([torch.randn(x0_true.shape[1:], generator=g) for g in generators])
        tt = torch.full((args.samples,), t, dtype=torch.long)
        xt = schedule.q_sample(x0_true.expand(args.samples, -1, -1, -1, -1), tt, noise)
        x0 = forward(torch.cat([xt, condition.expand(args.samples, -1, -1, -1, -1)], dim=1), tt)
        predicted = [p[0].numpy() for p in wavelet_to_image(x0, lll).clamp(-1, 1)]
        error = [float(np.abs(p - case.prepared.model_image)[region].mean() / 2 * 100) for p in predicted]
        sensitivity[t] = {"pairwise_pct": summary(pairwise_percent(predicted, region)),
                          "error_to_truth_pct": statistics.mean(error)}
        print(f"t={t:4d}  x0 pairwise {sensitivity[t]['pairwise_pct']}  |x0 - truth| {sensitivity[t]['error_to_truth_pct']:.2f} %",
              flush=True)
    report["x0_sensitivity"] = sensitivity

    produced: dict[str, list[np.ndarray]] = {}

    def run(kind: str, steps: int, eta: float, clip: bool) -> dict[str, float]:
        sampler = Sampler(schedule, kind, steps, eta)
        generators = [sample_generator(0, i, device) for i in range(args.samples)]
        cond = condition.expand(args.samples, -1, -1, -1, -1).contiguous()
        if clip:
            out = denoise(forward, cond, sampler, generators, lll)
        else:
            out = denoise_unclipped(forward, cond, sampler, generators, lll)
        images = [o[0].numpy() for o in out]
        produced[f"{kind}{steps}_{eta}_{clip}"] = images
        return summary(pairwise_percent(images, region))

    variants = {
        f"ddpm{args.steps}": ("ddpm", args.steps, 0.0, True),
        f"ddpm{args.steps}_noclip": ("ddpm", args.steps, 0.0, False),
        f"ddim{args.steps}_eta1": ("ddim", args.steps, 1.0, True),
    }
    if args.long_steps:
        variants[f"ddpm{args.long_steps}"] = ("ddpm", args.long_steps, 0.0, True)
    results = {}
    for name, spec in variants.items():
        results[name] = run(*spec)
        print(f"{name:20s} pairwise sample difference (% of range) {results[name]}", flush=True)
    report["samples"] = results
    if args.train:
        report["memorisation"] = memorisation(args.train, case, produced[f"ddpm{args.steps}_0.0_True"], region)
    print(json.dumps(report, indent=1))


def memorisation(train_images: list[str], case, samples: list[np.ndarray], region: np.ndarray) -> dict:
    """Distances (% of range) from the real case and from each sample to every training image."""
    from powdr_outpaint.imaging.preprocess import normalise
    from powdr_outpaint.imaging.resample import resample
    from powdr_outpaint.imaging.volume_io import load_volume

    prepared = case.prepared
    shape = prepared.model_image.shape
    references = []
    for path in train_images:
        volume = load_volume(path, "image")
        data = volume.data.astype(np.float32)
        background = float(data.min())
        low, high = np.percentile(data[data > background], [1, 99])
        to_train = np.linalg.solve(volume.affine, prepared.model_affine)
        references.append(normalise(resample(data, to_train, shape, order=1, cval=background), low, high))

    def distances(image: np.ndarray) -> list[float]:
        return [float(np.abs(image - r)[region].mean() / 2 * 100) for r in references]

    real = distances(prepared.model_image)
    per_sample = [distances(s) for s in samples]
    result = {
        "real_to_training_min_pct": min(real),
        "real_to_training_median_pct": statistics.median(real),
        "samples_to_nearest_training_pct": [min(d) for d in per_sample],
        "samples_nearest_training_case": [train_images[int(np.argmin(d))].split("/")[-1] for d in per_sample],
    }
    print(f"real case to training cases: min {result['real_to_training_min_pct']:.2f} %, "
          f"median {result['real_to_training_median_pct']:.2f} %", flush=True)
    for d, name in zip(result["samples_to_nearest_training_pct"], result["samples_nearest_training_case"]):
        print(f"sample to nearest training case: {d:.2f} % ({name})", flush=True)
    return result


def denoise_unclipped(forward, condition, sampler, generators, lll):
    """:func:`denoise` without clamping x0 at every step (only the final image is clamped)."""
    shape = condition.shape[1:]

    def noise():
        return torch.stack([torch.randn(shape, generator=g) for g in generators])

    x = noise()
    for index in sampler.indices():
        t = torch.full((x.shape[0],), sampler.model_timestep(index), dtype=torch.long)
        x0 = forward(torch.cat([x, condition], dim=1), t)
        x = sampler.step(x, index, x0, noise() if sampler.needs_noise(index) else None)
    return wavelet_to_image(x, lll).clamp_(-1.0, 1.0)


if __name__ == "__main__":
    main()
