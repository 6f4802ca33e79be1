"""PowdrOutpaint module library (no Qt): one module per job.

* ``logic`` - :class:`PowdrOutpaintLogic`, what the panel and batch scripts call;
* ``engine``, ``process``, ``job``, ``progress`` - starting the engine's worker process and
  following it;
* ``inputs`` - one MRI volume per sequence of the model, checked and written with the lesion
  for the worker;
* ``results`` - bringing the worker's files into the scene;
* ``display`` - display and layout of the results;
* ``export`` - writing results to files;
* ``modelcard`` - reading a checkpoint's model card without torch (and the names of its sequences);
* ``dependencies`` - checking and installing the Python packages the engine needs.
"""

from .engine import defaultCheckpointPath
from .job import PowdrOutpaintJob
from .logic import DEFAULT_SAMPLER, DEFAULT_STEPS, DEVICES, PRESERVE_MODES, SAMPLERS, PowdrOutpaintLogic
from .process import WorkerProcess, killProcessTree
from .progress import OutpaintProgress, PowdrOutpaintError
from .results import PowdrOutpaintResult

__all__ = [
    "PowdrOutpaintLogic",
    "PowdrOutpaintResult",
    "PowdrOutpaintJob",
    "PowdrOutpaintError",
    "OutpaintProgress",
    "WorkerProcess",
    "killProcessTree",
    "SAMPLERS",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEVICES",
    "PRESERVE_MODES",
    "defaultCheckpointPath",
]
