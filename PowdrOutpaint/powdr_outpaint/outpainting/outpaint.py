"""Outpainting one case: N synthetic volumes around a kept lesion, plus mean and std.

Every output is on the input image's grid and intensity scale. Samples are written
as they are produced and summarised on the fly, so memory does not grow with N.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Union

import numpy as np
import torch

from .. import __version__
from ..errors import PowdrError
from ..imaging.masks import model_foreground
from ..imaging.preprocess import (
    Prepared,
    blend_weights,
    clear_haze,
    dilate_lesion,
    has_clean_background,
    lesion_on_image_grid,
    match_tissue_level,
    parse_labels,
    prepare,
    preserve_lesion,
    to_input_grid,
)
from ..imaging.volume_io import Volume, load_volume, save_nifti, stem_of
from ..model.checkpoint import GUIDANCE_RANGE, GUIDED_BANDS, LoadedModel, detail_is_finer, load_model
from ..model.diffusion import Schedule
from ..model.runtime import AutoGuidance, ExpertRouting, FastForward, emulated_bf16_warning, resolve_device
from ..model.samplers import SAMPLERS, Sampler
from ..model.transforms import SUBBANDS, Scale, clip_in_image_space, make_condition, wavelet_to_image
from ..progress import Progress
from .cascade import (
    coarse_on_fine, denoise_in_blocks, keep_first_stage_background, keep_main_background, octave_finer_affine,
)
from .stats import RunningStats

PRESERVE_MODES = ("exact", "model")
#: input: the new tissue's level scaled to the input's (imaging.preprocess.match_tissue_level);
#: model: as the model drew it.
TISSUE_LEVELS = ("input", "model")
#: whole: the refine stage on its whole grid in one pass (default: sharper and faster than blocks
#: on the bundled model); blocks: overlapping blocks of its training patch, blended (bounded memory).
REFINE_TILINGS = ("whole", "blocks")
#: The defaults of sample, generate, demo and the Slicer panel: 20 DPM-Solver++(2M) steps gave the
#: figures of 50 (within 1 %) and of 1000-step DDPM within the spread of 100 DDPM steps, in 2/3 of
#: their time (README, "Choosing the sampler and K"; Testing/Benchmarks/compare_samplers.py).
DEFAULT_SAMPLER = "dpm++2m"
DEFAULT_STEPS = 20


@dataclass
class OutpaintOptions:
    samples: int = 3
    steps: int = DEFAULT_STEPS
    sampler: str = DEFAULT_SAMPLER
    eta: float = 0.0
    seed: int = 0
    device: str = "auto"
    batch_size: int = 1
    labels: str | None = None
    preserve: str = "exact"
    precision: str = "auto"
    refine_steps: int = 5  # steps of a cascade's refine stage (5 gave the figures of 10 in 2/3 of the time)
    refine_sampler: str = "dpm++2m"
    refine_tiling: str = "whole"  # whole grid in one pass, or overlapping blocks of the training patch
    tissue_level: str = "input"
    expert: bool = True  # hand a first stage's last steps to the expert the checkpoint may hold
    expert_outline: bool = True  # the expert draws inside the whole-range network's head only
    guidance: float | None = None  # autoguidance weight; None: the checkpoint's, 1: no guidance
    guidance_from: int | None = None  # guide only steps with t >= this; None: the checkpoint's
    guided_bands: str | None = None  # "all" or "detail" subbands; None: the checkpoint's

    def validate(self) -> None:
        if self.samples < 1:
            raise PowdrError("--samples must be at least 1")
        if self.batch_size < 1:
            raise PowdrError("--batch-size must be at least 1")
        if self.steps < 1:
            raise PowdrError("--steps must be at least 1")
        if self.sampler not in SAMPLERS:
            raise PowdrError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        if self.preserve not in PRESERVE_MODES:
            raise PowdrError(f"--preserve must be one of {', '.join(PRESERVE_MODES)}")
        if self.eta < 0:
            raise PowdrError("--eta must be non-negative")
        if self.refine_steps < 1:
            raise PowdrError("--refine-steps must be at least 1")
        if self.refine_sampler not in SAMPLERS:
            raise PowdrError(f"--refine-sampler must be one of {', '.join(SAMPLERS)}")
        if self.refine_tiling not in REFINE_TILINGS:
            raise PowdrError(f"--refine-tiling must be one of {', '.join(REFINE_TILINGS)}")
        if self.tissue_level not in TISSUE_LEVELS:
            raise PowdrError(f"--tissue-level must be one of {', '.join(TISSUE_LEVELS)}")
        low, high = GUIDANCE_RANGE
        if self.guidance is not None and not low <= self.guidance <= high:
            raise PowdrError(f"--guidance must lie from {low:g} to {high:g} (1: no guidance)")
        if self.guidance_from is not None and self.guidance_from < 0:
            raise PowdrError("--guidance-from must be a timestep of 0 or more (0: guide every step)")
        if self.guided_bands is not None and self.guided_bands not in GUIDED_BANDS:
            raise PowdrError(f"--guided-bands must be one of {', '.join(GUIDED_BANDS)}")


def output_names(stem: str, samples: int) -> dict[str, object]:
    """File names of one run (relative to the output folder)."""
    width = max(2, len(str(samples - 1)))
    return {
        "samples": [f"{stem}_outpaint_s{i:0{width}d}.nii.gz" for i in range(samples)],
        "mean": f"{stem}_outpaint_mean.nii.gz",
        "std": f"{stem}_outpaint_std.nii.gz",
        "lesion": f"{stem}_outpaint_lesion.nii.gz",
        "metadata": f"{stem}_outpaint.json",
    }


def sample_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The random stream of sample ``index``: independent of the batch it is drawn in."""
    generator = torch.Generator(device=device)
    generator.manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63 - 1))
    return generator


