"""Files that appear only when complete: write to a temporary name, then rename.

The temporary file lives in the destination's folder (so the rename is atomic on the
same file system) and gets the permissions an ordinary new file would have; on any
failure it is removed and the destination is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    # mkstemp makes private (0600) files; finished outputs get the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _default_mode()


@contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed over ``path``.

    ``suffix`` lets writers that infer the format from the name (``.nii.gz``, ``.png``) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_target(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, **options: Any) -> Path:
    """``json.dump(payload, indent=2, **options)`` into ``path``, atomically."""
    with atomic_target(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, **options)
    return Path(path)
