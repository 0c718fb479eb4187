"""upsamplelib: feature upsampling operators as Numba kernels.

``import upsamplelib as ul`` first decides where Numba-CUDA kernels run (a
GPU, or Numba's CUDA simulator when there is none) and says so in one line;
that is why ``backend`` is imported before anything that imports numba.
"""

from . import backend  # noqa: I001  (must come first: it configures numba)
from .backend import CUDA_TARGET, SIMULATOR
from .ops.carafe import CARAFE, carafe
from .ops.fade import FADE, semi_shift_conv
from .ops.interpolate import interpolate
from .ops.sapa import SAPA, sapa_similarity

__all__ = [
    "interpolate",
    "carafe",
    "CARAFE",
    "sapa_similarity",
    "SAPA",
    "semi_shift_conv",
    "FADE",
    "backend",
    "CUDA_TARGET",
    "SIMULATOR",
]
__version__ = "0.1.0"