def denoise(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    condition: torch.Tensor,
    sampler: Sampler,
    generators: list[torch.Generator],
    scale: Scale,
    on_step: Callable[[int], None] | None = None,
    sequences: int = 1,
) -> torch.Tensor:
    """Run the reverse process for a batch.

    Args:
        forward: network call (x (B, 16 S, ...), t (B,)) -> x0 prediction (B, 8 S, ...).
        condition: (B, 8 S, X, Y, Z) condition subbands of S sequences, (B, 9, X, Y, Z) for a
            refine stage (the first stage's image appended).
        generators: one per batch element.
    Returns:
        (B, S, 2X, 2Y, 2Z) images in [-1, 1].
    """
    device = condition.device
    shape = (SUBBANDS * sequences, *condition.shape[2:])  # a refine condition also carries the first stage

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])

    x = noise()
    for done, index in enumerate(sampler.indices(), start=1):
        t = torch.full((x.shape[0],), sampler.model_timestep(index), device=device, dtype=torch.long)
        x0 = forward(torch.cat([x, condition], dim=1), t)
        x0 = clip_in_image_space(x0, scale)
        x = sampler.step(x, index, x0, noise() if sampler.needs_noise(index) else None)
        if on_step:
            on_step(done)
    return wavelet_to_image(x, scale).clamp_(-1.0, 1.0)


ImageInput = Union[str, Path, Mapping[str, Union[str, Path]]]


@dataclass
class CaseInputs:
    """Validated inputs of one case, ready for sampling.

    ``per_sequence`` holds one Prepared per sequence of the model, in the checkpoint's order,
    all on the same model grid (placed on the first sequence); each keeps its own input grid.
    """

    model: LoadedModel
    per_sequence: list[Prepared]
    stems: list[str]
    labels: tuple[int, ...] | None
    fine: Prepared | None = None  # a cascade's refine-stage grid
    detail: Prepared | None = None  # a detail stage's grid when it is one octave finer than the first stage's
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know (grids that differ)

    @property
    def prepared(self) -> Prepared:
        """The first sequence (the only one of a single-sequence model)."""
        return self.per_sequence[0]

    @property
    def stem(self) -> str:
        return self.stems[0]

    @property
    def brain(self) -> np.ndarray:
        """(X, Y, Z) bool: the brain on the first stage's grid, as training saw it (a model with the outline)."""
        prepared = self.prepared
        return model_foreground(prepared.image.data, prepared.model_to_input, prepared.model_lesion)

    @property
    def drawn(self) -> Prepared:
        """The grid of the image the detail stage hands on (the first stage's when it has no finer one)."""
        return self.detail or self.prepared

    @property
    def final(self) -> Prepared:
        """The grid the samples come out on: the refine stage's for a cascade, else the detail stage's."""
        return self.fine or self.drawn

    @property
    def model_images(self) -> np.ndarray:
        """(S, X, Y, Z) the sequences on the model grid, in [-1, 1]."""
        return np.stack([p.model_image for p in self.per_sequence])


