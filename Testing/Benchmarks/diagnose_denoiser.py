"""How well a first stage predicts x0 from x_t at each noise level, on real cases.

For each case (BraTS folder: CASE_t1.nii.gz, CASE_seg.nii.gz) the case is prepared as
``sample`` prepares it, noised to timestep t (one fixed noise draw per t) and denoised in one
network call. Over the wavelet voxels of the brain outside the lesion it reports, for the
low-pass subband and for the seven detail subbands together:

- ``err``: mean squared error of the predicted x0 over the true subbands' mean square;
- ``energy``: the prediction's mean square over the truth's (detail subbands), under 1 when
  the prediction is smoother than the truth;
- ``naive``: the error of x_t / sqrt(alpha_bar_t), the input with its scale undone: what a
  network that only passed its input through would reach. Where ``err`` exceeds ``naive``,
  the network throws away detail its input still carries, and the last denoising steps,
  which start from such inputs, blur every sample.

With ``--chain N`` it also draws N first-stage samples with the ``sample`` defaults (the
refine stage left out) and reports their ``background_pct``: the RMS, over model voxels at
least 5 voxels (18 mm on the demo grid) from the case's head, of the sample's distance from
the background value, in % of the intensity range (0 for a clean background; the sampling
chain's leftover noise shows here first), and their ``sample_detail_energy``: the detail
subbands' mean square over the brain outside the lesion, over the real image's (under 1 for
samples smoother than a real brain on this grid).

With ``--sensitivity OTHER`` it also reports, per t, how much of a change of x_t reaches the
prediction: the case's subbands and OTHER's (another case folder on the same grid) are noised
with the same noise draw and denoised with the case's condition; ``passes`` is the RMS of the two
predictions' difference over the RMS of the two clean inputs' difference (whole grid). A
denoiser that trusts its input passes nearly all of it at small t; ``linear`` is what the
per-subband linear (Wiener) estimate alpha_bar s^2 / (alpha_bar s^2 + 1 - alpha_bar), s the
subband's RMS, passes, a floor that knows nothing of anatomy. A first stage that passes much
less than ``linear`` at small t redraws its samples' last steps from what it remembers.

A checkpoint with an expert for the last steps (``cascade --expert``) is measured with it,
timesteps below its limit going to the expert (below ``--expert-below N`` only, to try a
later hand-over), drawing inside the whole-range network's head as ``sample`` does
(``--free-outline``: everywhere); ``--no-expert`` leaves it out. A checkpoint with a guide is
measured guided, as ``sample`` runs it; ``--no-guide`` measures the first stage alone.

Usage:
    python Testing/Benchmarks/diagnose_denoiser.py --checkpoint CKPT \\
        ../shared/data/brats18/Brats18_TCIA10_639_1 [--timesteps 0,5,25,100,400,700] \\
        [--sensitivity ../shared/data/brats18/Brats18_TCIA10_628_1]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from powdr_outpaint.model.checkpoint import load_model
from powdr_outpaint.model.diffusion import Schedule
from powdr_outpaint.model.transforms import image_to_wavelet, make_condition
from powdr_outpaint.outpainting.outpaint import OutpaintOptions, first_stage_forward, iter_samples, load_case
from powdr_outpaint.progress import Progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--timesteps", default="0,5,25,50,100,200,400,700")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--chain", type=int, default=0, metavar="N", help="also draw N first-stage samples")
    parser.add_argument("--no-expert", action="store_true",
                        help="leave out the expert for the last steps the checkpoint may hold")
    parser.add_argument("--no-guide", action="store_true",
                        help="leave out the guide the checkpoint may hold (the first stage alone)")
    parser.add_argument("--expert-below", type=int, default=0, metavar="N",
                        help="hand only the steps below N (under the expert's own limit) to the expert")
    parser.add_argument("--free-outline", action="store_true",
                        help="let the expert draw the air around the head too (no whole-range outline)")
    parser.add_argument("--sensitivity", default=None, metavar="OTHER",
                        help="another case folder: how much of a change of x_t reaches x0 at each t")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = load_model(args.checkpoint, "cpu")
    lll = model.config.normalisation.subband_scale
    schedule = Schedule.from_config(model.config.diffusion)
    if args.no_expert:
        model.expert = None  # also for the --chain samples
    elif args.expert_below and model.expert is not None:
        limit = model.expert.config.training.max_timestep
        if not 0 < args.expert_below <= limit:
            parser.error(f"--expert-below must lie in 1..{limit}, the expert's own limit")
        # The routing reads the limit from the expert's config (also for the --chain samples).
        model.expert.config = replace(
            model.expert.config, training=replace(model.expert.config.training, max_timestep=args.expert_below)
        )
    if args.no_guide:
        model.guide = None  # also for the --chain samples
    forward = first_stage_forward(model, torch.device("cpu"), args.precision, keep_outline=not args.free_outline)
    if model.expert is not None:
        print(f"timesteps below {model.expert.config.training.max_timestep} go to the checkpoint's expert")
    results: dict[str, list[dict[str, float]]] = {}
    for folder in map(Path, args.cases):
        case = load_case(folder / f"{folder.name}_t1.nii.gz", folder / f"{folder.name}_seg.nii.gz", model, None)
        image = torch.from_numpy(case.model_images)[None]
        lesion = torch.from_numpy(case.prepared.model_lesion)[None, None]
        x0 = image_to_wavelet(image, lll)
        condition = make_condition(image, lesion, lll)
        outside = ((image[:, :1] > -0.98) & (lesion == 0)).float()
        region = torch.nn.functional.avg_pool3d(outside, 2)[0, 0] == 1.0  # whole 2x2x2 blocks only
        truth = x0[0][:, region]
        rows = []
        print(folder.name)
        for t in map(int, args.timesteps.split(",")):
            generator = torch.Generator().manual_seed(1000 + t)
            noise = torch.randn(x0.shape, generator=generator)
            step = torch.tensor([t])
            xt = schedule.q_sample(x0, step, noise)
            predicted = forward(torch.cat([xt, condition], dim=1), step)[0][:, region]
            naive = (xt / float(np.sqrt(schedule.alphas_cumprod[t])))[0][:, region]

            def relative(estimate: torch.Tensor, channels: slice) -> float:
                return float((estimate[channels] - truth[channels]).pow(2).mean() / truth[channels].pow(2).mean())

            row = {
                "t": t,
                "lowpass_err": relative(predicted, slice(0, 1)),
                "detail_err": relative(predicted, slice(1, None)),
                "detail_energy": float(predicted[1:].pow(2).mean() / truth[1:].pow(2).mean()),
                "lowpass_naive": relative(naive, slice(0, 1)),
                "detail_naive": relative(naive, slice(1, None)),
            }
            rows.append(row)
            print(f"  t={t:4d}  low-pass err {row['lowpass_err']:.4f} (naive {row['lowpass_naive']:.4f})  "
                  f"detail err {row['detail_err']:.3f} (naive {row['detail_naive']:.3f})  "
                  f"detail energy {row['detail_energy']:.3f}", flush=True)
        if args.sensitivity:
            rows.append({"sensitivity": sensitivity(case, Path(args.sensitivity), model, forward, schedule,
                                                    [int(t) for t in args.timesteps.split(",")])})
        if args.chain:
            background, energy = chain_figures(case, args.chain, args.precision, region, truth, not args.free_outline)
            rows.append({"background_pct": background, "sample_detail_energy": energy})
            print(f"  {args.chain} first-stage samples: background {background:.2f} % of the intensity range (RMS), "
                  f"detail energy {energy:.3f} of the real image's", flush=True)
        results[folder.name] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def sensitivity(case, other_folder: Path, model, forward, schedule: Schedule, timesteps: list[int]) -> list[dict]:
    """Per t: the share of a change of x_t (the case against ``other_folder``'s case) that
    reaches the x0 prediction, and the share the per-subband linear estimate passes."""
    lll = model.config.normalisation.subband_scale
    other = load_case(other_folder / f"{other_folder.name}_t1.nii.gz", other_folder / f"{other_folder.name}_seg.nii.gz",
                      model, None)
    image = torch.from_numpy(case.model_images)[None]
    condition = make_condition(image, torch.from_numpy(case.prepared.model_lesion)[None, None], lll)
    x0 = image_to_wavelet(image, lll)
    x0_other = image_to_wavelet(torch.from_numpy(other.model_images)[None], lll)
    change = x0 - x0_other
    rms = 0.5 * (x0.pow(2).mean(dim=(2, 3, 4)) + x0_other.pow(2).mean(dim=(2, 3, 4))).sqrt()[..., None, None, None]
    rows = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2000 + t))
        step = torch.tensor([t])
        predictions = [forward(torch.cat([schedule.q_sample(x, step, noise), condition], dim=1), step).float()
                       for x in (x0, x0_other)]
        alpha = float(schedule.alphas_cumprod[t])
        linear = alpha * rms**2 / (alpha * rms**2 + 1.0 - alpha)
        row = {
            "t": t,
            "passes": float((predictions[0] - predictions[1]).pow(2).mean().sqrt() / change.pow(2).mean().sqrt()),
            "linear": float((linear * change).pow(2).mean().sqrt() / change.pow(2).mean().sqrt()),
        }
        rows.append(row)
        print(f"  t={t:4d}  passes {row['passes']:.2f} of a change of its input (linear estimate {row['linear']:.2f})",
              flush=True)
    return rows


def chain_figures(
    case, samples: int, precision: str, region: torch.Tensor, truth: torch.Tensor, outline: bool = True
) -> tuple[float, float]:
    """Of first-stage samples: the RMS distance from the background value far from the head
    (% of the range), and the mean square of their detail subbands over ``region`` (brain
    outside the lesion, wavelet grid) over the real image's (``truth``, (8, N))."""
    head = case.model_images[0] > -0.98
    far = ~ndimage.binary_dilation(head, iterations=5)
    refiner, case.model.refiner = case.model.refiner, None
    try:
        images = [image[0] for _, image in iter_samples(
            case, OutpaintOptions(samples=samples, precision=precision, expert_outline=outline), torch.device("cpu"), Progress("none"), []
        )]
    finally:
        case.model.refiner = refiner
    # [-1, 1] images: half the distance from -1 is the fraction of the range.
    background = float(100 * np.sqrt(np.mean([np.mean(((image[far] + 1.0) / 2.0) ** 2) for image in images])))
    lll = case.model.config.normalisation.subband_scale
    details = [image_to_wavelet(torch.from_numpy(image)[None, None], lll)[0][1:, region] for image in images]
    energy = float(np.mean([float(d.pow(2).mean()) for d in details]) / float(truth[1:].pow(2).mean()))
    return background, energy


if __name__ == "__main__":
    main()
