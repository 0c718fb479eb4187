"""Checkers of lesson 00 (the CUDA execution model)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..backend import SIMULATOR
from .engine import CheckFailed, compare, passed, random_sizes
from .rules import KernelCheck

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


def _run_elementwise(rules, launch, x, factor, count=False, case=""):
    # nan, not 0: a kernel that adds into out (out[i] += ...) must not pass on a zeroed array
    out = np.full_like(x, np.nan)
    rules.launch(launch, x, out, np.float32(factor), bounds_hint=BOUNDS_HINT, count=count, case=case)
    return out


def _adds_into_out(rules, launch, inputs, expected, bounds_hint, after=()):
    """Whether the kernel, wrong on a nan-filled out, is right on a zeroed
    one: it adds into out instead of assigning. ``inputs`` come before out
    among the kernel's arguments, ``after`` after it."""
    out = np.zeros_like(expected)
    rules.launch(launch, *inputs, out, *after, bounds_hint=bounds_hint)
    return np.allclose(out, expected, rtol=1e-5, atol=1e-6)


_ADDS_INTO_OUT = ("the checker fills out with nan before the launch, as memory from np.empty or torch.empty may "
                  "hold anything; on a zeroed out your kernel is right, so it adds into out (`+=`) instead of "
                  "setting it. Assign: {assignment}")


def _never_written(out, guard):
    """A hint naming the first element a kernel left unwritten (still nan), or None."""
    missing = np.argwhere(np.isnan(out))
    if not len(missing):
        return None
    index = tuple(int(i) for i in missing[0])
    count = f"{len(missing)} elements of out, the first out{list(index)}, were" if len(missing) > 1 else \
        f"out{list(index)} was"
    return (f"{count} never written (still the checker's nan): every element needs a thread that writes it, and "
            f"the guard must let all of them through: {guard}")


def _output_hint(rules, launch, inputs, after, expected, out, hint, assignment, other_launch_note, guard,
                 bounds_hint=BOUNDS_HINT):
    """The hint for a wrong ``out``: adding into out (``assignment`` is the right one), a launch size written
    into the kernel (``other_launch_note``, on the cases with the second configuration), unwritten elements
    (``guard`` is the right guard), or ``hint``. ``other_launch_note`` and ``guard`` may be None."""
    if np.allclose(out, expected):
        return hint
    if _adds_into_out(rules, launch, inputs, expected, bounds_hint, after):
        return _ADDS_INTO_OUT.format(assignment=assignment)
    if other_launch_note:
        return f"{hint}; {other_launch_note}"
    return (guard and _never_written(out, guard)) or hint


def _elementwise_hint(rules, launch, x, factor, out, hint, other_launch_note, guard):
    """``_output_hint`` for out[i] = x[i] * factor."""
    return _output_hint(rules, launch, (x,), (np.float32(factor),), x * np.float32(factor), out, hint,
                        "out[i] = x[i] * factor", other_launch_note, guard)


def _alternative(launch, index):
    """Every other case a second launch configuration (a kernel that writes in a block size or grid size
    of its own is then wrong)."""
    return launch[1] if index % 2 else launch[0]


def check_scale_kernel(kernel, threads_per_block: int = 128):
    """``kernel(x, out, factor)``: out[i] = x[i] * factor, one thread per element."""
    what = "scale_kernel"
    rules = KernelCheck(kernel, what, output=1)
    sizes = random_sizes(seed=0, count=6, low=1, high=1500)
    rng = np.random.default_rng(0)
    for index, n in enumerate(sizes):
        x = rng.standard_normal(n).astype(np.float32)
        per_block = _alternative((threads_per_block, 96 if threads_per_block != 96 else 64), index)
        blocks = math.ceil(n / per_block)
        case = f"n={n} with {blocks} blocks of {per_block}"
        out = _run_elementwise(rules, (blocks, per_block), x, 2.5, count=index == 2, case=case)
        hint = _elementwise_hint(
            rules, (blocks, per_block), x, 2.5, out, "out[i] = x[i] * factor for i = cuda.grid(1)",
            index % 2 and f"this case has blocks of {per_block} threads: cuda.grid(1) is blockIdx.x * blockDim.x + "
                          "threadIdx.x, for any block size", "`if i < out.size:`")
        compare(x * np.float32(2.5), out, what=what, case=case, hint=hint)
    rules.passed(len(sizes))


