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

    Existing files with these names are replaced. Returns the paths written.
    """
    if not folder:
        raise ValueError("Choose a folder to export to.")
    os.makedirs(folder, exist_ok=True)
    base = safeFileName(baseName or result.inputVolume.GetName())
    written = []

    def write(node, name):
        path = os.path.join(folder, name)
        writeVolume(node, path, compress=True)
        written.append(path)

    for index, node in enumerate(result.sampleNodes):
        write(node, f"{base}_outpaint_s{index:02d}.nii.gz")
        write(result.lesionNode, f"{base}_outpaint_s{index:02d}_lesion.nii.gz")
    write(result.meanNode, f"{base}_outpaint_mean.nii.gz")
    write(result.stdNode, f"{base}_outpaint_std.nii.gz")
    write(result.lesionNode, f"{base}_outpaint_lesion.nii.gz")
    metadata = dict(result.metadata)
    metadata.pop("outputs", None)
    metadata["exported_files"] = [os.path.basename(path) for path in written]
    metadata["input_volume"] = result.inputVolume.GetName()
    metadataPath = os.path.join(folder, f"{base}_outpaint.json")
    with open(metadataPath, "w", encoding="utf-8") as stream:
        json.dump(metadata, stream, indent=2, default=str)
    written.append(metadataPath)
    return written
