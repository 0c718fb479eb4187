"""Checkers of lesson 00 (the CUDA execution model)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .engine import CheckFailed, compare, launch_checked, passed, random_sizes

__all__ = [
    "check_scale_kernel",
    "check_launch_config",
    "check_grid_stride_kernel",
    "check_flip_kernel",
    "check_to_kernel_array",
]

BOUNDS_HINT = (
    "the last block has threads past the end of the array: guard the body with "
    "`if i < out.size:`"
)


def _run_elementwise(kernel, launch, x, factor, what):
    out = np.zeros_like(x)
    launch_checked(kernel, launch, x, out, np.float32(factor), what=what, bounds_hint=BOUNDS_HINT)
    return out


def check_scale_kernel(kernel, threads_per_block: int = 128):
    """``kernel(x, out, factor)``: out[i] = x[i] * factor, one thread per element."""
    what = "scale_kernel"
    sizes = random_sizes(seed=0, count=6, low=1, high=1500)
    rng = np.random.default_rng(0)
    for n in sizes:
        x = rng.standard_normal(n).astype(np.float32)
        blocks = math.ceil(n / threads_per_block)
        out = _run_elementwise(kernel, (blocks, threads_per_block), x, 2.5, what)
        compare(x * np.float32(2.5), out, what=what, case=f"n={n} with {blocks} blocks of {threads_per_block}",
                hint="out[i] = x[i] * factor for i = cuda.grid(1)")
    passed(what, len(sizes))


def check_launch_config(launch_config):
    """``launch_config(n, threads_per_block) -> (blocks, threads_per_block)``."""
    what = "launch_config"
    cases = [(1, 32), (32, 32), (33, 32), (1000, 128), (1024, 256), (1025, 256), (10**9 + 7, 512)]
    for n, threads in cases:
        got = launch_config(n, threads)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"{what}({n}, {threads}) returned {got!r}; expected a pair (blocks, threads_per_block)")
        blocks, per_block = got
        if per_block != threads:
            raise CheckFailed(f"{what}({n}, {threads}): threads_per_block should stay {threads}, got {per_block}")
        if blocks * threads < n:
            raise CheckFailed(
                f"{what}({n}, {threads}) = {got}: {blocks} blocks x {threads} threads cover only "
                f"{blocks * threads} of {n} elements.\nHint: round up, e.g. (n + threads - 1) // threads"
            )
        if (blocks - 1) * threads >= n:
            raise CheckFailed(
                f"{what}({n}, {threads}) = {got}: the last block would have no work; "
                f"{blocks - 1} blocks already cover {n} elements.\nHint: use the smallest block count"
            )
    passed(what, len(cases))


def check_grid_stride_kernel(kernel, blocks: int = 2, threads_per_block: int = 32):
    """``kernel(x, out, factor)`` launched on a fixed, small grid must still
    cover arrays larger than the grid (a grid-stride loop)."""
    what = "grid_stride_kernel"
    rng = np.random.default_rng(1)
    sizes = random_sizes(seed=1, count=5, low=1, high=700)
    for n in sizes:
        x = rng.standard_normal(n).astype(np.float32)
        out = _run_elementwise(kernel, (blocks, threads_per_block), x, -1.5, what)
        compare(x * np.float32(-1.5), out, what=what,
                case=f"n={n} with a fixed grid of {blocks} x {threads_per_block} threads",
                hint="start at cuda.grid(1) and step by cuda.gridsize(1) until n")
    passed(what, len(sizes))


def check_flip_kernel(kernel, block=(16, 8)):
    """``kernel(image, out)``: out[row, col] = image[row, width - 1 - col] on a
    2-D grid whose first coordinate is the column."""
    what = "flip_kernel"
    rng = np.random.default_rng(2)
    shapes = [(1, 1), (8, 16), (13, 29), (31, 7), (20, 45)]
    for height, width in shapes:
        image = rng.standard_normal((height, width)).astype(np.float32)
        out = np.zeros_like(image)
        grid = (math.ceil(width / block[0]), math.ceil(height / block[1]))
        launch_checked(kernel, (grid, block), image, out, what=what,
                       bounds_hint="guard with `if row < out.shape[0] and col < out.shape[1]:`")
        compare(image[:, ::-1], out, what=what, case=f"a {height}x{width} image, grid {grid} of {block}",
                hint="col, row = cuda.grid(2); the mirror of column col is width - 1 - col")
    passed(what, len(shapes))


def check_to_kernel_array(to_kernel_array):
    """``to_kernel_array(tensor)`` must share memory with the tensor."""
    what = "to_kernel_array"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        tensor = torch.zeros(3, 4, device=device)
        array = to_kernel_array(tensor)
        if tuple(array.shape) != (3, 4):
            raise CheckFailed(f"{what}: shape {tuple(array.shape)} for a (3, 4) {device} tensor")
        if device == "cpu":
            array[1, 2] = 7.0
        else:
            from numba import cuda

            cuda.to_device(np.full((3, 4), 7.0, np.float32), to=array)
        if float(tensor[1, 2]) != 7.0:
            raise CheckFailed(
                f"{what}: writing through the array did not change the {device} tensor, so it is a copy.\n"
                "Hint: tensor.numpy() on the CPU and cuda.as_cuda_array(tensor) on the GPU share memory"
            )
    passed(what, len(devices))