def sequence_stem(path: str | Path, sequence: str) -> str:
    """The file-name stem of one sequence's outputs: the image's stem, ending in the sequence's name."""
    from ..training.data import names_sequence

    stem = stem_of(path)
    # A BraTS 2023 name (CASE-t1n) already says t1: its aliases count as its name.
    return stem if names_sequence(path, sequence) else f"{stem}_{sequence}"


def image_paths(images: ImageInput, sequences: tuple[str, ...]) -> list[Path]:
    """One path per sequence of the model, in its order; a clear error for anything missing or extra."""
    if not isinstance(images, Mapping):
        if len(sequences) > 1:
            raise PowdrError(
                f"this model makes {len(sequences)} sequences together; give one image for each: "
                + " ".join(f"--image {name}=FILE" for name in sequences)
            )
        return [Path(images)]
    given = {str(k).lower(): Path(v) for k, v in images.items()}
    wanted = [name.lower() for name in sequences]
    missing = [name for name in sequences if name.lower() not in given]
    extra = sorted(set(given) - set(wanted))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no image for {', '.join(missing)}")
        if extra:
            parts.append(f"{', '.join(extra)} is not one of its sequences")
        raise PowdrError(
            f"this model expects {', '.join(sequences)} ({'; '.join(parts)}); give "
            + " ".join(f"--image {name}=FILE" for name in sequences)
        )
    return [given[name] for name in wanted]


def _grid_text(volume: Volume) -> str:
    shape = "x".join(str(s) for s in volume.data.shape)
    return f"{shape} voxels of {' x '.join(f'{s:.3g}' for s in volume.spacing)} mm"


def load_case(images: ImageInput, mask_path: str | Path, model: LoadedModel, labels: str | None) -> CaseInputs:
    """Read and check everything before anything is written.

    ``images`` is one path (single-sequence models) or {sequence name: path}.
    """
    sequences = model.config.sequences
    paths = image_paths(images, sequences)
    label_tuple = parse_labels(labels)
    mask = load_volume(mask_path, "mask")
    per_sequence: list[Prepared] = []
    notes: list[str] = []
    first_image: Volume | None = None
    for name, path in zip(sequences, paths):
        what = "image" if len(sequences) == 1 else f"{name} image"
        image = load_volume(path, what)
        lesion = lesion_on_image_grid(mask, image, label_tuple)
        if model.config.training.dilate:
            # Models trained on dilated masks (the knee preset) see the same margin at sampling time.
            radius_mm = model.config.training.dilate * max(model.config.grid.spacing)
            lesion = dilate_lesion(lesion, image.spacing, radius_mm)
        if first_image is None:
            first_image = image
            prepared = prepare(image, lesion, model.config)
        else:
            same = image.data.shape == first_image.data.shape and np.allclose(
                image.affine, first_image.affine, atol=1e-4
            )
            if not same:
                notes.append(
                    f"the {name} image ({_grid_text(image)}) is not on the {sequences[0]} image's grid "
                    f"({_grid_text(first_image)}); it is resampled onto the model grid from its own grid "
                    "and its outputs come back on its own grid"
                )
            prepared = prepare(image, lesion, model.config, per_sequence[0].model_affine)
            if not (prepared.model_image > -1.0).any():
                raise PowdrError(
                    f"the {name} image does not overlap the {sequences[0]} image in physical space "
                    "(check that all sequences come from the same case and keep their orientation)"
                )
        per_sequence.append(prepared)
    fine = detail = None
    if model.refiner is not None:
        fine = prepare(per_sequence[0].image, per_sequence[0].lesion, model.refiner.config)
    if model.detailer is not None and detail_is_finer(model.detailer.config, model.config):
        detail = prepare(per_sequence[0].image, per_sequence[0].lesion, model.detailer.config,
                         octave_finer_affine(per_sequence[0].model_affine))
    stems = [stem_of(paths[0])] if len(sequences) == 1 else [sequence_stem(p, n) for n, p in zip(sequences, paths)]
    if len(set(stems)) != len(stems):
        raise PowdrError("two sequences' images have the same file name; their outputs would overwrite each other")
    return CaseInputs(
        model=model, per_sequence=per_sequence, stems=stems, labels=label_tuple, fine=fine, detail=detail, paths=paths,
        notes=notes,
    )


