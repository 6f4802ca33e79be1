"""The model card of a checkpoint, read in plain Python: no torch, no subprocess, milliseconds.

A checkpoint is a ``torch.save`` zip archive whose ``data.pkl`` holds a dict with
``"format"``, ``"config"`` (JSON text) and ``"weights"`` (tensors). Only that small pickle is
read, with an unpickler that builds nothing but plain containers and placeholders for the
tensors (their shapes): the tensor data is never read and no code in the file can run. This
is what lets the panel show the card at once, also before PyTorch is installed. The worker
validates the whole file again when it samples.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
import re
import zipfile
from typing import Any, Mapping

from .progress import PowdrOutpaintError

__all__ = ["readModelCard", "formatModelCard", "sequencesOfCard", "sequenceLabel", "joinLabels"]

CHECKPOINT_FORMAT = "powdr-outpaint-checkpoint"
#: The engine's rule for a sequence name (powdr_outpaint.model.checkpoint.SEQUENCE_NAME)
SEQUENCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


class _TensorShape:
    """Stands for a tensor: only its shape is kept."""

    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = tuple(int(size) for size in shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Storage:
    __slots__ = ()


def _rebuildTensor(storage, storageOffset, size, stride, *unused):
    return _TensorShape(size)


def _rebuildParameter(data, requiresGrad, backwardHooks, *unused):
    return data


class _CardUnpickler(pickle.Unpickler):
    """Builds only what a checkpoint legitimately holds; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuildTensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuildParameter
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements): the data stays in the archive
        return _Storage()


