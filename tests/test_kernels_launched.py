"""The exercises whose host code is to run the student's kernels (02.5,
03.8, 04.6, 05.7) pass only when those kernels were launched: right values
from the library's op or from PyTorch's autograd are refused, with a message
that names the kernel.

The "student's kernels" here are the library's stand-ins (``HostKernel``),
bound at module level as a notebook binds its kernels: they launch like
kernels, so the check counts them like the student's own.
"""

from __future__ import annotations

import upsamplelib as ul  # noqa: I001  (first: it chooses the CUDA target before numba loads)
import pytest
import torch
import torch.nn.functional as F

from test_hints import hint_of
from upsamplelib import checkers
from upsamplelib.backend import launch_config
from upsamplelib.checkers import bilinear as plain_bilinear_checkers
from upsamplelib.checkers.fallbacks import LIBRARY_VERSIONS

carafe_group_kernel = LIBRARY_VERSIONS["03.4"]["carafe_group_kernel"]
carafe_grad_x_kernel = LIBRARY_VERSIONS["03.6"]["carafe_grad_x_kernel"]
carafe_grad_masks_kernel = LIBRARY_VERSIONS["03.7"]["carafe_grad_masks_kernel"]
bilinear_kernel = LIBRARY_VERSIONS["02.2"]["bilinear_kernel"]
bilinear_scatter_kernel = LIBRARY_VERSIONS["02.3"]["bilinear_scatter_kernel"]


def launch_forward(x, masks, kernel_size, scale, group):
    """A notebook's helper that launches the forward kernel."""
    n, c, h, w = x.shape
    out = x.new_empty((n, c, scale * h, scale * w))
    carafe_group_kernel[launch_config(out.numel(), 128)](x.numpy(), masks.numpy(), out.numpy(), kernel_size, scale,
                                                         group)
    return out


def carafe_function(forward="kernel", backward="kernels"):
    class CarafeFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, masks, kernel_size, scale, group):
            x, masks = x.detach().contiguous(), masks.detach().contiguous()
            ctx.save_for_backward(x, masks)
            ctx.config = (kernel_size, scale, group)
            if forward == "library":
                return ul.carafe(x, masks, kernel_size, scale, group, backend="cpu")
            return launch_forward(x, masks, kernel_size, scale, group)

        @staticmethod
        def backward(ctx, grad_out):
            x, masks = ctx.saved_tensors
            kernel_size, scale, group = ctx.config
            grad_out = grad_out.detach().contiguous()
            if backward == "autograd":
                with torch.enable_grad():
                    x, masks = x.requires_grad_(), masks.requires_grad_()
                    grads = torch.autograd.grad(ul.carafe(x, masks, kernel_size, scale, group, backend="cpu"),
                                                (x, masks), grad_out)
                return (*grads, None, None, None)
            grad_x, grad_masks = torch.empty_like(x), torch.empty_like(masks)
            carafe_grad_x_kernel[launch_config(grad_x.numel(), 128)](grad_out.numpy(), masks.numpy(), grad_x.numpy(),
                                                                     kernel_size, scale, group)
            carafe_grad_masks_kernel[launch_config(grad_masks.numel(), 128)](
                grad_out.numpy(), x.numpy(), grad_masks.numpy(), kernel_size, scale, group)
            return grad_x, grad_masks, None, None, None

    return CarafeFunction


def test_a_function_that_launches_the_kernels_passes(capsys):
    checkers.check_carafe_function(carafe_function())  # the forward launch is in a helper function
    assert capsys.readouterr().out.startswith("PASS CarafeFunction")


@pytest.mark.parametrize("forward, backward, kernel", [
    ("library", "kernels", "`carafe_group_kernel` or `carafe_tiled_kernel`"),
    ("kernel", "autograd", "`carafe_grad_x_kernel`"),
    ("library", "autograd", "`carafe_group_kernel` or `carafe_tiled_kernel`"),
])
def test_values_from_the_library_are_refused(forward, backward, kernel, capsys):
    message = hint_of(checkers.check_carafe_function, carafe_function(forward, backward))
    assert f"the values are right, but {kernel} was never launched" in message
    assert "exercise 03.8 is to run your kernels" in message
    assert "PASS" not in capsys.readouterr().out  # no PASS line before the failure


