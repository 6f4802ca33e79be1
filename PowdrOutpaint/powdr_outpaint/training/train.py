"""Training loop: x0 loss in the wavelet domain, EMA, checkpoints, resume, many processes.

One iteration draws ``batch_size`` cases per process, builds the condition (the
image times the tumour mask for strategy A, times a random blob for strategy B, or
either at random for "mixed"), noises the image's wavelet subbands at a uniform
random timestep and takes one AdamW step on the MSE between the network's x0
prediction and the true subbands. An exponential moving average (EMA) of the weights
is what checkpoints offer for sampling.

Reproducibility: every random number of iteration ``s`` in process ``r`` comes from
seeds derived from (seed, s, r) -- the data order from (seed, epoch), see
:mod:`powdr_outpaint.training.stream` -- so a run stopped after N iterations and resumed gives the
same weights as one that never stopped. Resuming restores the weights, the EMA, the
optimiser state and the step; the random streams follow from the seed and the step.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..commands.bench import format_gib, peak_rss_gib
from ..errors import CheckpointError, PowdrError
from ..imaging.preprocess import parse_labels
from ..model.checkpoint import (
    MAX_DETAIL_SCALE, ModelConfig, TrainingInfo, read_checkpoint, save_checkpoint, weights_for_run,
)
from ..model.diffusion import Schedule, low_noise_weights, x0_loss
from ..model.network import OutpaintUNet, add_input_channels, rescale_detail_io
from ..model.presets import get_preset
from ..model.runtime import FastForward, auto_precision, emulated_bf16_warning
from ..model.samplers import Sampler
from ..model.transforms import (
    COARSE_BLUR,
    COARSE_NOISE,
    OUTLINE_CHANNELS,
    clip_in_image_space,
    coarse_of,
    condition_image,
    degrade_coarse,
    image_to_wavelet,
    make_condition,
    wavelet_to_image,
)
from ..outpainting.outpaint import denoise, sample_generator
from .data import CachedCase, CaseStore, PrepareSettings, SkippedCase, discover_cases, prepare_all, split_sequences
from .distributed import DistributedContext, setup
from .preview import render_preview, save_preview
from .report import Reporter, TrainLog, read_log, stop_requests
from .stream import STREAM_DROPOUT, STREAM_NOISE, StepBatches, TrainingItems, stream_seed

__all__ = ["CONDITIONS", "RunSettings", "TrainOptions", "TrainResult", "read_log", "resolve_settings", "train"]

CONDITIONS = ("tumor", "random", "mixed")
STATE_VERSION = 1
LOG_NAME = "train_log.csv"
LATEST_NAME = "latest.pt"
# RMS of the low-pass and of the detail subbands (1st-99th percentile normalisation, the
# low-pass divided by lll_scale) of the ten BraTS T1 training cases on the demo preset's
# grid: 0.86-0.90 and 0.12-0.14. The skip only needs their order of magnitude.
INPUT_SKIP_RMS = (0.88, 0.13)


@dataclass
class RunSettings:
    """What defines a run; a resumed run must keep every one of these."""

    preset: str
    modality: str
    labels: str
    condition: str
    p_random: float
    dilate: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    ema_decay: float
    grad_clip: float
    seed: int
    holdout: int
    # Added later: runs stored before them resume with the value they trained with (off).
    augment: float = 0.0
    input_skip: bool = False
    low_noise_weight: float = 0.0
    max_timestep: int = 0  # 0: every timestep; N: only t < N (an expert for the last steps)
    # A refine stage's conditioning augmentation; runs stored before these trained with these values.
    coarse_blur: float = COARSE_BLUR
    coarse_noise: float = COARSE_NOISE
    detail_scale: float = 1.0  # runs stored before it trained with unscaled detail bands
    outline: bool = False  # runs stored before it did not see the outline


@dataclass
class TrainOptions:
    """Command-line options; None means "the preset's default" (or the resumed run's)."""

    out: str
    data: str | None = None
    preset: str | None = None
    modality: str | None = None
    labels: str | None = None
    condition: str | None = None
    p_random: float | None = None
    dilate: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    ema_decay: float | None = None
    grad_clip: float | None = None
    seed: int | None = None
    holdout: int | None = None
    augment: float | None = None
    input_skip: bool | None = None
    low_noise_weight: float | None = None
    max_timestep: int | None = None
    coarse_blur: float | None = None
    coarse_noise: float | None = None
    detail_scale: float | None = None
    outline: bool | None = None
    init_from: str | None = None
    iterations: int = 200_000
    save_every: int = 1000
    snapshot_every: int = 10_000
    preview_every: int = 5000
    preview_steps: int = 50
    resume: bool = False
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    threads: int | None = None
    cache_dir: str | None = None
    progress: str = "text"
    compile: bool = False

    def validate(self) -> None:
        checks = [
            (self.iterations >= 1, "--iterations must be at least 1"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (self.snapshot_every >= 0, "--snapshot-every must be 0 (none) or more"),
            (self.preview_every >= 0, "--preview-every must be 0 (none) or more"),
            (self.preview_steps >= 1, "--preview-steps must be at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.learning_rate is None or self.learning_rate > 0, "--lr must be positive"),
            (self.weight_decay is None or self.weight_decay >= 0, "--weight-decay must be 0 or more"),
            (self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "--ema-decay must lie in [0, 1)"),
            (self.grad_clip is None or self.grad_clip >= 0, "--grad-clip must be 0 (off) or more"),
            (self.dilate is None or self.dilate >= 0, "--dilate must be 0 or more"),
            (self.p_random is None or 0.0 <= self.p_random <= 1.0, "--p-random must lie in [0, 1]"),
            (self.holdout is None or self.holdout >= 0, "--holdout must be 0 or more"),
            (self.augment is None or 0.0 <= self.augment <= 1.0, "--augment must lie in [0, 1]"),
            (self.low_noise_weight is None or self.low_noise_weight == 0 or self.low_noise_weight >= 1,
             "--low-noise-weight must be 0 (off) or at least 1"),
            (self.max_timestep is None or self.max_timestep >= 0, "--max-timestep must be 0 (all) or more"),
            (self.coarse_blur is None or 0.0 <= self.coarse_blur <= 4.0,
             "--coarse-blur must lie in [0, 4] coarse voxels"),
            (self.coarse_noise is None or 0.0 <= self.coarse_noise <= 0.5, "--coarse-noise must lie in [0, 0.5]"),
            (self.detail_scale is None or 0.0 < self.detail_scale <= MAX_DETAIL_SCALE,
             f"--detail-scale must lie in (0, {MAX_DETAIL_SCALE:g}]"),
            (self.workers is None or self.workers >= 0, "--workers must be 0 or more"),
            (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
            (self.condition is None or self.condition in CONDITIONS,
             f"--condition must be one of {', '.join(CONDITIONS)}"),
            (self.precision in ("auto", "fp32", "bf16"), "--precision must be auto, fp32 or bf16"),
            (self.progress in ("text", "json", "none"), "--progress must be text, json or none"),
        ]
        for ok, message in checks:
            if not ok:
                raise PowdrError(message)
        if self.modality is not None:
            split_sequences(self.modality)


def resolve_settings(options: TrainOptions, stored: dict[str, Any] | None) -> RunSettings:
    """Fill unset options from the resumed run, else from the preset; refuse changes on resume."""
    explicit = {
        "preset": options.preset,
        "modality": None if options.modality is None else ",".join(split_sequences(options.modality)),
        "labels": options.labels,
        "condition": options.condition,
        "p_random": options.p_random,
        "dilate": options.dilate,
        "batch_size": options.batch_size,
        "learning_rate": options.learning_rate,
        "weight_decay": options.weight_decay,
        "ema_decay": options.ema_decay,
        "grad_clip": options.grad_clip,
        "seed": options.seed,
        "holdout": options.holdout,
        "augment": options.augment,
        "input_skip": options.input_skip,
        "low_noise_weight": options.low_noise_weight,
        "max_timestep": options.max_timestep,
        "coarse_blur": options.coarse_blur,
        "coarse_noise": options.coarse_noise,
        "detail_scale": options.detail_scale,
        "outline": options.outline,
    }
    if stored is not None:
        settings = RunSettings(**{f.name: stored[f.name] for f in fields(RunSettings) if f.name in stored})
        for name, value in explicit.items():
            if value is None:
                continue
            if name == "labels":
                value = _labels_text(value)
            if value != getattr(settings, name):
                flag = {"learning_rate": "lr"}.get(name, name).replace("_", "-")
                raise PowdrError(
                    f"--{flag} {value} differs from the run being resumed ({getattr(settings, name)}); "
                    "leave it out or start a new run in another --out folder"
                )
        return settings
    try:
        preset = get_preset(options.preset or "paper")
    except ValueError as error:
        raise PowdrError(str(error)) from None
    condition = options.condition or "random"
    if options.p_random is not None and condition != "mixed":
        raise PowdrError("--p-random only applies to --condition mixed")
    defaults = preset.training
    return RunSettings(
        preset=preset.name,
        modality=",".join(split_sequences(options.modality or "t1")),
        labels=_labels_text(options.labels),
        condition=condition,
        p_random={"tumor": 0.0, "random": 1.0}.get(condition, 0.5 if options.p_random is None else options.p_random),
        dilate=preset.dilate if options.dilate is None else options.dilate,
        batch_size=options.batch_size or defaults.batch_size,
        learning_rate=options.learning_rate or defaults.learning_rate,
        weight_decay=0.0 if options.weight_decay is None else options.weight_decay,
        ema_decay=defaults.ema_decay if options.ema_decay is None else options.ema_decay,
        grad_clip=defaults.grad_clip if options.grad_clip is None else options.grad_clip,
        seed=0 if options.seed is None else options.seed,
        holdout=-1 if options.holdout is None else options.holdout,
        augment=preset.training.augment if options.augment is None else options.augment,
        input_skip=bool(options.input_skip),
        low_noise_weight=options.low_noise_weight or 0.0,
        max_timestep=options.max_timestep or 0,
        coarse_blur=COARSE_BLUR if options.coarse_blur is None else options.coarse_blur,
        coarse_noise=COARSE_NOISE if options.coarse_noise is None else options.coarse_noise,
        detail_scale=1.0 if options.detail_scale is None else options.detail_scale,
        outline=bool(options.outline),
    )


def _labels_text(labels: str | None) -> str:
    parsed = parse_labels(labels)
    return ",".join(map(str, parsed)) if parsed else ""


class Ema:
    """Exponential moving average of a module's floating-point state (float32 copies)."""

    def __init__(self, module: torch.nn.Module, decay: float, initial: dict[str, torch.Tensor] | None = None):
        self.decay = float(decay)
        source = module.state_dict()
        initial = initial if initial is not None else source
        self.shadow = {k: initial[k].detach().to(v.device, torch.float32).clone() for k, v in source.items()}
        self._pairs = [(self.shadow[k], v) for k, v in source.items() if v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self) -> None:
        shadows = [s for s, _ in self._pairs]
        values = [v.float() for _, v in self._pairs]
        torch._foreach_lerp_(shadows, values, 1.0 - self.decay)


def _to_cpu(value: Any) -> Any:
    """Tensors anywhere in a nested state moved to the CPU (plain data only)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


@dataclass
class TrainResult:
    """What a run did (returned to the caller; the figures are for this process)."""

    out: Path
    start_step: int
    final_step: int
    cases: int
    skipped: list[SkippedCase] = field(default_factory=list)
    seconds: float = 0.0
    iterations_per_second: float = 0.0
    peak_memory_gib: float | None = 0.0  # None where the platform cannot measure it
    latest: Path | None = None
    interrupted: bool = False


def _split_holdout(cases: list[CachedCase], holdout: int) -> tuple[list[CachedCase], list[CachedCase]]:
    """Training and held-out cases: the last ``holdout`` by name are held out."""
    if holdout < 0:
        holdout = 1 if len(cases) >= 8 else 0
    if holdout >= len(cases):
        raise PowdrError(f"--holdout {holdout} leaves no training case out of {len(cases)}")
    cut = len(cases) - holdout
    return cases[:cut], cases[cut:]


def _prepare_data(
    settings: RunSettings,
    config: ModelConfig,
    data: str,
    cache_dir: Path,
    workers: int,
    context: DistributedContext,
    say: Callable[[str], None],
) -> tuple[list[CachedCase], list[SkippedCase]]:
    found, missing = discover_cases(data, settings.modality)
    prep = PrepareSettings(config=config, labels=parse_labels(settings.labels), dilate=settings.dilate)
    say(f"Preparing {len(found)} cases from {data} (cached in {cache_dir})")
    every = max(1, len(found) // 10)

    def report(done: int, total: int) -> None:
        if total >= 20 and (done % every == 0 or done == total):
            say(f"  {done} of {total} cases ready")

    if context.enabled:
        # Each process prepares its share first; afterwards everything is a cache hit
        # (or, without a shared disk, prepared locally).
        prepare_all(found[context.rank :: context.world_size], prep, cache_dir, workers)
        context.barrier()
    usable, failed = prepare_all(found, prep, cache_dir, workers, on_case=report)
    return usable, missing + failed


def _write_skipped(path: Path, skipped: list[SkippedCase]) -> None:
    temporary = path.with_name(f".{path.name}.part")
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("case", "reason"))
        writer.writerows((s.name, s.reason) for s in skipped)
    temporary.replace(path)


class Trainer:
    """One process's share of a run: data, model, optimiser, checkpoints and previews."""

    def __init__(self, options: TrainOptions, settings: RunSettings, data: str, out: Path,
                 payload: dict[str, Any] | None, context: DistributedContext):
        self.options, self.settings, self.data, self.out, self.context = options, settings, data, out, context
        self.device = context.device
        self.main = context.is_main
        self.state = payload["training_state"] if payload else None
        self.start_step = int(self.state["step"]) if self.state else 0
        self.reporter = Reporter(options.progress, self.main, self.start_step, options.iterations)
        self.config = ModelConfig.from_preset(settings.preset, modality=settings.modality)
        if settings.low_noise_weight and not settings.input_skip:
            raise PowdrError("--low-noise-weight needs --input-skip: its weights come from the skip's c_out")
        if settings.detail_scale != self.config.normalisation.detail_scale:
            if self.config.stage != "outpaint":
                raise PowdrError("--detail-scale applies to a first stage; the refine preset keeps its detail bands as they are")
            normalisation = replace(self.config.normalisation, detail_scale=settings.detail_scale)
            self.config = replace(self.config, normalisation=normalisation)
        if settings.outline:
            if self.config.stage != "outpaint":
                raise PowdrError("--outline applies to a first stage; a refine stage keeps the first stage's outline")
            network = replace(self.config.network, in_channels=self.config.network.in_channels + OUTLINE_CHANNELS)
            self.config = replace(self.config, outline=True, network=network)
        if settings.input_skip:
            low, detail = INPUT_SKIP_RMS
            network = replace(self.config.network, input_skip=(low, detail * settings.detail_scale))
            self.config = replace(self.config, network=network)
        try:
            self.config.validate()
        except ValueError as error:
            raise PowdrError(f"--preset {settings.preset} with --modality {settings.modality}: {error}") from None
        timesteps = self.config.diffusion.timesteps
        if settings.max_timestep > timesteps:
            raise PowdrError(f"--max-timestep {settings.max_timestep} exceeds the {timesteps} timesteps of the diffusion")
        if settings.max_timestep and self.config.stage != "outpaint":
            raise PowdrError("--max-timestep trains an expert for a first stage; the refine preset has none")
        self.timestep_limit = settings.max_timestep or timesteps
        coarse_set = options.coarse_blur is not None or options.coarse_noise is not None
        if coarse_set and self.config.stage != "refine":
            raise PowdrError("--coarse-blur and --coarse-noise degrade a refine stage's coarse input; "
                             f"the {settings.preset} preset has none")
        self.workers = options.workers if options.workers is not None else (2 if self.device.type == "cuda" else 0)
        if self.main:
            out.mkdir(parents=True, exist_ok=True)
        self._load_data()
        self._build_model(payload)
        self.log = TrainLog(out / LOG_NAME, self.start_step if self.state else None) if self.main else None
        self.elapsed_before = float(self.state["elapsed_s"]) if self.state else 0.0
        self.run_started = time.perf_counter()
        self.preview_net: OutpaintUNet | None = None
        if self.main and options.preview_every:
            with torch.random.fork_rng(devices=[]):  # building a network must not move the training stream
                self.preview_net = OutpaintUNet(self.config.network, self.config.diffusion)

    def say(self, text: str) -> None:
        if self.main:
            self.reporter.message(text)

    # ------------------------------------------------------------------ setup

    def _load_data(self) -> None:
        options, settings, context = self.options, self.settings, self.context
        cache_dir = Path(options.cache_dir).expanduser() if options.cache_dir else self.out / "cache"
        usable, self.skipped = _prepare_data(
            settings, self.config, self.data, cache_dir, self.workers, context, self.say
        )
        for case in self.skipped:
            self.say(f"  skipped {case.name}: {case.reason}")
        if self.main:
            _write_skipped(self.out / "skipped_cases.csv", self.skipped)
        found = len(usable) + len(self.skipped)
        if not usable:
            raise PowdrError(f"none of the {found} cases in {self.data} could be used (see the reasons above)")
        self.say(f"Using {len(usable)} of {found} cases ({len(self.skipped)} skipped)")
        train_cases, held_out = _split_holdout(usable, settings.holdout)
        self.names = [c.name for c in train_cases]
        if self.state and list(self.state["data"]["cases"]) != self.names:
            raise PowdrError(
                f"the training cases ({len(self.names)}) differ from those of the run being resumed "
                f"({len(self.state['data']['cases'])}); resume with the same data"
            )
        if self.state and int(self.state["world_size"]) != context.world_size:
            self.say(
                f"Resuming with {context.world_size} process(es) where the run used {self.state['world_size']}: "
                "training continues, but not identically to an uninterrupted run"
            )
        store = CaseStore(train_cases)
        self.items = TrainingItems(
            store, settings, store.lesion_volumes, spacing=self.config.grid.spacing, patch=self.config.grid.patch
        )
        self.items_per_step = context.world_size * settings.batch_size
        self.preview_case = CaseStore(held_out[:1] or train_cases[:1]).get(0)

    def _build_model(self, payload: dict[str, Any] | None) -> None:
        settings, state = self.settings, self.state
        # The same initial weights in every process (DDP also broadcasts rank 0's).
        torch.manual_seed(settings.seed)
        self.network = OutpaintUNet(self.config.network, self.config.diffusion)
        if state:
            self.network.load_state_dict(state["model"])
        elif self.options.init_from:
            payload = {"weights": self._initial_weights(self.options.init_from)}
            self.network.load_state_dict(payload["weights"])
        self.network.to(self.device)
        self.ema = Ema(self.network, settings.ema_decay, payload["weights"] if payload else None)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        if state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.model: torch.nn.Module = self.network
        if self.context.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.options.compile:
            self.model = torch.compile(self.model)
        precision = self.options.precision
        self.use_bf16 = precision == "bf16" or (precision == "auto" and auto_precision(self.device) == "bf16")
        warning = emulated_bf16_warning(precision, self.device)
        if warning:
            self.say(warning)
        self.schedule = Schedule.from_config(self.config.diffusion)
        self.scale = self.config.normalisation.subband_scale

    def _initial_weights(self, path: str) -> dict[str, torch.Tensor]:
        """The (EMA) weights of another checkpoint of the same network, to fine-tune from.

        From a cascade, the stage this run trains: its first stage, or for a refine-stage run its
        detail stage when that one works on this run's grid (a ``demo-detail`` run from the
        bundled model), else its refine stage.
        """
        try:
            config, weights = weights_for_run(path, self.config)
        except CheckpointError as error:
            raise PowdrError(f"--init-from: {error}") from None
        # The skip adds no weights: a plain x0 network is a fair start for one with the skip; nor
        # does the outline, but for its input channel, which starts at zero (see below).
        if replace(config.network, input_skip=(), in_channels=0) != replace(
            self.config.network, input_skip=(), in_channels=0
        ) or config.outline and not self.config.outline:
            raise PowdrError(
                f"--init-from {Path(path).name} holds a {config.preset} network, which differs from the "
                f"{self.config.preset} network of this run; choose a checkpoint of the same preset"
            )
        self.say(f"Starting from the weights of {path} ({config.preset}, {config.training.iterations} iterations)")
        ratio = self.config.normalisation.detail_scale / config.normalisation.detail_scale
        if ratio != 1.0:
            self.say(f"Its detail bands were scaled by {config.normalisation.detail_scale:g}, this run's by "
                     f"{self.config.normalisation.detail_scale:g}: its first and last layers are rescaled to match")
            weights = rescale_detail_io(weights, ratio, len(self.config.sequences))
        if self.config.outline and not config.outline:
            self.say("It did not see the outline: its input layer gains the outline's channel, starting at zero, "
                     "so the fine-tune starts from the same predictions")
            weights = add_input_channels(weights, OUTLINE_CHANNELS)
        return weights

    # ----------------------------------------------------------- checkpoints

    def checkpoint_config(self, step: int) -> ModelConfig:
        settings = self.settings
        return replace(self.config, training=TrainingInfo(
            strategy=settings.condition,
            iterations=step,
            dilate=settings.dilate,
            p_random=settings.p_random,
            data=f"{Path(self.data).name}: {len(self.names)} cases ({settings.modality})",
            max_timestep=settings.max_timestep,
        ))

    def save(self, step: int) -> Path:
        """Write latest.pt (and a snapshot when due); main process only."""
        epoch = step * self.items_per_step // len(self.names)
        training_state = {
            "version": STATE_VERSION,
            "step": step,
            "model": _to_cpu(self.network.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "settings": asdict(self.settings),
            "data_source": str(self.data),
            "data": {
                "cases": self.names,
                "order_seed": self.settings.seed,
                "next_item": step * self.items_per_step,
                "epoch": epoch,
                "epoch_order": [int(i) for i in self.items.order(epoch)],
            },
            # Every random stream is derived from the seed and the iteration (see the
            # module docstring), so these numbers are the whole random state.
            "rng": {"seed": self.settings.seed, "step": step, "world_size": self.context.world_size},
            "world_size": self.context.world_size,
            "elapsed_s": self.elapsed(),
        }
        self.log.flush()
        config = self.checkpoint_config(step)
        path = save_checkpoint(self.out / LATEST_NAME, config, self.ema.shadow, {"training_state": training_state})
        if self.options.snapshot_every and step % self.options.snapshot_every == 0:
            save_checkpoint(self.out / f"snapshot_{step:07d}.pt", config, self.ema.shadow)
        return path

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.run_started

    def preview(self, step: int) -> Path:
        """Sample the held-out case with the EMA weights and write the PNG; main process only."""
        assert self.preview_net is not None
        case, device = self.preview_case, self.device
        self.preview_net.load_state_dict(self.ema.shadow)
        forward = FastForward(self.preview_net, device)
        image = torch.from_numpy(case.image if case.image.ndim == 4 else case.image[None])[None].to(device)
        lesion = torch.from_numpy(case.lesion)[None, None].to(device)
        brain = torch.from_numpy(case.foreground)[None, None] if self.config.outline else None
        condition = make_condition(image, lesion, self.scale, brain)
        if self.config.stage == "refine":
            # The preview refines the held-out case's own half-resolution image.
            condition = torch.cat([condition, coarse_of(image)], dim=1)
        sampler = Sampler(self.schedule, "ddim", min(self.options.preview_steps, self.config.diffusion.timesteps))
        generators = [sample_generator(self.settings.seed, 0, device)]
        title = f"step {step}  case {case.name}"
        if self.settings.max_timestep:
            # An expert knows only the last steps: it finishes the held-out case itself, noised
            # to the first kept timestep below its limit.
            sample, start = self._expert_preview(forward, image, condition, sampler, generators[0])
            title += f"  (expert: from the case noised to t = {start})"
        else:
            sample = denoise(forward, condition, sampler, generators, self.scale, sequences=image.shape[1])
        # The first sequence is shown; it is the one a single-sequence model has.
        picture = render_preview(
            condition_image(image, lesion)[0, 0].float().cpu().numpy(),
            sample[0, 0].float().cpu().numpy(),
            image[0, 0].float().cpu().numpy(),
            case.lesion,
            title=title,
        )
        return save_preview(self.out / f"preview_{step:07d}.png", picture)

    def _expert_preview(self, forward, image, condition, sampler, generator) -> tuple[torch.Tensor, int]:
        """(B, S, X, Y, Z) images: ``image`` noised to the expert's first step, then denoised; and that t."""
        indices = [i for i in sampler.indices() if sampler.model_timestep(i) < self.settings.max_timestep]
        start = sampler.model_timestep(indices[0])
        target = image_to_wavelet(image, self.scale)
        noise = torch.randn(target.shape[1:], generator=generator, device=target.device)[None]
        x = self.schedule.q_sample(target, torch.tensor([start], device=target.device), noise)
        for index in indices:
            t = torch.full((1,), sampler.model_timestep(index), device=x.device, dtype=torch.long)
            x0 = clip_in_image_space(forward(torch.cat([x, condition], dim=1), t), self.scale)
            x = sampler.step(x, index, x0, None)
        return wavelet_to_image(x, self.scale).clamp_(-1.0, 1.0), start

    # ------------------------------------------------------------------ loop

    def iteration(self, step: int, image: torch.Tensor, mask: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch (image (B, S, X, Y, Z), mask and brain (B, 1, X, Y, Z)); returns the loss."""
        settings, device = self.settings, self.device
        image = image.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True)
        generator = torch.Generator(device=device)
        generator.manual_seed(stream_seed(settings.seed, step, self.context.rank, STREAM_NOISE))
        t = torch.randint(0, self.timestep_limit, (image.shape[0],), generator=generator, device=device)
        with torch.no_grad():
            target = image_to_wavelet(image, self.scale)
            condition = make_condition(image, mask, self.scale, brain if self.config.outline else None)
            if self.config.stage == "refine":
                coarse = degrade_coarse(coarse_of(image), generator, settings.coarse_blur, settings.coarse_noise)
                condition = torch.cat([condition, coarse], dim=1)
            noise = torch.randn(target.shape, generator=generator, device=device)
            noisy = self.schedule.q_sample(target, t, noise)
        # Dropout draws from the global stream, reseeded per iteration for exact resumes.
        torch.manual_seed(stream_seed(settings.seed, step, self.context.rank, STREAM_DROPOUT))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            prediction = self.model(torch.cat([noisy, condition], dim=1), t)
        weights = None
        if settings.low_noise_weight:
            weights = low_noise_weights(self.network.c_out, t, settings.low_noise_weight)
        loss = x0_loss(prediction, target, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), settings.grad_clip)
        self.optimizer.step()
        self.ema.update()
        # The log shows the plain x0 loss, so runs with and without weights compare.
        return (loss if weights is None else x0_loss(prediction.detach(), target)).detach().float()

    def run(self) -> TrainResult:
        options, settings, context = self.options, self.settings, self.context
        start, total = self.start_step, options.iterations
        if start >= total:
            self.say(f"The run in {self.out} is already at iteration {start} of {total}; nothing to do")
            return TrainResult(self.out, start, start, len(self.names), self.skipped, latest=self.out / LATEST_NAME)
        loader = DataLoader(
            self.items,
            batch_sampler=StepBatches(start, total, settings.batch_size, context.rank, context.world_size),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            # An explicit generator keeps the loader from drawing on the global random stream.
            generator=torch.Generator().manual_seed(settings.seed),
        )
        self.say(
            f"Training {settings.preset} ({settings.condition} masks) on {len(self.names)} cases, "
            f"{context.world_size} process(es) x batch {settings.batch_size}, from iteration {start} "
            f"to {total} on {self.device}"
        )
        self.reporter.begin()
        self.run_started = time.perf_counter()
        step, interrupted = start, False
        self.network.train()
        with stop_requests() as stop:
            for image, mask, brain in loader:
                loss = self.iteration(step, image, mask, brain)
                step += 1
                flag = torch.tensor(float(stop["stop"]), device=self.device)
                totals = context.sum(torch.stack([loss, flag]))
                mean_loss = float(totals[0]) / context.world_size
                interrupted = float(totals[1]) > 0  # any process asked: all stop at the same step
                if not math.isfinite(mean_loss):
                    raise PowdrError(
                        f"the loss became {mean_loss} at iteration {step}; lower --lr or --grad-clip and "
                        "resume from the last checkpoint"
                    )
                if self.main:
                    self.log.add(step, mean_loss, self.optimizer.param_groups[0]["lr"], self.elapsed())
                    self.reporter.step(step, mean_loss)
                    if step % options.save_every == 0 or step == total or interrupted:
                        self.save(step)
                    if self.preview_net is not None and step % options.preview_every == 0:
                        self.preview(step)
                if interrupted:
                    break
        if not interrupted:
            # Every process leaves together: a rank that tears its process group down while the
            # main one still writes the last checkpoint can abort in gloo's teardown.
            self.context.barrier()
        seconds = time.perf_counter() - self.run_started
        self.reporter.close()
        if self.log is not None:
            self.log.flush()
        result = TrainResult(
            out=self.out,
            start_step=start,
            final_step=step,
            cases=len(self.names),
            skipped=self.skipped,
            seconds=seconds,
            iterations_per_second=(step - start) / seconds if seconds > 0 else 0.0,
            peak_memory_gib=(
                torch.cuda.max_memory_allocated(self.device) / 2**30
                if self.device.type == "cuda" else peak_rss_gib()
            ),
            latest=self.out / LATEST_NAME,
            interrupted=interrupted,
        )
        if interrupted:
            self.say(f"Stopped at iteration {step}; {LATEST_NAME} is saved, continue with --resume")
            raise KeyboardInterrupt
        self.say(
            f"Done: iteration {step}, {result.iterations_per_second:.2f} it/s, "
            f"peak memory {format_gib(result.peak_memory_gib)}; checkpoint {self.out / LATEST_NAME}"
        )
        return result


def train(options: TrainOptions) -> TrainResult:
    """Run (or continue) a training run; see the module docstring."""
    options.validate()
    if options.threads:
        torch.set_num_threads(options.threads)
    out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise PowdrError(f"--out {out} exists and is not a folder")
    latest = out / LATEST_NAME
    stored_state: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    if options.resume:
        if not latest.is_file():
            raise PowdrError(f"--resume was given but {latest} does not exist")
        _, payload = read_checkpoint(latest)
        stored_state = payload.get("training_state")
        if not isinstance(stored_state, dict) or stored_state.get("version") != STATE_VERSION:
            raise PowdrError(f"{latest} holds no training state this version can resume")
    elif latest.exists():
        raise PowdrError(
            f"{out} already holds a training run ({LATEST_NAME}); pass --resume to continue it "
            "or choose another --out folder"
        )
    settings = resolve_settings(options, stored_state["settings"] if stored_state else None)
    data = options.data or (stored_state or {}).get("data_source")
    if not data:
        raise PowdrError("--data is required: a folder of cases in BraTS layout or a CSV with image,mask columns")

    context = setup(options.device)
    try:
        return Trainer(options, settings, data, out, payload, context).run()
    finally:
        context.close()