def _readPayload(path: str) -> dict:
    name = os.path.basename(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [entry for entry in archive.namelist() if entry.endswith("/data.pkl") or entry == "data.pkl"]
            if len(pickles) != 1:
                raise PowdrOutpaintError(f"The checkpoint could not be read: {name} is not a PyTorch checkpoint.")
            with archive.open(pickles[0]) as stream:
                return _CardUnpickler(stream).load()
    except PowdrOutpaintError:
        raise
    except zipfile.BadZipFile:
        raise PowdrOutpaintError(
            f"The checkpoint could not be read: {name} is damaged or not a PyTorch checkpoint.") from None
    except pickle.UnpicklingError as error:
        if "is not allowed" in str(error):
            raise PowdrOutpaintError(
                f"The checkpoint could not be read: {name} contains objects other than plain weights "
                "(possibly code), so it was refused without running it.") from None
        raise PowdrOutpaintError(f"The checkpoint could not be read: {name} is damaged.") from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise PowdrOutpaintError(f"The checkpoint could not be read: {name} is damaged ({error}).") from None


def _require(condition: bool, name: str, what: str) -> None:
    if not condition:
        raise PowdrOutpaintError(f"The checkpoint could not be read: {name} has an invalid configuration ({what}).")


def readModelCard(checkpointPath: str) -> dict:
    """The card of a checkpoint: preset, modality, sequences, grid, training, network and parameter count.

    Same keys as the engine's ``powdr-outpaint info --json``. Raises
    :class:`PowdrOutpaintError` with one sentence for a missing, damaged or foreign file.
    """
    checkpointPath = os.fspath(checkpointPath) if checkpointPath else ""
    if not checkpointPath or not os.path.isfile(checkpointPath):
        raise PowdrOutpaintError(f"The checkpoint file {checkpointPath or '(none)'} does not exist.")
    name = os.path.basename(checkpointPath)
    payload = _readPayload(checkpointPath)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise PowdrOutpaintError(f"The checkpoint could not be read: {name} is a PyTorch file "
                                 "but not a PowdrOutpaint checkpoint.")
    card = _stageCard(payload.get("config"), payload.get("weights"), name)
    refiner = payload.get("refiner")
    if refiner is not None:
        _require(isinstance(refiner, dict), name, "refine stage")
        card["refine"] = _stageCard(refiner.get("config"), refiner.get("weights"), name)
    detailer = payload.get("detailer")
    if detailer is not None:
        _require(isinstance(detailer, dict), name, "detail stage")
        card["detail"] = _stageCard(detailer.get("config"), detailer.get("weights"), name)
    expert = payload.get("expert")
    if expert is not None:
        _require(isinstance(expert, dict), name, "expert for the last steps")
        card["expert"] = _stageCard(expert.get("config"), expert.get("weights"), name)
    guide = payload.get("guide")
    if guide is not None:
        _require(isinstance(guide, dict), name, "guide")
        weight = guide.get("weight")
        _require(isinstance(weight, (int, float)) and not isinstance(weight, bool), name, "guidance weight")
        card["guide"] = _stageCard(guide.get("config"), guide.get("weights"), name)
        card["guide"]["weight"] = float(weight)
        fromTimestep = guide.get("from_timestep", 0)
        _require(isinstance(fromTimestep, int) and not isinstance(fromTimestep, bool) and fromTimestep >= 0,
                 name, "guidance start")
        card["guide"]["from_timestep"] = fromTimestep
        bands = guide.get("bands", "all")
        _require(bands in ("all", "detail"), name, "guided subbands")
        card["guide"]["bands"] = bands
    return card


def _stageCard(configText, weights, name: str) -> dict:
    """The card of one stage from its JSON configuration and its weights' shapes."""
    try:
        config = json.loads(configText or "")
    except (TypeError, ValueError):
        config = None
    _require(isinstance(config, dict), name, "no JSON configuration")
    grid = config.get("grid") or {}
    network = config.get("network") or {}
    training = config.get("training") or {}
    diffusion = config.get("diffusion") or {}
    normalisation = config.get("normalisation") or {}
    _require(isinstance(config.get("preset"), str), name, "preset")
    _require(isinstance(grid, dict) and len(grid.get("shape") or ()) == 3 and len(grid.get("spacing") or ()) == 3,
             name, "grid")
    _require(all(isinstance(value, (int, float)) and not isinstance(value, bool)
                 for value in list(grid["shape"]) + list(grid["spacing"])), name, "grid")
    _require(isinstance(network, dict) and isinstance(training, dict) and isinstance(diffusion, dict)
             and isinstance(normalisation, dict), name, "sections")
    detailScale = normalisation.get("detail_scale", 1.0)
    _require(isinstance(detailScale, (int, float)) and not isinstance(detailScale, bool), name, "detail scale")
    outline = config.get("outline", False)
    _require(isinstance(outline, bool), name, "outline")
    _require(isinstance(weights, dict) and bool(weights)
             and all(isinstance(value, _TensorShape) for value in weights.values()), name, "no weights")
    modality = str(config.get("modality", ""))
    parts = modality.split(",")
    _require(all(SEQUENCE_NAME.match(part) for part in parts) and len(set(parts)) == len(parts), name, "modality")
    return {
        "preset": config["preset"],
        "modality": modality,
        "sequences": parts,  # the sequences the model makes together, in channel order
        "grid": {"shape": [int(value) for value in grid["shape"]],
                 "spacing_mm": [float(value) for value in grid["spacing"]]},
        # An expert's limit only; 0 (every timestep) is left out, as older files have no such field.
        "training": {key: value for key, value in training.items() if key != "max_timestep" or value},
        "network": {
            "base_channels": network.get("base_channels"),
            "channel_mult": list(network.get("channel_mult") or []),
            "attention_levels": list(network.get("attention_levels") or []),
            "input_skip": list(network.get("input_skip") or []),
        },
        "timesteps": diffusion.get("timesteps"),
        "detail_scale": float(detailScale),
        "outline": outline,
        "parameters": sum(value.numel for value in weights.values()),
    }


_LABELS = {
    "t1": "T1", "t1ce": "T1ce", "t1c": "T1c", "t1gd": "T1Gd", "t2": "T2", "flair": "FLAIR",
    "t2flair": "T2-FLAIR", "t2-flair": "T2-FLAIR", "pd": "PD", "dwi": "DWI", "adc": "ADC", "swi": "SWI",
    "ct": "CT",
}


def sequencesOfCard(card: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The sequences a model card names, in channel order (``("t1",)`` for most models)."""
    if not card:
        return ()
    sequences = card.get("sequences")
    if isinstance(sequences, (list, tuple)) and sequences:
        return tuple(str(name) for name in sequences)
    modality = str(card.get("modality") or "")
    return tuple(name for name in modality.split(",") if name)


def sequenceLabel(sequence: str) -> str:
    """How the panel writes a sequence: ``t1ce`` -> ``T1ce``, ``flair`` -> ``FLAIR``."""
    known = _LABELS.get(sequence.lower())
    if known:
        return known
    return sequence.upper() if len(sequence) <= 4 else sequence


def joinLabels(sequences) -> str:
    """``T1, T2 and FLAIR``."""
    labels = [sequenceLabel(name) for name in sequences]
    if len(labels) <= 1:
        return "".join(labels)
    return ", ".join(labels[:-1]) + " and " + labels[-1]


def formatModelCard(card: dict) -> str:
    """The model card as a few lines of plain text for the module panel."""
    lines = []
    preset = card.get("preset", "?")
    sequences = sequencesOfCard(card)
    if len(sequences) > 1:
        # A multi-sequence model: the panel asks for one volume per sequence, in this order
        lines.append(f"Preset: {preset}    Sequences: {', '.join(sequenceLabel(name) for name in sequences)}")
        lines.append(f"Takes one volume per sequence and makes all {len(sequences)} together.")
    else:
        modality = str(card.get("modality", "?"))
        lines.append(f"Preset: {preset}    Modality: {modality.upper()}")
    grid = card.get("grid") or {}
    shape = grid.get("shape")
    spacing = grid.get("spacing_mm", grid.get("spacing"))
    if shape:
        gridText = " x ".join(str(value) for value in shape) + " voxels"
        if spacing:
            values = sorted({round(float(value), 2) for value in spacing})
            gridText += " at " + (f"{values[0]:g} mm" if len(values) == 1 else
                                  " x ".join(f"{float(value):g}" for value in spacing) + " mm")
        lines.append(f"Grid: {gridText}")
    training = card.get("training") or {}
    strategy = training.get("strategy")
    if strategy:
        trainingText = str(strategy)
        iterations = training.get("iterations")
        if iterations:
            trainingText += f", {iterations} iterations"
        lines.append(f"Training: {trainingText}")
    parameters = card.get("parameters")
    refine = card.get("refine")
    if isinstance(refine, dict):
        refineGrid = refine.get("grid") or {}
        spacingText = ", ".join(sorted({f"{float(v):g}" for v in refineGrid.get("spacing_mm") or []}))
        iterations = (refine.get("training") or {}).get("iterations")
        lines.append(f"Refine stage: {spacingText} mm grid" + (f", {iterations} iterations" if iterations else ""))
        if isinstance(parameters, (int, float)) and isinstance(refine.get("parameters"), (int, float)):
            parameters = parameters + refine["parameters"]
    if card.get("outline"):
        lines.append("Brain outline: the input's (the new anatomy fills it)")
    detail = card.get("detail")
    if isinstance(detail, dict):
        iterations = (detail.get("training") or {}).get("iterations")
        detailSpacing = (detail.get("grid") or {}).get("spacing_mm") or []
        finer = bool(spacing) and bool(detailSpacing) and float(detailSpacing[0]) < float(spacing[0]) - 1e-6
        lines.append((f"Detail stage: draws {float(detailSpacing[0]):g} mm detail on the first stage" if finer
                      else "Detail stage: redraws the first stage's detail")
                     + (f", {iterations} iterations" if iterations else ""))
        if isinstance(parameters, (int, float)) and isinstance(detail.get("parameters"), (int, float)):
            parameters = parameters + detail["parameters"]
    expert = card.get("expert")
    if isinstance(expert, dict):
        expertTraining = expert.get("training") or {}
        below, iterations = expertTraining.get("max_timestep"), expertTraining.get("iterations")
        lines.append(f"Last-steps expert: timesteps below {below}" + (f", {iterations} iterations" if iterations else ""))
        if isinstance(parameters, (int, float)) and isinstance(expert.get("parameters"), (int, float)):
            parameters = parameters + expert["parameters"]
    guide = card.get("guide")
    if isinstance(guide, dict):
        iterations = (guide.get("training") or {}).get("iterations")
        fromTimestep = guide.get("from_timestep")
        lines.append(f"Guided by a weaker first stage (weight {guide.get('weight'):g}"
                     + (f", on timesteps from {fromTimestep} up" if fromTimestep else "")
                     + (", detail subbands only" if guide.get("bands") == "detail" else "") + ")"
                     + (f", {iterations} iterations" if iterations else ""))
        if isinstance(parameters, (int, float)) and isinstance(guide.get("parameters"), (int, float)):
            parameters = parameters + guide["parameters"]
    if isinstance(parameters, (int, float)):
        lines.append(f"Parameters: {parameters / 1e6:.2f} M")
    if strategy == "untrained":
        lines.append("Untrained weights: results are noise around the lesion (for testing only).")
    return "\n".join(lines)
