"""Checkpoint files: one ``.pt`` holding a validated configuration and the weights.

Layout (every value is a tensor, a number, a string or a container of those, so
the file loads with ``torch.load(..., weights_only=True)`` and no code runs)::

    {"format": "powdr-outpaint-checkpoint",
     "config": "<JSON text of ModelConfig>",
     "weights": {name: tensor},            # used for sampling (the EMA when trained)
     "refiner": {"config": ..., "weights": ...},   # optional: a cascade's refine stage
     "detailer": {"config": ..., "weights": ...},  # optional: redraws the first stage's detail
     "expert": {"config": ..., "weights": ...},    # optional: the first stage's last steps
     "guide": {"config": ..., "weights": ..., "weight": w,   # optional: autoguidance,
               "from_timestep": n,         # on steps with t >= n only (absent: 0, every step)
               "bands": "detail"},         # guided subbands: "all" (absent) or "detail"
     ...}                                  # training state, ignored here

Weights may be stored in float16 (``--weights fp16``) to halve the file; they are loaded
into the float32 network, so only their rounding changes. ``--weights int8`` quarters it: every
weight matrix and kernel is stored as int8 with one float32 scale per output channel, in a
``"weight_scales": {name: tensor}`` entry beside the section's ``"weights"`` (the other tensors,
biases and norms, in float16); :func:`read_checkpoint` turns them back into float32 weights.

The JSON configuration is checked field by field and the weights must match the
network it describes exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import CheckpointError
from ..imaging.atomic import atomic_target
from .diffusion import DiffusionConfig
from .network import NetworkConfig, OutpaintUNet
from .presets import STAGES, GridConfig, get_preset
from .transforms import COARSE_CHANNELS, OUTLINE_CHANNELS, SubbandScale

FORMAT = "powdr-outpaint-checkpoint"
#: Beyond this the detail bands would outweigh the low-pass band many times over.
MAX_DETAIL_SCALE = 16.0
FORMAT_VERSION = 1
STRATEGIES = ("tumor", "random", "mixed", "untrained")
#: A sequence name becomes part of file names and nnU-Net channel names.
SEQUENCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


@dataclass(frozen=True)
class NormalisationConfig:
    """Intensity normalisation: foreground percentiles mapped to -1 and 1."""

    lower_percentile: float = 1.0
    upper_percentile: float = 99.0
    lll_scale: float = 3.0
    # Added later: checkpoints stored before it trained with unscaled detail bands.
    detail_scale: float = 1.0

    def validate(self) -> None:
        if not 0.0 <= self.lower_percentile < self.upper_percentile <= 100.0:
            raise ValueError("percentiles must satisfy 0 <= lower < upper <= 100")
        if self.lll_scale <= 0:
            raise ValueError("lll_scale must be positive")
        if not 0.0 < self.detail_scale <= MAX_DETAIL_SCALE:
            raise ValueError(f"detail_scale must lie in (0, {MAX_DETAIL_SCALE:g}]")

    @property
    def subband_scale(self) -> SubbandScale:
        """How the diffusion scales the wavelet subbands (see :mod:`transforms`)."""
        return SubbandScale(lll=self.lll_scale, detail=self.detail_scale)


@dataclass(frozen=True)
class TrainingInfo:
    """How the weights were obtained (shown on the model card)."""

    strategy: str = "untrained"
    iterations: int = 0
    dilate: int = 0
    p_random: float = 0.0
    data: str = ""
    # 0: trained on every timestep. N: only on t < N, an expert for the last steps of a chain.
    max_timestep: int = 0

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"training strategy must be one of {', '.join(STRATEGIES)}")
        if self.iterations < 0 or self.dilate < 0 or not 0.0 <= self.p_random <= 1.0:
            raise ValueError("iterations and dilate must be >= 0 and p_random in [0, 1]")
        if self.max_timestep < 0:
            raise ValueError("max_timestep must be 0 (every timestep) or more")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild and use a trained model."""

    preset: str
    network: NetworkConfig
    diffusion: DiffusionConfig
    grid: GridConfig
    normalisation: NormalisationConfig = field(default_factory=NormalisationConfig)
    modality: str = "t1"  # one sequence, or several in channel order: "t1,t1ce,t2,flair"
    training: TrainingInfo = field(default_factory=TrainingInfo)
    format_version: int = FORMAT_VERSION
    stage: str = "outpaint"  # presets.STAGES
    # A first stage that also sees the brain's outline (one more input channel, see
    # transforms.outline_of); files stored before it have no such channel.
    outline: bool = False

    @property
    def sequences(self) -> tuple[str, ...]:
        """The MRI sequences the model makes together, in channel order (one for most models)."""
        return tuple(self.modality.split(","))

    @classmethod
    def from_preset(cls, name: str, modality: str = "t1", training: TrainingInfo | None = None) -> "ModelConfig":
        """A preset's configuration; several sequences ("t1,t2") multiply its channels."""
        preset = get_preset(name)
        count = len(modality.split(","))
        coarse = COARSE_CHANNELS if preset.stage == "refine" else 0
        return cls(
            preset=preset.name,
            network=replace(preset.network, in_channels=(16 + coarse) * count, out_channels=8 * count),
            diffusion=preset.diffusion,
            grid=preset.grid,
            modality=modality,
            training=training or TrainingInfo(dilate=preset.dilate),
            stage=preset.stage,
        )

    def validate(self) -> None:
        self.network.validate()
        self.diffusion.validate()
        self.grid.validate(self.network.divisor)
        self.normalisation.validate()
        self.training.validate()
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}")
        if not isinstance(self.modality, str) or not all(SEQUENCE_NAME.match(n) for n in self.sequences):
            raise ValueError("modality must name one sequence or several, comma-separated (t1,t1ce,t2,flair)")
        if len(set(self.sequences)) != len(self.sequences):
            raise ValueError(f"modality names a sequence twice ({self.modality})")
        count = len(self.sequences)
        if not isinstance(self.outline, bool):
            raise ValueError("outline must be true or false")
        if self.outline and self.stage != "outpaint":
            raise ValueError("only a first stage sees the brain's outline")
        expected = (16 + (COARSE_CHANNELS if self.stage == "refine" else 0)) * count + self.outline * OUTLINE_CHANNELS
        if self.network.in_channels != expected or self.network.out_channels != 8 * count:
            extra = " + the first stage" if self.stage == "refine" else " + the outline" if self.outline else ""
            raise ValueError(
                f"a {self.stage} network of {count} sequence{'s' if count > 1 else ''} must take {expected} "
                f"channels (noisy + condition subbands{extra}) and return {8 * count}"
            )
        if self.stage == "refine" and not self.grid.patch:
            raise ValueError("a refine network needs the training patch size in its grid")
        if self.stage == "refine" and count > 1:
            raise ValueError("a refine stage (cascade) works on one sequence; several are not supported yet")

    def to_json(self) -> str:
        raw = asdict(self)
        # Unscaled detail bands are written as before, so versions without detail scaling read the file.
        if self.normalisation.detail_scale == 1.0:
            del raw["normalisation"]["detail_scale"]
        if not self.outline:
            del raw["outline"]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        """Build and validate a configuration from untrusted JSON data."""
        if not isinstance(raw, dict):
            raise ValueError("the configuration is not a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"format version {version!r} is not supported by this version (expects {FORMAT_VERSION})"
            )
        try:
            network = _build(NetworkConfig, raw["network"], tuples=("channel_mult", "attention_levels", "input_skip"))
            diffusion = _build(DiffusionConfig, raw["diffusion"])
            grid = _build(GridConfig, raw["grid"], tuples=("shape", "spacing", "patch"))
            normalisation = _build(NormalisationConfig, raw.get("normalisation", {}))
            training = _build(TrainingInfo, raw.get("training", {}))
            config = cls(
                preset=str(raw["preset"]),
                network=network,
                diffusion=diffusion,
                grid=GridConfig(
                    tuple(int(s) for s in grid.shape),
                    tuple(float(s) for s in grid.spacing),
                    tuple(int(s) for s in grid.patch),
                ),
                normalisation=normalisation,
                modality=str(raw.get("modality", "")),
                training=training,
                stage=str(raw.get("stage", "outpaint")),
                outline=raw.get("outline", False),
            )
        except KeyError as error:
            raise ValueError(f"the configuration lacks the field {error.args[0]!r}") from None
        config.validate()
        return config

    def card(self) -> dict[str, Any]:
        """A short, human-readable description (the model card)."""
        return {
            "preset": self.preset,
            "modality": self.modality,
            "sequences": list(self.sequences),
            "grid": {"shape": list(self.grid.shape), "spacing_mm": list(self.grid.spacing)},
            # An expert's limit only; 0 (every timestep) is left out, as older files have no such field.
            "training": {k: v for k, v in asdict(self.training).items() if k != "max_timestep" or v},
            "network": {
                "base_channels": self.network.base_channels,
                "channel_mult": list(self.network.channel_mult),
                "attention_levels": list(self.network.attention_levels),
                "input_skip": list(self.network.input_skip),
            },
            "timesteps": self.diffusion.timesteps,
            "detail_scale": self.normalisation.detail_scale,
            "outline": self.outline,
        }


