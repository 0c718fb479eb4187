"""Input checks shared by every operator.

Each raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind,
wrong value) naming the operator and the offending shape, dtype or device,
before any kernel is launched.
"""

from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: dtypes the kernels compute in; half types are computed in float32.
KERNEL_DTYPES = (torch.float32, torch.float64)


def shape_str(tensor: torch.Tensor) -> str:
    return str(tuple(int(d) for d in tensor.shape))


def check_float_tensor(tensor, name: str, op: str) -> None:
    """A dense floating-point torch tensor (float16, bfloat16, float32 or float64)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided:
        raise TypeError(f"{op}: {name} is a {tensor.layout} tensor; the kernels take dense tensors: "
                        f"convert it with {name}.to_dense()")
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating-point tensor (float16, bfloat16, "
            f"float32 or float64), got {tensor.dtype}"
        )


def check_feature_map(tensor, name: str, op: str) -> None:
    """A non-empty 4-D floating-point (N, C, H, W) dense torch tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout == torch.strided and tensor.dim() != 4:
        raise ValueError(
            f"{op}: {name} must be 4-D (N, C, H, W), got shape {shape_str(tensor)}"
        )
    check_float_tensor(tensor, name, op)
    if tensor.numel() == 0:
        raise ValueError(f"{op}: {name} is empty, shape {shape_str(tensor)}")


def check_positive_int(value, name: str, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    return int(value)


def check_odd_kernel_size(value, name: str, op: str) -> int:
    value = check_positive_int(value, name, op)
    if value % 2 == 0:
        raise ValueError(f"{op}: {name} must be odd (the window is centred), got {value}")
    return value


def check_same_batch(first, first_name: str, second, second_name: str, op: str) -> None:
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"{op}: batch sizes differ: {first_name} {shape_str(first)}, {second_name} {shape_str(second)}")


def check_upsampled_size(high, high_name: str, low, low_name: str, scale: int, op: str) -> None:
    """``high`` must be exactly ``scale`` x the spatial size of ``low``: any
    other size is an error, not a silent crop."""
    expected = (scale * low.shape[2], scale * low.shape[3])
    if (high.shape[2], high.shape[3]) != expected:
        raise ValueError(
            f"{op}: {high_name} must be exactly scale x the size of {low_name}: expected spatial size "
            f"({expected[0]}, {expected[1]}) for {low_name} {shape_str(low)} and scale={scale}, "
            f"got {high_name} {shape_str(high)}"
        )


def check_same_device(first, first_name: str, second, second_name: str, op: str) -> None:
    if first.device != second.device:
        raise ValueError(f"{op}: {first_name} is on {first.device} but {second_name} on {second.device}")


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in for inputs of ``dtype``."""
    return dtype if dtype in KERNEL_DTYPES else torch.float32
