"""Writing a result to files: each sample with its lesion mask, the mean, the std map and the settings."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from .nodes import writeVolume

if TYPE_CHECKING:
    from .results import PowdrOutpaintResult

__all__ = ["exportResult", "safeFileName"]


def safeFileName(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name or "").strip("._")
    return name or "volume"


def exportResult(result: PowdrOutpaintResult, folder: str, baseName: str | None = None) -> list[str]:
    """Write every sample with its lesion mask, the mean and the std map to ``folder`` (NIfTI).

    Names (``<base>`` is the input volume's name, made file-system safe)::

        <base>_outpaint_s00.nii.gz, <base>_outpaint_s00_lesion.nii.gz, ...
        <base>_outpaint_mean.nii.gz, <base>_outpaint_std.nii.gz, <base>_outpaint_lesion.nii.gz
        <base>_outpaint.json  (run settings and model card)

    For a model of several sequences, these files for every sequence, ``<base>`` being the
    name of that sequence's results (``CASE_t2``; with ``baseName`` given, ``baseName_t2``).
    Existing files with these names are replaced. Returns the paths written.
    """
    if not folder:
        raise ValueError("Choose a folder to export to.")
    os.makedirs(folder, exist_ok=True)
    several = len(result.sequenceResults) > 1
    written: list[str] = []
    for own in result.sequenceResults:
        if not several:
            base = safeFileName(baseName or result.inputVolume.GetName())
        elif baseName:
            base = safeFileName(f"{baseName}_{own.sequenceName}")
        else:
            base = safeFileName(own.baseName or f"{own.inputVolume.GetName()}_{own.sequenceName}")
        _exportOne(own, folder, base, written, several)
    return written


def _exportOne(result: PowdrOutpaintResult, folder: str, base: str, written: list[str], several: bool) -> None:
    """One sequence's files (see :func:`exportResult`), appended to ``written``."""
    own: list[str] = []

    def write(node, name):
        path = os.path.join(folder, name)
        writeVolume(node, path, compress=True)
        own.append(path)

    for index, node in enumerate(result.sampleNodes):
        write(node, f"{base}_outpaint_s{index:02d}.nii.gz")
        write(result.lesionNode, f"{base}_outpaint_s{index:02d}_lesion.nii.gz")
    write(result.meanNode, f"{base}_outpaint_mean.nii.gz")
    write(result.stdNode, f"{base}_outpaint_std.nii.gz")
    write(result.lesionNode, f"{base}_outpaint_lesion.nii.gz")
    metadata = dict(result.metadata)
    metadata.pop("outputs", None)
    metadata["exported_files"] = [os.path.basename(path) for path in own]
    metadata["input_volume"] = result.inputVolume.GetName()
    if several:
        metadata["sequence"] = result.sequenceName
    metadataPath = os.path.join(folder, f"{base}_outpaint.json")
    with open(metadataPath, "w", encoding="utf-8") as stream:
        json.dump(metadata, stream, indent=2, default=str)
    own.append(metadataPath)
    written.extend(own)
