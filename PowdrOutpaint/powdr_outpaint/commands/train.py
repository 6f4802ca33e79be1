"""``powdr-outpaint train``: train (or continue training) an outpainting model.

The same command runs on one CPU or GPU, or under ``torchrun`` on many GPUs and
nodes (DistributedDataParallel; rank 0 writes the checkpoints).
"""

from __future__ import annotations

import argparse

from ..model.presets import PRESETS
from ..training.train import CONDITIONS, TrainOptions, train
from .cli import command_help


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help=command_help("train"),
        description=(
            "Train a conditional wavelet diffusion model. Checkpoints in --out (latest.pt) load directly "
            "in 'sample'. Options left out take the preset's defaults, or the resumed run's values."
        ),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="folder of cases (CASE/CASE_t1.nii.gz + CASE_seg.nii.gz, or the "
                                     "2023 names CASE-t1n.nii.gz + CASE-seg.nii.gz) or a CSV with image,mask columns (or one column per sequence)")
    data.add_argument("--modality", "--sequences", dest="modality", default=None, metavar="NAME[,NAME...]",
                      help="which image(s) of a BraTS case (default t1; t1/t1n, t1ce/t1c, t2/t2w, flair/t2f are the "
                           "same); several, e.g. t1,t1ce,t2,flair, train one model that makes them together (a CSV "
                           "then needs one column per sequence)")
    data.add_argument("--labels", default=None, help="tumour labels, e.g. 1,2,4 (default: all > 0)")
    data.add_argument("--holdout", type=int, default=None,
                      help="cases held out for previews (default 1 with 8 or more cases, else 0)")
    data.add_argument("--cache-dir", default=None, help="where prepared cases are kept (default OUT/cache)")
    data.add_argument("--workers", type=int, default=None,
                      help="processes preparing and loading cases (default 2 on GPU, 0 on CPU)")

    model = parser.add_argument_group("model and masks")
    model.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default paper")
    model.add_argument("--condition", choices=CONDITIONS, default=None,
                       help="tumor: image x tumour mask (strategy A); random: image x random 6-connected mask "
                            "(strategy B, default); mixed: random with probability --p-random")
    model.add_argument("--p-random", type=float, default=None, help="for --condition mixed (default 0.5)")
    model.add_argument("--augment", type=float, default=None, metavar="P",
                       help="warp each training item with probability P: mirror, a few degrees and per cent, "
                            "a few mm of shift and elastic displacement (default: the preset's)")
    model.add_argument("--input-skip", action="store_true", default=None,
                       help="let nearly clean inputs pass to the x0 prediction through a skip weighted by the "
                            "noise level, so the network only supplies what the noise hides (sharper samples; "
                            "README, Training)")
    model.add_argument("--low-noise-weight", type=float, default=None, metavar="W",
                       help="with --input-skip: weigh each timestep's x0 error by min(1 / c_out^2, W), so the "
                            "nearly clean timesteps train the network as much as the noisy ones (0: off, default)")
    model.add_argument("--max-timestep", type=int, default=None, metavar="N",
                       help="train only on timesteps below N: an expert for a first stage's last, least noisy "
                            "steps, which `cascade --expert` adds to a model (default: every timestep)")
    model.add_argument("--coarse-blur", type=float, default=None, metavar="S",
                       help="refine preset: blur its true coarse input by up to S coarse voxels (Gaussian sigma), "
                            "so it learns to add what a first stage's blurrier image lacks (default 1)")
    model.add_argument("--coarse-noise", type=float, default=None, metavar="N",
                       help="refine preset: add noise of std up to N (model intensities) to its coarse input "
                            "(default 0.03)")
    model.add_argument("--detail-scale", type=float, default=None, metavar="K",
                       help="first stage: multiply the seven detail subbands by K before the diffusion, so they "
                            "are drawn on more of the chain's steps, together with the layout (default 1, the "
                            "paper's; README, Training)")
    model.add_argument("--outline", action="store_true", default=None,
                       help="first stage: also condition on the brain's outline (the input's foreground), so "
                            "the new brain fills the patient's and the lesion keeps its depth in it (README, "
                            "Training); --init-from a checkpoint without it adds the channel at zero")
    model.add_argument("--init-from", default=None, metavar="CKPT",
                       help="start a new run from the weights of a checkpoint of the same preset (fine-tuning); "
                            "from a cascade, the stage this run trains")
    model.add_argument("--dilate", type=int, default=None,
                       help="dilate masks by a ball of this radius in model voxels (default: the preset's)")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--iterations", type=int, default=200_000,
                              help="total iterations; with --resume, training continues up to this (default 200000)")
    optimisation.add_argument("--batch-size", type=int, default=None, help="cases per process and iteration")
    optimisation.add_argument("--lr", dest="learning_rate", metavar="LR", type=float, default=None,
                              help="AdamW learning rate")
    optimisation.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    optimisation.add_argument("--ema-decay", type=float, default=None, help="decay of the weights' moving average")
    optimisation.add_argument("--grad-clip", type=float, default=None, help="gradient norm limit (0: off)")
    optimisation.add_argument("--seed", type=int, default=None, help="default 0")

    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="run folder: latest.pt, snapshots, train_log.csv, previews")
    output.add_argument("--resume", action="store_true", help="continue the run in --out from latest.pt")
    output.add_argument("--save-every", type=int, default=1000, help="write latest.pt every N iterations")
    output.add_argument("--snapshot-every", type=int, default=10_000,
                        help="keep snapshot_STEP.pt (EMA weights) every N iterations (0: none)")
    output.add_argument("--preview-every", type=int, default=5000, help="preview PNG every N iterations (0: none)")
    output.add_argument("--preview-steps", type=int, default=50, help="DDIM steps of a preview sample")
    output.add_argument("--progress", choices=("text", "json", "none"), default="text",
                        help="text: a progress bar; json: one JSON object per line on stdout")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: one GPU per process)")
    runtime.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                         help="auto: bf16 autocast on CUDA and on CPUs where it is faster (AMX, AMD with AVX512-BF16), else fp32")
    runtime.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    runtime.add_argument("--compile", action="store_true", help="torch.compile the network (long runs)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    names = set(TrainOptions.__dataclass_fields__)
    options = TrainOptions(**{k: v for k, v in vars(args).items() if k in names})
    train(options)
    return 0
