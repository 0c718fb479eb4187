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


def check_feature_map(tensor, name: str, op: str, batched: bool = True) -> None:
    """A 4-D floating-point (N, C, H, W) dense torch tensor, empty only as
    an empty batch (N = 0, which PyTorch's layers take too) when ``batched``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout == torch.strided and tensor.dim() != 4:
        axes = "(N, C, H, W)" if batched else "(O, C // groups, k, k)"
        raise ValueError(f"{op}: {name} must be 4-D {axes}, got shape {shape_str(tensor)}")
    check_float_tensor(tensor, name, op)
    if tensor.numel() == 0 and not (batched and tensor.shape[0] == 0 and all(tensor.shape[1:])):
        raise ValueError(f"{op}: {name} is empty, shape {shape_str(tensor)}")


def check_positive_int(value, name: str, op: str) -> int:
    if isinstance(value, torch.Tensor) and torch.jit.is_tracing() and value.dim() == 0 and not (
            value.is_floating_point() or value.is_complex()):
        value = int(value)  # torch.jit.trace hands out a tensor's sizes as 0-d tensors
    elif isinstance(value, torch.SymInt):
        value = int(value)  # a symbolic size (make_fx, torch.export): the kernel is built for its value
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


def check_upsampled_size(high, high_name: str, low, low_name: str, scale: int, op: str,
                         scale_name: str = "scale") -> None:
    """``high`` must be exactly ``scale`` x the spatial size of ``low``: any
    other size is an error, not a silent crop."""
    expected = (scale * low.shape[2], scale * low.shape[3])
    if (high.shape[2], high.shape[3]) != expected:
        raise ValueError(
            f"{op}: {high_name} must be exactly {scale_name} x the size of {low_name}: expected spatial size "
            f"({expected[0]}, {expected[1]}) for {low_name} {shape_str(low)} and {scale_name}={scale}, "
            f"got {high_name} {shape_str(high)}"
        )


def check_same_device(first, first_name: str, second, second_name: str, op: str) -> None:
    if first.device != second.device:
        raise ValueError(f"{op}: {first_name} is on {first.device} but {second_name} on {second.device}")


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in for inputs of ``dtype``."""
    return dtype if dtype in KERNEL_DTYPES else torch.float32


def in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)``, which returns ``tensor`` itself when it has that
    dtype already, without the 1 us a call of ``to`` costs even then."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def check_batched_map(tensor, name: str, op: str) -> None:
    """A module's input map: ``check_feature_map``, with a plain word for
    an unbatched (C, H, W) map."""
    if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and tensor.dim() == 3:
        raise ValueError(f"{op}: {name} has shape {shape_str(tensor)}, an unbatched (C, H, W) map; the module "
                         f"takes batches (N, C, H, W): pass {name}.unsqueeze(0)")
    check_feature_map(tensor, name, op)


def check_module_input(tensor, name: str, channels: int, module, op: str) -> None:
    """A module's (already batched) input map: the channel count the module
    was built for, and the dtype of its parameters (unless autocast
    chooses the dtypes)."""
    if tensor.shape[1] != channels:
        raise ValueError(f"{op}: {name} has {tensor.shape[1]} channels (shape {shape_str(tensor)}), but the module "
                         f"was built for {channels}")
    parameter = next(module.parameters(), None)
    if parameter is not None and tensor.dtype != parameter.dtype and not torch.is_autocast_enabled(tensor.device.type):
        raise TypeError(f"{op}: {name} is {tensor.dtype} but the module's parameters are {parameter.dtype}; convert "
                        f"one of them (e.g. module.to({tensor.dtype}) or {name}.to({parameter.dtype}))")


def check_guide_pair(high, high_name: str, low, low_name: str, scale: int, op: str,
                     scale_name: str = "scale") -> None:
    """The two inputs of a guided upsampler, ``forward(high, low)``: the
    high-resolution guide first, exactly ``scale`` x the low-resolution map,
    same batch, dtype and device. Says so when they look swapped."""
    # At scale 1 both maps have one size, and neither order looks swapped.
    if scale > 1 and (low.shape[2], low.shape[3]) == (scale * high.shape[2], scale * high.shape[3]):
        raise ValueError(f"{op}: the arguments look swapped: {low_name} {shape_str(low)} is {scale} x the size of "
                         f"{high_name} {shape_str(high)}. forward({high_name}, {low_name}) takes the high-resolution "
                         f"{high_name} first and the low-resolution {low_name} second")
    check_same_batch(high, high_name, low, low_name, op)
    check_upsampled_size(high, high_name, low, low_name, scale, op, scale_name)
    if high.dtype != low.dtype:
        raise TypeError(f"{op}: {high_name} is {high.dtype} but {low_name} is {low.dtype}; give both the same dtype")
    check_same_device(high, high_name, low, low_name, op)


def check_bool(value, name: str, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {value!r}")
    return value
