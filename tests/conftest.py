import os

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import upsamplelib  # noqa: E402,F401  (chooses the CUDA target before numba loads)

#: The Numba backends, and every backend.
KERNEL_BACKENDS = ["cpu", "cuda"]
ALL_BACKENDS = ["cpu", "cuda", "torch"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def on(backend, function):
    """``function`` run on ``backend``: tensor arguments move to the device
    that backend computes on (a GPU for "cuda" outside the simulator) and
    the result comes back to the CPU. Both moves are differentiable, so
    gradients reach the caller's CPU tensors."""
    from upsamplelib import backend as machinery

    device = "cuda" if backend == "cuda" and not machinery.SIMULATOR else "cpu"

    def run(*args, **kwargs):
        args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
        result = function(*args, backend=backend, **kwargs)
        return result.cpu()

    return run