def _versions() -> dict[str, str]:
    import nibabel

    return {
        "powdr_outpaint": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "nibabel": nibabel.__version__,
    }


def _guide_needed(model: LoadedModel, flag: str) -> PowdrError:
    """The one sentence for a guidance option given for a checkpoint that holds no guide."""
    return PowdrError(
        f"{flag} needs a checkpoint with a guide, and {model.path.name} has none "
        "(add one with 'powdr-outpaint cascade --guide')"
    )


def effective_guidance(model: LoadedModel, guidance: float | None) -> float:
    """The autoguidance weight a run uses: 1 (none) without a guide, else ``guidance`` or the stored one.

    A weight other than 1 for a checkpoint without a guide is refused (PowdrError), not ignored.
    """
    if model.guide is None:
        if guidance is not None and guidance != 1.0:
            raise _guide_needed(model, f"--guidance {guidance:g}")
        return 1.0
    return model.guidance if guidance is None else float(guidance)


def effective_guidance_from(model: LoadedModel, guidance_from: int | None) -> int:
    """The timestep from which a run guides (steps with t >= it): ``guidance_from`` or the stored one.

    A start past the diffusion's last timestep, or one for a checkpoint without a guide, is
    refused (PowdrError); without a guide it is 0.
    """
    if model.guide is None:
        if guidance_from is not None:
            raise _guide_needed(model, "--guidance-from")
        return 0
    if guidance_from is None:
        return model.guidance_from
    timesteps = model.config.diffusion.timesteps
    if not 0 <= guidance_from <= timesteps:
        raise PowdrError(f"--guidance-from must lie from 0 to {timesteps} (0: guide every step)")
    return int(guidance_from)


def effective_guided_bands(model: LoadedModel, guided_bands: str | None) -> str:
    """The subbands a run guides: ``guided_bands`` or the stored ones; refused without a guide."""
    if model.guide is None:
        if guided_bands is not None:
            raise _guide_needed(model, "--guided-bands")
        return "all"
    return model.guided_bands if guided_bands is None else guided_bands


def first_stage_forward(
    model: LoadedModel,
    device: torch.device,
    precision: str,
    expert: bool = True,
    keep_outline: bool = True,
    guidance: float | None = None,
    guidance_from: int | None = None,
    guided_bands: str | None = None,
):
    """The first stage's x0 prediction (x, t) -> x0, its expert's below the expert's limit
    when the model holds one and ``expert`` is true.

    A model with a guide runs with autoguidance (:class:`AutoGuidance`) at the weight
    :func:`effective_guidance` gives, on the steps from :func:`effective_guidance_from` up and the
    subbands :func:`effective_guided_bands` names. With
    ``keep_outline`` the expert draws only inside the head that the whole-range network predicts
    at the same step (:func:`keep_main_background`).
    """
    forward = FastForward(model.network, device, precision)
    weight = effective_guidance(model, guidance)
    if weight != 1.0:
        forward = AutoGuidance(
            forward, FastForward(model.guide.network, device, precision), weight,
            effective_guidance_from(model, guidance_from), effective_guided_bands(model, guided_bands),
        )
    if not expert or model.expert is None:
        return forward
    below = model.expert.config.training.max_timestep
    merge = None
    if keep_outline:
        merge = functools.partial(keep_main_background, scale=model.config.normalisation.subband_scale)
    return ExpertRouting(forward, FastForward(model.expert.network, device, precision), below, merge)