def check_launch_config(launch_config):
    """``launch_config(n, threads_per_block) -> (blocks, threads_per_block)``."""
    what = "launch_config"
    cases = [(1, 32), (32, 32), (33, 32), (1000, 128), (1024, 256), (1025, 256), (10**9 + 7, 512)]
    for n, threads in cases:
        got = launch_config(n, threads)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"{what}({n}, {threads}) returned {got!r}; expected a pair (blocks, threads_per_block)")
        blocks, per_block = got
        if isinstance(blocks, bool) or not isinstance(blocks, (int, np.integer)):
            raise CheckFailed(f"{what}({n}, {threads}) = {got!r}: the block count is a {type(blocks).__name__}, "
                              "and a launch takes whole numbers only (`kernel[3.0, 32]` fails).\nHint: integer "
                              "division, (n + threads - 1) // threads, or math.ceil(n / threads), which returns an "
                              "int (np.ceil and / return floats)")
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
    rules = KernelCheck(kernel, what, output=1)
    rng = np.random.default_rng(1)
    sizes = random_sizes(seed=1, count=5, low=1, high=700)
    for index, n in enumerate(sizes):
        x = rng.standard_normal(n).astype(np.float32)
        grid = _alternative(((blocks, threads_per_block), (blocks + 1, 2 * threads_per_block)), index)
        case = f"n={n} with a fixed grid of {grid[0]} x {grid[1]} threads"
        out = _run_elementwise(rules, grid, x, -1.5, count=index == 1, case=case)
        hint = _elementwise_hint(
            rules, grid, x, -1.5, out, "start at cuda.grid(1) and step by cuda.gridsize(1) until n",
            index % 2 and f"this case's grid is {grid[0]} x {grid[1]} threads: cuda.gridsize(1) is the number of "
                          "threads of the grid it runs on, whatever that is", "the loop runs while i < out.size")
        compare(x * np.float32(-1.5), out, what=what, case=case, hint=hint)
    rules.passed(len(sizes))


_FLIP_GUARD_HINT = "guard with `if row < out.shape[0] and col < out.shape[1]:`"


def check_flip_kernel(kernel, block=(16, 8)):
    """``kernel(image, out)``: out[row, col] = image[row, width - 1 - col] on a
    2-D grid whose first coordinate is the column."""
    what = "flip_kernel"
    rules = KernelCheck(kernel, what, output=1)
    rng = np.random.default_rng(2)
    block_shape = tuple(block)
    shapes = [(1, 1), (8, 16), (13, 29), (31, 7), (20, 45)]
    for index, (height, width) in enumerate(shapes):
        image = rng.standard_normal((height, width)).astype(np.float32)
        out = np.full_like(image, np.nan)  # a kernel that adds into out must not pass on zeros
        block = _alternative((block_shape, block_shape[::-1]), index)
        grid = (math.ceil(width / block[0]), math.ceil(height / block[1]))
        case = f"a {height}x{width} image, grid {grid} of {block}"
        rules.launch((grid, block), image, out, bounds_hint=_FLIP_GUARD_HINT,
                     count=index == 2, case=case,
                     index_hint="the mirror of column col is width - 1 - col (the last valid column is width - 1)")
        mistake = next((explanation for result, explanation in _flip_mistakes(image, grid, block)
                        if np.array_equal(out, result, equal_nan=True)), None)
        expected = image[:, ::-1]
        # A named mistake keeps its own hint, unless the kernel also adds into out.
        hint = _output_hint(rules, (grid, block), (image,), (), expected, out,
                            mistake or "col, row = cuda.grid(2); the mirror of column col is width - 1 - col",
                            "out[row, col] = image[row, width - 1 - col]",
                            None if mistake or not index % 2 else
                            f"this case has blocks of {block}: cuda.grid(2) is (blockIdx.x * blockDim.x + "
                            "threadIdx.x, blockIdx.y * blockDim.y + threadIdx.y), for any block shape",
                            None if mistake else "`if row < out.shape[0] and col < out.shape[1]:`",
                            bounds_hint=_FLIP_GUARD_HINT)
        compare(expected, out, what=what, case=case, hint=hint)
    rules.passed(len(shapes))