@torch.no_grad()
def decorated_launch_forward(x, masks, kernel_size, scale, group):
    """A helper whose decorator wraps it in a function of another module."""
    return launch_forward(x, masks, kernel_size, scale, group)


class CarafeBase(torch.autograd.Function):
    @staticmethod
    def launch(x, masks, kernel_size, scale, group):
        n, c, h, w = x.shape
        out = x.new_empty((n, c, scale * h, scale * w))
        carafe_group_kernel[launch_config(out.numel(), 128)](x.numpy(), masks.numpy(), out.numpy(), kernel_size,
                                                             scale, group)
        return out

    @staticmethod
    def forward(ctx, x, masks, kernel_size, scale, group):
        x, masks = x.detach().contiguous(), masks.detach().contiguous()
        ctx.save_for_backward(x, masks)
        ctx.config = (kernel_size, scale, group)
        return CarafeBase.launch(x, masks, kernel_size, scale, group)  # through the class's own name

    backward = carafe_function().backward


class InheritedCarafeFunction(CarafeBase):
    """Forward and backward are CarafeBase's."""


class DecoratedHelperCarafeFunction(carafe_function()):
    @staticmethod
    def forward(ctx, x, masks, kernel_size, scale, group):
        x, masks = x.detach().contiguous(), masks.detach().contiguous()
        ctx.save_for_backward(x, masks)
        ctx.config = (kernel_size, scale, group)
        return decorated_launch_forward(x, masks, kernel_size, scale, group)


class DecoratedCarafeFunction(torch.autograd.Function):
    """Every method of its own is decorated: its globals are the decorator's module's."""

    @staticmethod
    @torch.no_grad()
    def forward(ctx, x, masks, kernel_size, scale, group):
        x, masks = x.detach().contiguous(), masks.detach().contiguous()
        ctx.save_for_backward(x, masks)
        ctx.config = (kernel_size, scale, group)
        return launch_forward(x, masks, kernel_size, scale, group)

    backward = staticmethod(torch.no_grad()(carafe_function().backward))


@pytest.mark.parametrize("function", [CarafeBase, InheritedCarafeFunction, DecoratedHelperCarafeFunction,
                                      DecoratedCarafeFunction],
                         ids=lambda function: function.__name__)
def test_launches_through_the_class_name_a_decorated_helper_or_a_base_class_count(function, capsys):
    checkers.check_carafe_function(function)
    assert capsys.readouterr().out.startswith("PASS CarafeFunction")


def bilinear_function(forward="kernel"):
    class BilinearFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, size, align_corners):
            n, c, h, w = x.shape
            ctx.config = (x.shape, align_corners)
            planes = x.detach().contiguous().reshape(n * c, h, w)
            if forward == "interpolate":
                out = F.interpolate(planes[None], size=size, mode="bilinear", align_corners=align_corners)[0]
            else:
                out = planes.new_empty((n * c, *size))
                bilinear_kernel[launch_config(out.numel(), 128)](planes.numpy(), out.numpy(), align_corners)
            return out.reshape(n, c, *size)

        @staticmethod
        def backward(ctx, grad_out):
            (n, c, h, w), align_corners = ctx.config
            grad_planes = grad_out.detach().contiguous().reshape(n * c, *grad_out.shape[2:])
            grad_x = grad_planes.new_zeros((n * c, h, w))
            bilinear_scatter_kernel[launch_config(grad_planes.numel(), 128)](grad_planes.numpy(), grad_x.numpy(),
                                                                             align_corners)
            return grad_x.reshape(n, c, h, w), None, None

    return BilinearFunction


def test_either_backward_kernel_of_lesson_02_will_do(capsys):
    checkers.check_bilinear_function(bilinear_function())  # the scatter, not the lesson's gather
    assert capsys.readouterr().out.startswith("PASS BilinearFunction")


def test_a_bilinear_function_with_f_interpolate_inside_is_refused():
    function = bilinear_function("interpolate")
    plain_bilinear_checkers.check_bilinear_function(function)  # right values
    assert "`bilinear_kernel` was never launched" in hint_of(checkers.check_bilinear_function, function)