def iter_samples(
    case: CaseInputs,
    options: OutpaintOptions,
    device: torch.device,
    progress: Progress,
    step_times: list[float],
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, (S, X, Y, Z) images in [-1, 1] on ``case.final``'s model grid), batch by batch."""
    config = case.model.config
    scale = config.normalisation.subband_scale
    sampler = Sampler(Schedule.from_config(config.diffusion), options.sampler, options.steps, options.eta)
    forward = first_stage_forward(
        case.model, device, options.precision, options.expert, options.expert_outline, options.guidance,
        options.guidance_from, options.guided_bands,
    )
    image = torch.from_numpy(case.model_images)[None].to(device)
    lesion = torch.from_numpy(case.prepared.model_lesion)[None, None].to(device)
    brain = torch.from_numpy(case.brain)[None, None] if config.outline else None
    condition_one = make_condition(image, lesion, scale, brain)
    count = len(case.per_sequence)
    refiner = Refiner(case, options, device) if case.model.refiner is not None else None
    detailer = Refiner(case, options, device, detail=True) if case.model.detailer is not None else None
    steps_per_sample = sampler.num_steps + sum(stage.work for stage in (detailer, refiner) if stage)
    total = options.samples * steps_per_sample
    progress.start_work(total, "sampling")
    done_before = 0
    for first in range(0, options.samples, options.batch_size):
        indices = list(range(first, min(first + options.batch_size, options.samples)))
        generators = [sample_generator(options.seed, i, device) for i in indices]
        condition = condition_one.expand(len(indices), -1, -1, -1, -1).contiguous()
        last = [time.perf_counter()]

        def on_step(done: int, base: int = done_before, batch: list[int] = indices) -> None:
            now = time.perf_counter()
            step_times.append((now - last[0]) / len(batch))
            last[0] = now
            progress.advance(
                base + done * len(batch),
                stage="sampling",
                sample=batch[-1] + 1,
                samples=options.samples,
                step=done,
                total=sampler.num_steps,
                message=f"sample {batch[0] + 1}-{batch[-1] + 1} of {options.samples}, step {done}/{sampler.num_steps}",
            )

        images = denoise(forward, condition, sampler, generators, scale, on_step, sequences=count)
        done_before += len(indices) * sampler.num_steps
        for offset, index in enumerate(indices):
            if refiner is None and detailer is None:
                yield index, images[offset].float().cpu().numpy()
                continue
            coarse = images[offset, 0].float().cpu().numpy()
            # The detail stage redraws the first stage's own grid; the refine stage goes finer.
            for stage, stream, what in ((detailer, 2, "detail"), (refiner, 1, "refine")):
                if stage is None:
                    continue

                def on_refine(done: int, base: int = done_before, number: int = index, stage: Refiner = stage,
                              what: str = what) -> None:
                    progress.advance(
                        base + done,
                        stage="refining",
                        sample=number + 1,
                        samples=options.samples,
                        step=done,
                        total=stage.work,
                        message=f"sample {number + 1} of {options.samples}, {what} step {done}/{stage.work}",
                    )

                coarse = stage.refine(coarse, sample_generator(options.seed + stream, index, device), on_refine)
                done_before += stage.work
            yield index, coarse[None]


class Refiner:
    """A cascade's refine stage for one case: the first stage's image in, a finer image out.

    With ``detail=True`` it is the cascade's detail stage instead: a refine-stage network on the
    first stage's own grid or one octave finer, which sees the first stage's image at half its
    own resolution and draws the detail of its grid.
    """

    def __init__(self, case: CaseInputs, options: OutpaintOptions, device: torch.device, detail: bool = False):
        stage = case.model.detailer if detail else case.model.refiner
        # The grid of the image this stage is given, and its own.
        self.coarse = case.prepared if detail else case.drawn
        fine = case.drawn if detail else case.fine
        assert stage is not None and fine is not None
        self.case, self.device, self.fine = case, device, fine
        config = stage.config
        self.config = config
        self.scale = config.normalisation.subband_scale
        self.sampler = Sampler(Schedule.from_config(config.diffusion), options.refine_sampler, options.refine_steps)
        self.forward = FastForward(stage.network, device, options.precision)
        image = torch.from_numpy(fine.model_image)[None, None].to(device)
        lesion = torch.from_numpy(fine.model_lesion)[None, None].to(device)
        self.lesion_condition = make_condition(image, lesion, self.scale)
        # The refine network is convolutional without attention, so it runs on the whole grid
        # as well as on the blocks it was trained on; "blocks" bounds the memory of large grids.
        wavelet_grid = tuple(s // 2 for s in fine.model_image.shape)
        self.block = wavelet_grid if options.refine_tiling == "whole" else tuple(p // 2 for p in config.grid.patch)
        self.work = self.sampler.num_steps

    def refine(self, coarse: np.ndarray, generator: torch.Generator, on_step: Callable[[int], None]) -> np.ndarray:
        """(coarse model grid) image in [-1, 1] -> (fine model grid) image in [-1, 1]."""
        first = coarse_on_fine(coarse, self.coarse, self.fine)
        condition = torch.cat(
            [self.lesion_condition, torch.from_numpy(first)[None, None].to(self.device)], dim=1
        )
        images = denoise_in_blocks(
            self.forward, condition, self.sampler, [generator], self.scale, self.block, on_step
        )
        return keep_first_stage_background(images[0, 0].float().cpu().numpy(), first)


def run_outpaint(
    image_path: ImageInput,
    mask_path: str | Path,
    checkpoint_path: str | Path,
    out_dir: str | Path,
    options: OutpaintOptions,
    progress: Progress | None = None,
) -> dict[str, object]:
    """Outpaint one case and write its outputs; returns the metadata written to JSON.

    ``image_path`` is one image, or {sequence: image} for a model of several sequences; every
    sequence gets its own samples, mean, std and lesion on its own input grid. Nothing is
    written to ``out_dir`` unless every input is valid.
    """
    progress = progress or Progress("none")
    options.validate()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress.stage("loading", "Loading the model and the images")
    device = resolve_device(options.device)
    warning = emulated_bf16_warning(options.precision, device)
    if warning:
        progress.stage("loading", warning)
    model = load_model(checkpoint_path, "cpu")
    case = load_case(image_path, mask_path, model, options.labels)
    for note in case.notes:
        progress.stage("loading", note[0].upper() + note[1:])
    timings["load_s"] = time.perf_counter() - started
    # Guidance options the checkpoint cannot honour are refused before anything is written.
    guidance = effective_guidance(model, options.guidance)
    guidance_from = effective_guidance_from(model, options.guidance_from)
    guided_bands = effective_guided_bands(model, options.guided_bands)

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PowdrError(f"--out {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    # One target per sequence: its own input grid (the refine stage's grid for a cascade).
    targets = [case.final] if case.final is not case.prepared else case.per_sequence
    names = [output_names(stem, options.samples) for stem in case.stems]
    # The stage whose grid is case.final's.
    final_config = (model.refiner or (model.detailer if case.detail is not None else model)).config
    progress.stage("preparing", "Preparing the lesion and the blending weights")
    weights = [blend_weights(t.lesion, t.image.spacing, float(max(final_config.grid.spacing))) for t in targets]
    dtypes = [np.result_type(t.image.data.dtype, np.float32) for t in targets]
    stats = [RunningStats(t.image.data.shape) for t in targets]
    step_times: list[float] = []
    written: list[list[str]] = [[] for _ in targets]
    tissue_scales: list[list[float]] = [[] for _ in targets]

    progress.stage("sampling", f"Sampling {options.samples} volumes with {options.steps} {options.sampler} steps")
    sampling_started = time.perf_counter()
    writing_s = 0.0
    clean_air = [has_clean_background(t.image.data) for t in targets]
    for index, model_images in iter_samples(case, options, device, progress, step_times):
        write_started = time.perf_counter()
        for k, target in enumerate(targets):
            drawn = clear_haze(model_images[k]) if clean_air[k] else model_images[k]
            synthetic = to_input_grid(drawn, target)
            if options.tissue_level == "input":
                synthetic, factor = match_tissue_level(synthetic, target)
                tissue_scales[k].append(round(factor, 4))
            if options.preserve == "exact":
                synthetic = preserve_lesion(synthetic, target, weights[k])
            volume = synthetic.astype(dtypes[k])
            stats[k].add(volume.astype(np.float64))
            image = target.image
            path = save_nifti(out_dir / names[k]["samples"][index], volume, image.affine, image.header)
            written[k].append(str(path))
        writing_s += time.perf_counter() - write_started
    timings["sampling_s"] = time.perf_counter() - sampling_started - writing_s

    progress.stage("writing", "Writing the mean, std and lesion maps")
    write_started = time.perf_counter()
    per_sequence_outputs = []
    for k, target in enumerate(targets):
        image = target.image
        per_sequence_outputs.append(
            {
                "samples": written[k],
                "mean": str(save_nifti(out_dir / names[k]["mean"], stats[k].mean.astype(np.float32), image.affine,
                                       image.header)),
                "std": str(save_nifti(out_dir / names[k]["std"], stats[k].std().astype(np.float32), image.affine,
                                      image.header)),
                "lesion": str(save_nifti(out_dir / names[k]["lesion"], target.lesion.astype(np.uint8), image.affine,
                                         image.header)),
                "metadata": str(out_dir / names[k]["metadata"]),
            }
        )
    timings["writing_s"] = writing_s + time.perf_counter() - write_started
    timings["total_s"] = time.perf_counter() - started
    timings["seconds_per_step_median"] = statistics.median(step_times) if step_times else 0.0

    sequences = model.config.sequences
    if len(sequences) == 1:
        outputs: dict[str, object] = per_sequence_outputs[0]
    else:
        outputs = {"sequences": dict(zip(sequences, per_sequence_outputs))}
    first = targets[0]
    metadata = {
        "image": str(case.paths[0].resolve()),
        "mask": str(Path(mask_path).resolve()),
        "checkpoint": str(Path(checkpoint_path).resolve()),
        "checkpoint_sha256": model.sha256,
        "config": json.loads(model.config.to_json()),
        # What ran: below this timestep the first stage's expert predicted x0 (0: no expert).
        "expert_below": model.expert.config.training.max_timestep if model.expert and options.expert else 0,
        # ... and drew only inside the head the whole-range network predicted at the same steps.
        "expert_outline": bool(model.expert and options.expert and options.expert_outline),
        # The autoguidance weight the first stage ran with (1: none).
        "guidance": guidance,
        # The timestep from which it was guided (steps with t >= it; 0: every step).
        "guidance_from": guidance_from,
        # ... on these subbands ("all", or "detail": the low-pass band from the first stage alone).
        "guided_bands": guided_bands,
        "options": asdict(options),
        "device": str(device),
        "precision": FastForward.resolve(options.precision, device),
        "labels": list(case.labels) if case.labels else "all > 0",
        "input_shape": list(first.image.data.shape),
        "input_affine": first.image.affine.tolist(),
        "model_affine": first.model_affine.tolist(),
        "grid_exact": first.exact,
        "intensity_percentiles": [first.low, first.high],
        "lesion_voxels": int(first.lesion.sum()),
        # Per sample, the factor that put its new tissue on the input's level (1 = as drawn).
        "tissue_scale": tissue_scales[0],
        "outputs": outputs,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "versions": _versions(),
    }
    if len(sequences) > 1:
        metadata["sequences"] = {
            name: {
                "image": str(path.resolve()),
                "input_shape": list(target.image.data.shape),
                "grid_exact": target.exact,
                "intensity_percentiles": [target.low, target.high],
                "lesion_voxels": int(target.lesion.sum()),
                "tissue_scale": scales,
            }
            for name, path, target, scales in zip(sequences, case.paths, targets, tissue_scales)
        }
        metadata["notes"] = case.notes
    for k, name in enumerate(sequences):
        # Every sequence's stem gets the run's metadata, so each can be evaluated on its own.
        own = dict(metadata, sequence=name) if len(sequences) > 1 else metadata
        temporary = out_dir / f".{names[k]['metadata']}.part"
        temporary.write_text(json.dumps(own, indent=2))
        temporary.replace(out_dir / names[k]["metadata"])
    count = len(written[0])
    what = "samples, mean and std" if len(sequences) == 1 else f"samples, mean and std of {', '.join(sequences)}"
    progress.done(outputs, f"Wrote {count} {what} to {out_dir} in {timings['total_s']:.1f} s")
    return metadata