def _build(cls, raw: Any, tuples: tuple[str, ...] = ()):
    if not isinstance(raw, dict):
        raise ValueError(f"the {cls.__name__} section is not a JSON object")
    names = set(cls.__dataclass_fields__)
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"unknown fields in {cls.__name__}: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in raw.items():
        expected = cls.__dataclass_fields__[name].type
        if name in tuples:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"{cls.__name__}.{name} must be a list of numbers")
            value = tuple(value)
        elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{cls.__name__}.{name} has an unsupported value {value!r}")
        elif "int" in str(expected) and not isinstance(value, int):
            raise ValueError(f"{cls.__name__}.{name} must be an integer")
        elif "float" in str(expected) and isinstance(value, str):
            raise ValueError(f"{cls.__name__}.{name} must be a number")
        elif "str" in str(expected) and not isinstance(value, str):
            raise ValueError(f"{cls.__name__}.{name} must be a string")
        values[name] = value
    return cls(**values)


@dataclass
class LoadedModel:
    config: ModelConfig
    network: OutpaintUNet
    sha256: str
    path: Path
    extra: dict[str, Any]
    refiner: "LoadedModel | None" = None  # the refine stage of a cascade
    detailer: "LoadedModel | None" = None  # a refine stage on the first stage's grid or one octave finer
    expert: "LoadedModel | None" = None  # the first stage's expert for its last steps
    guide: "LoadedModel | None" = None  # a weaker first stage that guides this one (autoguidance)
    guidance: float = 1.0  # the stored guidance weight (1: the first stage alone)
    guidance_from: int = 0  # the guide acts on steps with t >= this; below, the first stage alone
    guided_bands: str = "all"  # the subbands the guide acts on: "all", or "detail" (not the low-pass)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Read and validate a checkpoint file without building the network.

    Returns the configuration and the whole (plain-data) payload.
    Raises CheckpointError with one sentence for any file that is not usable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"the checkpoint {path} does not exist")
    try:
        # An open file, not a name: see atomic_torch_save
        with open(path, "rb") as handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The restricted unpickler names the first object it refuses ("Unsupported global" from
        # torch 2.4, "Unsupported class" in 2.1-2.3); anything else is garbage.
        if not re.search(r"unsupported (global|class)", str(error), re.IGNORECASE):
            raise CheckpointError(f"the checkpoint {path.name} is damaged or not a PyTorch file") from None
        raise CheckpointError(
            f"the checkpoint {path.name} was refused: it contains objects other than plain weights "
            "(possibly code), so it is not a PowdrOutpaint checkpoint and was not run"
        ) from None
    except Exception as error:  # noqa: BLE001 - a damaged archive fails in many ways
        raise CheckpointError(
            f"the checkpoint {path.name} is damaged or not a PyTorch file ({str(error).splitlines()[0][:120]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"the file {path.name} is a PyTorch file but not a PowdrOutpaint checkpoint")
    _dequantise(payload, path.name, "weights")
    for section in STAGE_SECTIONS:
        if isinstance(payload.get(section), dict):
            _dequantise(payload[section], path.name, f"{STAGE_NAMES[section]}'s weights")
    try:
        config = ModelConfig.from_dict(json.loads(payload.get("config", "")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"the checkpoint {path.name} has an invalid configuration: {error}") from None
    weights = payload.get("weights")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"the checkpoint {path.name} holds no weights")
    if "refiner" in payload:
        _refiner_config(payload["refiner"], config, path.name)
    if "detailer" in payload:
        detailer_of(payload, config, path.name)
    if "expert" in payload:
        _expert_config(payload["expert"], config, path.name)
    if "guide" in payload:
        guide_of(payload, config, path.name)
    return config, payload


def _refiner_config(section: Any, first: ModelConfig, name: str) -> ModelConfig:
    """The validated configuration of a cascade's refine stage."""
    config = _section_config(section, name, "refine stage")
    if first.stage != "outpaint" or config.stage != "refine":
        raise CheckpointError(f"the checkpoint {name} joins stages in the wrong order")
    if config.modality != first.modality:
        raise CheckpointError(f"the two stages of {name} were trained on different modalities")
    return config


def detail_is_finer(detailer: ModelConfig, first: ModelConfig) -> bool:
    """Whether ``detailer`` works one octave finer than ``first``: twice the voxels, half the spacing.

    Its own low-pass (the 2x2x2 block means it was trained to draw detail from) is then the first
    stage's grid itself, so a first stage on a coarse grid can lay out the whole brain and the
    detail stage draws its first octave of detail.
    """
    return detailer.grid.shape == tuple(2 * s for s in first.grid.shape) and all(
        abs(2.0 * d - f) < 1e-6 for d, f in zip(detailer.grid.spacing, first.grid.spacing)
    )


def _same_grid(a: GridConfig, b: GridConfig) -> bool:
    """Whether two grids have the same voxels (shape and spacing; the training block may differ)."""
    return tuple(a.shape) == tuple(b.shape) and tuple(a.spacing) == tuple(b.spacing)


def check_detailer(detailer: ModelConfig, first: ModelConfig, name: str) -> None:
    """Refuse a detail stage that cannot redraw ``first``'s detail (CheckpointError, one sentence).

    A detail stage is a refine-stage network that sees an image at half its own resolution (the
    low-pass) and draws the detail of its grid. Its grid is either the first stage's own (it
    redraws the first stage's detail) or one octave finer (see :func:`detail_is_finer`).
    """
    if detailer.stage != "refine":
        raise CheckpointError(f"{name} is not a detail stage (train one with --preset demo-detail)")
    if not _same_grid(detailer.grid, first.grid) and not detail_is_finer(detailer, first):
        raise CheckpointError(
            f"{name} draws detail on a {'x'.join(map(str, detailer.grid.shape))} grid of "
            f"{detailer.grid.spacing[0]:g} mm, the first stage works on {'x'.join(map(str, first.grid.shape))} of "
            f"{first.grid.spacing[0]:g} mm; a detail stage must share the first stage's grid or be one octave "
            "finer (twice the voxels at half the spacing)"
        )
    if detailer.modality != first.modality:
        raise CheckpointError(
            f"the first stage was trained on {first.modality} and the detail stage {name} on {detailer.modality}"
        )


def detailer_of(payload: dict[str, Any], first: ModelConfig, name: str) -> ModelConfig | None:
    """The detail stage's configuration when the checkpoint holds one, else None."""
    if "detailer" not in payload:
        return None
    config = _section_config(payload["detailer"], name, "detail stage")
    check_detailer(config, first, name)
    return config


def _section_config(section: Any, name: str, what: str) -> ModelConfig:
    if not isinstance(section, dict) or not isinstance(section.get("weights"), dict) or not all(
        isinstance(v, torch.Tensor) for v in section["weights"].values()
    ):
        raise CheckpointError(f"the checkpoint {name} has a damaged {what}")
    try:
        return ModelConfig.from_dict(json.loads(section.get("config", "")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"the {what} of {name} has an invalid configuration: {error}") from None


def _same_task(other: ModelConfig, first: ModelConfig) -> bool:
    """Whether ``other`` predicts the same subbands from the same inputs as ``first``."""
    return (
        other.modality == first.modality
        and other.diffusion == first.diffusion
        and other.grid == first.grid
        and other.normalisation == first.normalisation
        and other.outline == first.outline
        and other.network.in_channels == first.network.in_channels
        and other.network.out_channels == first.network.out_channels
    )


def check_expert(expert: ModelConfig, first: ModelConfig, name: str) -> None:
    """Refuse an expert that cannot stand in for ``first`` on its last steps (CheckpointError)."""
    if expert.stage != "outpaint" or not expert.training.max_timestep:
        raise CheckpointError(
            f"{name} is not an expert for the last steps (train one with --max-timestep on a first-stage preset)"
        )
    if first.training.max_timestep:
        raise CheckpointError(f"the first stage of {name} is itself an expert for the last steps")
    if expert.training.max_timestep > first.diffusion.timesteps:
        raise CheckpointError(f"the expert of {name} claims more timesteps than the diffusion has")
    if not _same_task(expert, first):
        raise CheckpointError(
            f"the expert of {name} was trained for another grid, modality, diffusion or outline than its first stage"
        )


def _expert_config(section: Any, first: ModelConfig, name: str) -> ModelConfig:
    """The validated configuration of a first stage's expert for its last steps."""
    config = _section_config(section, name, "expert for the last steps")
    check_expert(config, first, name)
    return config


def expert_of(payload: dict[str, Any], first: ModelConfig, name: str) -> ModelConfig | None:
    """The expert's configuration when the checkpoint holds one, else None."""
    return _expert_config(payload["expert"], first, name) if "expert" in payload else None


#: Guidance weights a file or a run may ask for: 1 is the first stage alone; past about 3 the
#: samples of the bundled model break into blotches.
GUIDANCE_RANGE = (1.0, 10.0)
#: The weight ``cascade --guide`` stores when none is given.
DEFAULT_GUIDANCE = 2.0


def check_guidance(weight: Any, where: str) -> float:
    """A guidance weight as a float, or CheckpointError naming ``where`` it came from."""
    low, high = GUIDANCE_RANGE
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not low <= float(weight) <= high:
        raise CheckpointError(f"the guidance weight of {where} must be a number from {low:g} to {high:g}")
    return float(weight)


def check_guide(guide: ModelConfig, first: ModelConfig, name: str) -> None:
    """Refuse a guide that is not a whole first stage for the same task as ``first``."""
    if guide.stage != "outpaint" or guide.training.max_timestep:
        raise CheckpointError(f"{name} is not a whole first stage, so it cannot guide one")
    if not _same_task(guide, first):
        raise CheckpointError(
            f"the guide {name} was trained for another grid, modality, diffusion or outline than the first stage"
        )


#: The ``from_timestep`` ``cascade --guide`` stores when none is given: guidance on the nearly
#: clean last steps (t < 30) amplifies the difference of two denoisers that both nearly hand
#: their input back, which draws blotches, not anatomy (model card, *A weaker guide*).
DEFAULT_GUIDANCE_FROM = 30


def check_guidance_from(timestep: Any, where: str, timesteps: int) -> int:
    """A guidance start timestep as an int in 0..timesteps, or CheckpointError naming ``where``."""
    if isinstance(timestep, bool) or not isinstance(timestep, int) or not 0 <= timestep <= timesteps:
        raise CheckpointError(f"the guidance start of {where} must be a whole timestep from 0 to {timesteps}")
    return int(timestep)


#: The subbands autoguidance may act on: "all" eight, or the seven "detail" ones, leaving the
#: low-pass band (the tissue level and the coarse layout) to the first stage alone.
GUIDED_BANDS = ("all", "detail")
#: What ``cascade --guide`` stores when none is given: guiding the low-pass band moves the whole
#: brain's brightness with the two networks' difference of level, not its anatomy (model card,
#: *Guiding the detail only*).
DEFAULT_GUIDED_BANDS = "detail"


def check_guided_bands(bands: Any, where: str) -> str:
    """The guided subbands ("all" or "detail"), or CheckpointError naming ``where``."""
    if bands not in GUIDED_BANDS:
        raise CheckpointError(f"the guided subbands of {where} must be one of {', '.join(GUIDED_BANDS)}")
    return str(bands)


class GuideSection(NamedTuple):
    config: ModelConfig
    weight: float
    from_timestep: int
    bands: str = "all"


def guide_of(payload: dict[str, Any], first: ModelConfig, name: str) -> GuideSection | None:
    """The guide's configuration, stored weight and start timestep when the checkpoint holds one, else None."""
    if "guide" not in payload:
        return None
    section = payload["guide"]
    config = _section_config(section, name, "guide")
    check_guide(config, first, name)
    return GuideSection(
        config,
        check_guidance(section.get("weight"), name),
        check_guidance_from(section.get("from_timestep", 0), name, first.diffusion.timesteps),
        check_guided_bands(section.get("bands", "all"), name),
    )


def refiner_of(payload: dict[str, Any], first: ModelConfig, name: str) -> ModelConfig | None:
    """The refine stage's configuration when the checkpoint is a cascade, else None."""
    return _refiner_config(payload["refiner"], first, name) if "refiner" in payload else None


def stage_weights(path: str | os.PathLike, stage: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The configuration and weights of one stage ("outpaint", "refine" or "detail") of a checkpoint.

    A cascade holds several stages; a single-stage file holds one. Raises CheckpointError with one
    sentence when the file holds no such stage.
    """
    config, payload = read_checkpoint(path)
    return _stage_of(config, payload, stage, Path(path).name)


def weights_for_run(path: str | os.PathLike, run: ModelConfig) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The stage of a checkpoint that a training run of ``run``'s preset starts from (``--init-from``).

    A first-stage run takes the first stage. A refine-stage network serves a cascade twice, as its
    refine stage and as its detail stage (``demo-detail``); a refine-stage run takes the detail
    stage when that one works on the run's own grid and the refine stage does not, else the
    refine stage. Raises CheckpointError with one sentence when the file holds no such stage.
    """
    config, payload = read_checkpoint(path)
    name = Path(path).name
    if run.stage == "refine" and config.stage != "refine" and "detailer" in payload:
        detailer, weights = _stage_of(config, payload, "detail", name)
        refiner = refiner_of(payload, config, name)
        if _same_grid(detailer.grid, run.grid) and (refiner is None or not _same_grid(refiner.grid, run.grid)):
            return detailer, weights
    return _stage_of(config, payload, run.stage, name)


def _stage_of(
    config: ModelConfig, payload: dict[str, Any], stage: str, name: str
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """:func:`stage_weights` of a checkpoint already read."""
    if stage == "detail":
        # A detail stage is a refine-stage network: a file of its own, or a cascade's detail stage.
        if config.stage == "refine":
            return config, payload["weights"]
        detailer = detailer_of(payload, config, name)
        if detailer is None:
            raise CheckpointError(
                f"{name} holds no detail stage (it is not a refine-stage model or a cascade with one; "
                "train one with --preset demo-detail)"
            )
        return detailer, payload["detailer"]["weights"]
    if stage == "refine" and config.stage != "refine":
        refiner = refiner_of(payload, config, name)
        if refiner is None:
            raise CheckpointError(
                f"{name} holds no refine stage (it is not a refine-stage model or a cascade; "
                "train one with --preset refine)"
            )
        return refiner, payload["refiner"]["weights"]
    if config.stage != stage:
        raise CheckpointError(f"{name} holds no first stage (it is not a first-stage model or a cascade)")
    return config, payload["weights"]


def _network(config: ModelConfig, weights: dict[str, torch.Tensor], name: str, what: str) -> OutpaintUNet:
    network = OutpaintUNet(config.network, config.diffusion)
    try:
        # Float16-stored weights are cast into the float32 parameters here.
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(
            f"the {what} in {name} do not match the network its configuration describes ({first[:160]})"
        ) from None
    return network.eval()


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a checkpoint for inference: validated config, network in eval mode on ``device``."""
    path = Path(path)
    config, payload = read_checkpoint(path)
    network = _network(config, payload["weights"], path.name, "weights").to(device)
    if config.stage == "refine":
        raise CheckpointError(
            f"{path.name} is only the refine stage of a cascade; join it to a first stage with "
            "'powdr-outpaint cascade' and sample with the joined file"
        )
    if config.training.max_timestep:
        raise CheckpointError(
            f"{path.name} is only an expert for the last {config.training.max_timestep} denoising steps; add it "
            "to a first stage with 'powdr-outpaint cascade --expert' and sample with the joined file"
        )

    def section_model(section: str, stage_config: ModelConfig | None, what: str) -> LoadedModel | None:
        if stage_config is None:
            return None
        stage_network = _network(stage_config, payload[section]["weights"], path.name, what)
        return LoadedModel(config=stage_config, network=stage_network.to(device), sha256="", path=path, extra={})

    refiner = section_model("refiner", refiner_of(payload, config, path.name), "refine stage's weights")
    detailer = section_model("detailer", detailer_of(payload, config, path.name), "detail stage's weights")
    expert = section_model("expert", expert_of(payload, config, path.name), "expert's weights")
    guide_section = guide_of(payload, config, path.name)
    guide = section_model("guide", guide_section and guide_section.config, "guide's weights")
    extra = {k: v for k, v in payload.items() if k not in ("weights", "config", "format", *STAGE_SECTIONS)}
    return LoadedModel(
        config=config, network=network, sha256=file_sha256(path), path=path, extra=extra, refiner=refiner,
        detailer=detailer, expert=expert, guide=guide, guidance=guide_section.weight if guide_section else 1.0,
        guidance_from=guide_section.from_timestep if guide_section else 0,
        guided_bands=guide_section.bands if guide_section else "all",
    )


#: The sections of a checkpoint besides its first stage that hold a network.
STAGE_SECTIONS = ("refiner", "detailer", "expert", "guide")


#: What each section's weights are called in messages.
STAGE_NAMES = {"refiner": "refine stage", "detailer": "detail stage", "expert": "expert", "guide": "guide"}

#: The dtype each ``--weights`` choice stores floating-point tensors in (for int8: those it does not
#: quantise, see QUANTISED_MIN_VALUES).
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float16}
#: The key beside a section's "weights" that holds the per-channel scales of its int8 tensors.
SCALES_KEY = "weight_scales"
#: int8 quantises tensors of at least 2 dimensions and this many values (kernels and matrices); the
#: small rest (biases, norms) is a thousandth of the weights and stays float16.
QUANTISED_MIN_VALUES = 256


def _quantised(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per output channel, shaped to broadcast): symmetric, 127 levels."""
    weight = weight.detach().to("cpu", torch.float32)
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(weight / scale).clamp_(-127, 127).to(torch.int8), scale


def stored_weights(weights: dict[str, torch.Tensor], dtype: str = "fp32") -> dict[str, Any]:
    """A section's stored form: ``{"weights": CPU copies}``, floating-point ones in ``dtype``
    ("fp32", "fp16" or "int8"); int8 adds the scales under :data:`SCALES_KEY`."""
    target = WEIGHT_DTYPES[dtype]
    stored: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        matrix = value.is_floating_point() and value.dim() >= 2 and value.numel() >= QUANTISED_MIN_VALUES
        if dtype == "int8" and matrix:
            stored[name], scales[name] = _quantised(value)
        else:
            stored[name] = value.detach().to("cpu", dtype=target if value.is_floating_point() else value.dtype).clone()
    return {"weights": stored, SCALES_KEY: scales} if scales else {"weights": stored}


def stored_section(section: dict[str, Any], dtype: str = "fp32") -> dict[str, Any]:
    """A copy of a checkpoint's stage section (one of STAGE_SECTIONS) with its weights in ``dtype``."""
    kept = {k: v for k, v in section.items() if k not in ("weights", SCALES_KEY)}
    return {**kept, **stored_weights(section["weights"], dtype)}


def _dequantise(section: dict[str, Any], name: str, what: str) -> None:
    """Replace a section's int8 weights and their scales by float32 weights, in place.

    Raises CheckpointError with one sentence when the scales do not fit the weights.
    """
    weights, scales = section.get("weights"), section.pop(SCALES_KEY, {})
    if not isinstance(weights, dict):
        return  # read_checkpoint reports missing weights
    if not isinstance(scales, dict):
        raise CheckpointError(f"the checkpoint {name} is damaged: the int8 scales of its {what} are not a table")
    quantised = [k for k, v in weights.items() if isinstance(v, torch.Tensor) and v.dtype == torch.int8]
    if set(scales) - set(quantised):
        raise CheckpointError(f"the checkpoint {name} is damaged: it holds int8 scales for {what} that are not int8")
    for key in quantised:
        value, scale = weights[key], scales.get(key)
        if not (
            isinstance(scale, torch.Tensor) and scale.is_floating_point()
            and scale.shape == (value.shape[0],) + (1,) * (value.dim() - 1)
            and bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
        ):
            raise CheckpointError(f"the checkpoint {name} is damaged: the {what} {key!r} have no valid int8 scale")
        weights[key] = value.to(torch.float32) * scale.to(torch.float32)


def save_cascade(
    first_path: str | os.PathLike,
    refine_path: str | os.PathLike | None,
    path: str | os.PathLike,
    expert_path: str | os.PathLike | None = None,
    weights: str = "fp32",
    guide_path: str | os.PathLike | None = None,
    guidance: float | None = None,
    guidance_from: int | None = None,
    guided_bands: str | None = None,
    detail_path: str | os.PathLike | None = None,
) -> Path:
    """Join a first stage with a refine stage and/or an expert for its last steps into one
    sampling checkpoint (no training state).

    Either stage file may itself be a cascade: its first, or its refine, stage is taken, so one
    stage of a cascade can be replaced by a newly trained one. The expert (trained with
    ``--max-timestep``) comes from ``expert_path``. A stage not given is kept from the first file
    when it holds one. ``guide_path`` adds a weaker first stage for autoguidance (its first
    stage when it is a cascade) with weight ``guidance`` (default DEFAULT_GUIDANCE; given alone, it re-weighs
    the guide of the first file); it acts on the steps with t >= ``guidance_from`` (default
    DEFAULT_GUIDANCE_FROM for a new guide), on ``guided_bands`` (default DEFAULT_GUIDED_BANDS for a
    new guide). ``detail_path`` adds a detail stage (a refine-stage network on the first stage's
    own grid or one octave finer, see :func:`check_detailer`). ``weights`` "fp16" stores every weight in half
    precision, "int8" in 8 bits (:func:`stored_weights`).
    """
    config, first_payload = read_checkpoint(first_path)
    first, first_weights = _stage_of(config, first_payload, "outpaint", Path(first_path).name)
    if first.training.max_timestep:
        raise CheckpointError(
            f"{Path(first_path).name} is an expert for the last steps, not a whole first stage; give it as --expert"
        )
    extra: dict[str, Any] = {}
    if refine_path is not None:
        refine, refine_weights = stage_weights(refine_path, "refine")
        if refine.modality != first.modality:
            raise CheckpointError(
                f"the first stage was trained on {first.modality} and the refine stage on {refine.modality}"
            )
        extra["refiner"] = {"config": refine.to_json(), **stored_weights(refine_weights, weights)}
    if detail_path is not None:
        detailer, detail_weights = stage_weights(detail_path, "detail")
        check_detailer(detailer, first, Path(detail_path).name)
        extra["detailer"] = {"config": detailer.to_json(), **stored_weights(detail_weights, weights)}
    if expert_path is not None:
        expert, expert_weights = stage_weights(expert_path, "outpaint")
        check_expert(expert, first, Path(expert_path).name)
        extra["expert"] = {"config": expert.to_json(), **stored_weights(expert_weights, weights)}
    if guide_path is not None:
        guide, guide_weights = stage_weights(guide_path, "outpaint")
        check_guide(guide, first, Path(guide_path).name)
        extra["guide"] = {
            "config": guide.to_json(), **stored_weights(guide_weights, weights), "weight": DEFAULT_GUIDANCE,
            "from_timestep": DEFAULT_GUIDANCE_FROM, "bands": DEFAULT_GUIDED_BANDS,
        }
    for name in STAGE_SECTIONS:
        if name not in extra and name in first_payload:
            extra[name] = stored_section(first_payload[name], weights)
    if guidance is not None:
        if "guide" not in extra:
            raise CheckpointError("a guidance weight needs a guide: give one with --guide")
        extra["guide"]["weight"] = check_guidance(guidance, "the cascade")
    if guidance_from is not None:
        if "guide" not in extra:
            raise CheckpointError("a guidance start needs a guide: give one with --guide")
        extra["guide"]["from_timestep"] = check_guidance_from(guidance_from, "the cascade", first.diffusion.timesteps)
    if guided_bands is not None:
        if "guide" not in extra:
            raise CheckpointError("guided subbands need a guide: give one with --guide")
        extra["guide"]["bands"] = check_guided_bands(guided_bands, "the cascade")
    if not extra:
        raise CheckpointError(
            "a cascade needs a refine stage, a detail stage, an expert for the last steps, a guide, or more"
        )
    return save_checkpoint(path, first, first_weights, extra, weights_dtype=weights)


def atomic_torch_save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save to a temporary file in the destination folder, then rename over ``path``.

    torch gets an open file, not a name: on Windows its C++ writer opens names in the ANSI
    code page, which fails for folders such as "Patient Ö" (pytorch/pytorch#103949) and has
    truncated files over 2 GiB (#185098); Python's ``open`` handles any path.
    """
    with atomic_target(path) as temporary:
        with open(temporary, "wb") as stream:
            torch.save(payload, stream)
    return Path(path)


def save_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
    weights_dtype: str = "fp32",
) -> Path:
    """Write a checkpoint atomically. ``extra`` may hold plain training state.

    ``weights_dtype`` "fp16" stores the (floating-point) weights in half precision, "int8" their
    kernels and matrices in 8 bits (:func:`stored_weights`).
    """
    config.validate()
    payload: dict[str, Any] = {"format": FORMAT, "config": config.to_json(), **stored_weights(weights, weights_dtype)}
    if extra:
        payload.update(extra)
    return atomic_torch_save(payload, path)


def initial_weights(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Untrained weights of ``config``'s network (deterministic for a seed).

    Layers that training starts from zero get PyTorch's default random initialisation
    here, so the untrained network's output depends on its input and noise, as a
    trained one's does; this keeps plumbing tests meaningful.
    """
    torch.manual_seed(seed)
    network = OutpaintUNet(config.network, config.diffusion)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv3d) and not module.weight.any():
            module.reset_parameters()
    return network.state_dict()


def initial_checkpoint(path: str | os.PathLike, preset: str, seed: int = 0, modality: str = "t1") -> Path:
    """An untrained checkpoint of a preset (deterministic for a seed; see :func:`initial_weights`)."""
    config = ModelConfig.from_preset(preset, modality=modality)
    return save_checkpoint(path, config, initial_weights(config, seed))


def with_training(config: ModelConfig, **changes: Any) -> ModelConfig:
    return replace(config, training=replace(config.training, **changes))