def _flip_mistakes(image, grid, block):
    """(what a wrong flip kernel writes into the nan-filled out, its mistake)."""
    height, width = image.shape
    # row, col = cuda.grid(2): row runs over the x threads, col over the y threads
    swapped = np.full_like(image, np.nan)
    rows, cols = min(height, grid[0] * block[0]), min(width, grid[1] * block[1])
    swapped[:rows, :cols] = image[:rows, ::-1][:, :cols]
    return [
        (swapped, "cuda.grid(2) returns (x, y), and x, the fastest coordinate, is the column: "
                  "`col, row = cuda.grid(2)`, not `row, col = ...`"),
        (image[::-1, :], "the rows are mirrored (upside down): mirror the columns instead, "
                         "out[row, col] = image[row, width - 1 - col]"),
        (image, "out is a copy of image: read the mirrored column, image[row, width - 1 - col]"),
    ]


#: Tensor methods that bring a tensor's values to host memory (a copy, for a CUDA tensor).
_HOST_COPIES = {"cpu": "tensor.cpu()", "to": "tensor.to(...)", "numpy": "tensor.numpy()",
                "__array__": "np.asarray(tensor)", "tolist": "tensor.tolist()", "item": "tensor.item()"}


class _PretendCudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU, and records every call
    that would copy a real CUDA tensor to host memory. So, with no GPU, the
    checker still sees what ``to_kernel_array`` does with a CUDA tensor."""

    host_copies: list = []

    @property
    def is_cuda(self):
        return True

    @property
    def device(self):
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _HOST_COPIES:
            cls.host_copies.append(_HOST_COPIES[name])
        return super().__torch_function__(func, types, args, kwargs or {})


def _shares_memory_when_on_a_gpu(to_kernel_array, what, requires_grad=False):
    """In the simulator: hand ``to_kernel_array`` a pretend CUDA tensor
    (``cuda.as_cuda_array`` gives a view of it, and refuses one that requires
    grad, as PyTorch's ``__cuda_array_interface__`` does) and refuse host
    round trips."""
    from numba import cuda

    tensor = torch.zeros(3, 4, requires_grad=requires_grad).as_subclass(_PretendCudaTensor)
    _PretendCudaTensor.host_copies = []
    calls = []

    def as_cuda_array(obj, sync=True):
        calls.append(obj)
        if obj.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad. Use "
                               "var.detach().__cuda_array_interface__ instead.")
        return torch.Tensor.numpy(obj.as_subclass(torch.Tensor))

    missing = not hasattr(cuda, "as_cuda_array")
    previous = getattr(cuda, "as_cuda_array", None)
    cuda.as_cuda_array = as_cuda_array
    try:
        array = to_kernel_array(tensor)
    except RuntimeError as error:
        if not requires_grad:
            raise
        raise CheckFailed(f"{what}: failed for a CUDA tensor that requires grad: {str(error).splitlines()[0]}.\n"
                          "Hint: tensor.detach() first, on the GPU path too: cuda.as_cuda_array(tensor.detach())"
                          ) from None
    finally:
        if missing:
            del cuda.as_cuda_array
        else:
            cuda.as_cuda_array = previous
    copies = sorted(set(_PretendCudaTensor.host_copies))
    if copies:
        raise CheckFailed(
            f"{what}: for a CUDA tensor it calls {' and '.join(copies)}, which brings the values to host memory "
            "(or fails: a CUDA tensor has no .numpy()). A kernel would then work on a copy, and every call would "
            "cross the PCIe bus twice; the simulator hides it, since there every tensor is on the CPU.\n"
            "Hint: `if tensor.is_cuda: return cuda.as_cuda_array(tensor)`, which shares the GPU memory; "
            "tensor.numpy() only for CPU tensors")
    if not calls:
        raise CheckFailed(f"{what}: for a CUDA tensor it returned {type(array).__name__} without calling "
                          "cuda.as_cuda_array.\nHint: `if tensor.is_cuda: return cuda.as_cuda_array(tensor)`")
    array[1, 2] = 7.0
    if float(tensor.detach().as_subclass(torch.Tensor)[1, 2]) != 7.0:
        raise CheckFailed(f"{what}: for a CUDA tensor, writing through the array did not change the tensor, so "
                          "it is a copy.\nHint: cuda.as_cuda_array(tensor) shares the GPU memory")


def _write_seven_through(array, device):
    """7.0 into ``array[1, 2]`` (on a GPU into every element, in the array's own dtype: numba copies
    between equal dtypes only), the kernel array of a ``device`` tensor."""
    if device == "cpu":
        array[1, 2] = 7.0
    else:
        from numba import cuda

        cuda.to_device(np.full((3, 4), 7.0, np.dtype(array.dtype)), to=array)


def check_to_kernel_array(to_kernel_array):
    """``to_kernel_array(tensor)`` must share memory with the tensor; for a
    CUDA tensor with no host round trip (checked with a pretend one where
    there is no GPU)."""
    what = "to_kernel_array"
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    pretend = "cuda" not in devices and SIMULATOR
    if pretend:
        _shares_memory_when_on_a_gpu(to_kernel_array, what)
        _shares_memory_when_on_a_gpu(to_kernel_array, what, requires_grad=True)
    for device, dtype in [(device, dtype) for device in devices for dtype in (torch.float32, torch.float64)]:
        tensor = torch.zeros(3, 4, device=device, dtype=dtype)
        array = to_kernel_array(tensor)
        if tuple(array.shape) != (3, 4):
            raise CheckFailed(f"{what}: shape {tuple(array.shape)} for a (3, 4) {device} tensor")
        if np.dtype(array.dtype) != np.dtype(str(dtype).removeprefix("torch.")):
            raise CheckFailed(f"{what}: a {device} tensor of {dtype} became an array of {array.dtype}, a copy in "
                              "another type.\nHint: no .float() or .to(...): share the tensor's memory as it is")
        _write_seven_through(array, device)
        if float(tensor[1, 2]) != 7.0:
            raise CheckFailed(
                f"{what}: writing through the array did not change the {device} tensor of {dtype}, so it is a "
                "copy.\nHint: tensor.numpy() on the CPU and cuda.as_cuda_array(tensor) on the GPU share memory"
            )
    for device in devices:
        tracked = torch.zeros(3, 4, device=device, requires_grad=True)
        try:
            array = to_kernel_array(tracked)
        except RuntimeError as error:
            raise CheckFailed(f"{what}: failed for a {device} tensor that requires grad: "
                              f"{str(error).splitlines()[0]}.\nHint: tensor.detach() first (a view of the same "
                              "memory, outside autograd): tensor.detach().numpy() on the CPU, "
                              "cuda.as_cuda_array(tensor.detach()) on the GPU") from None
        _write_seven_through(array, device)
        if float(tracked.detach()[1, 2]) != 7.0:
            raise CheckFailed(f"{what}: for a tensor that requires grad, writing through the array did not change "
                              "the tensor, so it is a copy.\nHint: tensor.detach() shares the tensor's memory")
    passed(what, (2 if pretend else 0) + 3 * len(devices))
