"""Reading and writing 3-D volumes (NIfTI via nibabel, NRRD via pynrrd).

A :class:`Volume` holds the voxel array (X, Y, Z) in file order and the 4x4 affine
mapping voxel indices to RAS+ world coordinates in mm, so geometry from both
formats can be compared and written back unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import PowdrError
from .atomic import atomic_target

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])





@dataclass
class Volume:
    """Voxel data (X, Y, Z) and voxel-to-RAS affine (4, 4), with the header it came from."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (3,)."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def stem_of(path: str | os.PathLike) -> str:
    """The file name without its image extension (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES + NRRD_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _nrrd_affine(header: dict) -> np.ndarray:
    directions = np.asarray(header.get("space directions"), dtype=float)
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise PowdrError("the NRRD file has no usable 3-D 'space directions'")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    affine[:3, 3] = origin
    if space in ("left-posterior-superior", "lps"):
        affine[:3] = _LPS_TO_RAS @ affine[:3]
    elif space not in ("right-anterior-superior", "ras"):
        raise PowdrError(f"the NRRD space {space!r} is not supported (use RAS or LPS)")
    return affine


def load_volume(path: str | os.PathLike, what: str = "image") -> Volume:
    """Read a NIfTI or NRRD file; ``what`` names the file in error messages."""
    path = Path(path)
    if not path.is_file():
        raise PowdrError(f"the {what} file {path} does not exist")
    lower = path.name.lower()
    try:
        if lower.endswith(NRRD_SUFFIXES):
            import nrrd

            data, header = nrrd.read(str(path))
            affine = _nrrd_affine(header)
            nifti_header = None
        elif lower.endswith(NIFTI_SUFFIXES):
            image = nib.load(str(path))
            data = np.asanyarray(image.dataobj)
            affine = image.affine.astype(float)
            nifti_header = image.header.copy()
        else:
            raise PowdrError(f"the {what} {path.name} is neither NIfTI (.nii, .nii.gz) nor NRRD (.nrrd)")
    except PowdrError:
        raise
    except Exception as error:  # noqa: BLE001 - any reader failure means an unreadable file
        raise PowdrError(f"the {what} {path.name} could not be read ({error})") from None
    data = np.asarray(data)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PowdrError(
            f"the {what} {path.name} has shape {data.shape}; a single 3-D volume is needed "
            "(split multi-channel or time series images first)"
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise PowdrError(f"the {what} {path.name} has an invalid orientation matrix")
    return Volume(data=data, affine=affine, header=nifti_header, path=path)


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Write ``data`` with ``affine`` atomically: a temporary file in the same folder, then rename.

    The header of the input (when it was NIfTI) is reused so units and intent carry over;
    its data type and scaling are replaced by those of ``data``.
    """
    path = Path(path)
    new_header = header.copy() if header is not None else None
    image = nib.Nifti1Image(data, affine, header=new_header)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_target(path, suffix=f".part{suffix}") as temporary:
        nib.save(image, str(temporary))
    return path
