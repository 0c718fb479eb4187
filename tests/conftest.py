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
