"""FADE: fusing the assets of decoder and encoder (Lu et al., ECCV 2022).

FADE predicts CARAFE kernels from *both* the high-res encoder feature ``en``
(detail: boundaries, matting) and the low-res decoder feature ``de``
(semantics: regions), and gates between the encoder feature and the
reassembled decoder feature.

The kernels come from a **semi-shift convolution**: one k x k conv ``W, b``
applied to the compressed encoder map ``E`` (high res) and to the
compressed decoder map ``D`` (low res), the decoder window moving one
low-res step every ``s`` output steps::

    logits(p) = sum_u W[u] . E(p + u) + b  +  sum_u W[u] . D(p // s + u) + b

``ul.semi_shift_conv(en, de, weight, bias, scale)`` computes this in one
pass, without materialising ``conv(E)`` or the upsampled ``conv(D)``: the
two windows share the weight, so each tap multiplies ``E + D`` once. It
equals ``conv2d(en) + nearest_up(conv2d(de))`` (the bias twice, as in the
original) and is *not* a conv over ``nearest_up(de)``.

``ul.FADE(in_channels_en, in_channels_de)`` and ``ul.FADE(..., lite=True)``
are the modules, with the official parameter names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from numba import cuda, int64, prange

from ..backend import cpu_kernel, cuda_kernel, fma, per_element, resolve_backend, run
from ..validation import (
    check_feature_map,
    check_odd_kernel_size,
    check_positive_int,
    check_same_batch,
    check_upsampled_size,
    kernel_dtype,
    shape_str,
)
from .carafe import carafe, unravel4, upsampled_columns

# --------------------------------------------------------------------------
# Per-element bodies, shared by the CUDA kernels and the CPU loops.
# weight: (O, C / groups, k, k); output channel o belongs to group
# o // (O / groups), input channel c to group c // (C / groups).
# --------------------------------------------------------------------------


def _tap(feature, n, c, row, col):
    """feature[n, c, row, col], or 0 outside the map (zero padding)."""
    if 0 <= row < feature.shape[2] and 0 <= col < feature.shape[3]:
        return feature[n, c, row, col]
    return feature.dtype.type(0)


def _semi_shift_at(en, de, weight, bias, n, o, Y, X, scale, groups):
    """logits[n, o, Y, X]: the encoder window around (Y, X) and the decoder
    window around (Y // s, X // s), in one loop over channels and taps."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    pad = size // 2
    first = (o // (weight.shape[0] // groups)) * in_per_group
    low_row, low_col = Y // scale, X // scale
    total = bias[o] + bias[o]
    for local in range(in_per_group):
        c = first + local
        for uy in range(size):
            for ux in range(size):
                both = tap(en, n, c, Y + uy - pad, X + ux - pad) + tap(de, n, c, low_row + uy - pad, low_col + ux - pad)
                total = fma(weight[o, local, uy, ux], both, total)
    return total


def _grad_en_at(grad_out, weight, n, c, Y, X, groups):
    """d loss / d en[n, c, Y, X]: the outputs whose encoder window holds it
    (a stride-1 transposed convolution)."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    group = c // in_per_group
    total = grad_out.dtype.type(0)
    for o in range(group * out_per_group, (group + 1) * out_per_group):
        for uy in range(size):
            for ux in range(size):
                total = fma(weight[o, c - group * in_per_group, uy, ux],
                            tap(grad_out, n, o, Y - uy + pad, X - ux + pad), total)
    return total


def _grad_de_at(grad_out, weight, n, c, row, col, scale, groups):
    """d loss / d de[n, c, row, col]: the decoder window of output (Y, X) is
    centred on (Y // s, X // s), so tap u reads ``row`` from the s x s
    outputs attached to low-res pixel (row - uy + pad, col - ux + pad)."""
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    group = c // in_per_group
    height, width = grad_out.shape[2] // scale, grad_out.shape[3] // scale
    total = grad_out.dtype.type(0)
    for o in range(group * out_per_group, (group + 1) * out_per_group):
        for uy in range(size):
            anchor_row = row - uy + pad
            if 0 <= anchor_row < height:
                for ux in range(size):
                    anchor_col = col - ux + pad
                    if 0 <= anchor_col < width:
                        pooled = grad_out.dtype.type(0)
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                pooled += grad_out[n, o, Y, X]
                        total = fma(weight[o, c - group * in_per_group, uy, ux], pooled, total)
    return total


def _grad_weight_at(grad_out, en, de, o, local, uy, ux, size, scale, groups):
    """d loss / d weight[o, local, uy, ux]: grad_out against E + D through
    that tap, summed over the batch and every output pixel."""
    pad = size // 2
    c = (o // (grad_out.shape[1] // groups)) * (en.shape[1] // groups) + local
    total = grad_out.dtype.type(0)
    for n in range(grad_out.shape[0]):
        for Y in range(grad_out.shape[2]):
            for X in range(grad_out.shape[3]):
                both = tap(en, n, c, Y + uy - pad, X + ux - pad) + tap(de, n, c, Y // scale + uy - pad,
                                                                       X // scale + ux - pad)
                total = fma(grad_out[n, o, Y, X], both, total)
    return total


tap = per_element(_tap)
semi_shift_at = per_element(_semi_shift_at)
grad_en_at = per_element(_grad_en_at)
grad_de_at = per_element(_grad_de_at)
grad_weight_at = per_element(_grad_weight_at)


# --------------------------------------------------------------------------
# CUDA kernels: one thread per element of what they write
# --------------------------------------------------------------------------


def _map(T):
    return T[:, :, :, ::1]


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), T[::1], _map(T), int64, int64))
def semi_shift_forward_kernel(en, de, weight, bias, out, scale, groups):
    i = cuda.grid(1)
    if i < out.size:
        n, o, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        out[n, o, Y, X] = semi_shift_at(en, de, weight, bias, n, o, Y, X, scale, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), int64))
def semi_shift_grad_en_kernel(grad_out, weight, grad_en, groups):
    i = cuda.grid(1)
    if i < grad_en.size:
        n, c, Y, X = unravel4(i, grad_en.shape[1], grad_en.shape[2], grad_en.shape[3])
        grad_en[n, c, Y, X] = grad_en_at(grad_out, weight, n, c, Y, X, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), int64, int64))
def semi_shift_grad_de_kernel(grad_out, weight, grad_de, scale, groups):
    i = cuda.grid(1)
    if i < grad_de.size:
        n, c, row, col = unravel4(i, grad_de.shape[1], grad_de.shape[2], grad_de.shape[3])
        grad_de[n, c, row, col] = grad_de_at(grad_out, weight, n, c, row, col, scale, groups)


@cuda_kernel(lambda T: (_map(T), _map(T), _map(T), _map(T), int64, int64))
def semi_shift_grad_weight_kernel(grad_out, en, de, grad_weight, scale, groups):
    i = cuda.grid(1)
    if i < grad_weight.size:
        o, local, uy, ux = unravel4(i, grad_weight.shape[1], grad_weight.shape[2], grad_weight.shape[3])
        grad_weight[o, local, uy, ux] = grad_weight_at(grad_out, en, de, o, local, uy, ux, grad_weight.shape[2],
                                                       scale, groups)


# --------------------------------------------------------------------------
# CPU loops. A thread per element would leave the vector units idle, so
# these walk whole rows: each tap is one contiguous multiply-add over a row.
# They read zero-padded copies of the maps ("columns"): row segments then
# never leave the array, and out-of-map taps read exact zeros, so the
# logits and the gradients of en and de get the same additions in the same
# order as on the GPU. The weight gradient, a sum over every pixel, is kept
# as per-column running sums and agrees with the GPU's to rounding.
# --------------------------------------------------------------------------


@cpu_kernel
def sum_pool_cpu(grad_out, scale, pooled):
    """pooled[n, o, a, b] = sum of grad_out over the s x s outputs attached to (a, b)."""
    batch, outputs, height, width = pooled.shape
    for line in prange(batch * outputs * height):
        n, o, a = line // (outputs * height), (line // height) % outputs, line % height
        for b in range(width):
            total = grad_out.dtype.type(0)
            for Y in range(a * scale, a * scale + scale):
                for X in range(b * scale, b * scale + scale):
                    total += grad_out[n, o, Y, X]
            pooled[n, o, a, b] = total


@cpu_kernel
def semi_shift_forward_cpu(en_columns, de_columns, weight, bias, out, scale, groups):
    # One line is one output row of one group, for all the group's outputs:
    # each tap's E + D row is formed once and reused by every output, and
    # each output still sums its taps in the GPU's order.
    batch, outputs, height, width = out.shape
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = outputs // groups
    pad = size // 2
    low_height = de_columns.shape[2]
    for line in prange(batch * groups * height):
        n, group, Y = line // (groups * height), (line // height) % groups, line % height
        first_out, first_in = group * out_per_group, group * in_per_group
        totals = np.empty((out_per_group, width), out.dtype)
        for j in range(out_per_group):
            totals[j, :] = bias[first_out + j] + bias[first_out + j]
        summed = np.empty(width, out.dtype)
        for local in range(in_per_group):
            c = first_in + local
            for uy in range(size):
                en_row, de_row = Y + uy - pad, Y // scale + uy - pad
                en_inside, de_inside = 0 <= en_row < height, 0 <= de_row < low_height
                if not (en_inside or de_inside):
                    continue
                for ux in range(size):
                    if en_inside and de_inside:
                        en_part = en_columns[n, c, en_row, ux: ux + width]
                        de_part = de_columns[n, c, de_row, ux * scale: ux * scale + width]
                        for X in range(width):
                            summed[X] = en_part[X] + de_part[X]
                    elif en_inside:
                        summed[:] = en_columns[n, c, en_row, ux: ux + width]
                    else:
                        summed[:] = de_columns[n, c, de_row, ux * scale: ux * scale + width]
                    for j in range(out_per_group):
                        w = weight[first_out + j, local, uy, ux]
                        for X in range(width):
                            totals[j, X] = fma(w, summed[X], totals[j, X])
        out[n, first_out: first_out + out_per_group, Y, :] = totals


@cpu_kernel
def transposed_conv_cpu(grad_columns, weight, grad_input, groups):
    """grad_input[n, c, y, x] = sum_{o, u} weight[o, c, u] * grad[n, o, y - uy + p, x - ux + p]:
    the gradient of en (from grad_out), and of de (from the pooled grad_out)."""
    batch, channels, height, width = grad_input.shape
    size, in_per_group = weight.shape[2], weight.shape[1]
    out_per_group = weight.shape[0] // groups
    pad = size // 2
    # A line is one row of one group's input channels: each row of grad is
    # read once for all of them (as in the forward loop).
    for line in prange(batch * groups * height):
        n, group, y = line // (groups * height), (line // height) % groups, line % height
        totals = np.zeros((in_per_group, width), grad_input.dtype)
        for o in range(group * out_per_group, (group + 1) * out_per_group):
            for uy in range(size):
                row = y - uy + pad
                if 0 <= row < height:
                    for ux in range(size):
                        part = grad_columns[n, o, row, 2 * pad - ux: 2 * pad - ux + width]
                        for local in range(in_per_group):
                            w = weight[o, local, uy, ux]
                            for x in range(width):
                                totals[local, x] = fma(w, part[x], totals[local, x])
        grad_input[n, group * in_per_group: (group + 1) * in_per_group, y, :] = totals


@cpu_kernel
def correlate_cpu(grad, columns, grad_weight, groups):
    """grad_weight[o, local, uy, ux] = sum_{n, y, x} grad[n, o, y, x] * input[n, c, y + uy - p, x + ux - p]
    (``columns``: the input zero-padded by p columns): the weight gradient
    of a stride-1 conv. The taps are the inner loops, so one row of grad
    and the rows under it are read once for all k*k taps."""
    outputs, in_per_group, size, _ = grad_weight.shape
    batch, _, height, width = grad.shape
    pad = size // 2
    for pair in prange(outputs * in_per_group):
        o, local = pair // in_per_group, pair % in_per_group
        c = (o // (outputs // groups)) * in_per_group + local
        partial = np.zeros((size, size, width), grad_weight.dtype)  # one running sum per tap and column
        for n in range(batch):
            for y in range(height):
                grads = grad[n, o, y]
                for uy in range(size):
                    row = y + uy - pad
                    if 0 <= row < height:
                        for ux in range(size):
                            part = columns[n, c, row, ux: ux + width]
                            for x in range(width):
                                partial[uy, ux, x] = fma(grads[x], part[x], partial[uy, ux, x])
        for uy in range(size):
            for ux in range(size):
                grad_weight[o, local, uy, ux] = partial[uy, ux].sum()


# --------------------------------------------------------------------------
# Reference (backend="torch"): the two-convolution formulation
# --------------------------------------------------------------------------


def semi_shift_conv_reference(en, de, weight, bias, scale, groups=1):
    """conv2d(en) + nearest_up(conv2d(de)): two convolutions and an
    upsampled intermediate, the formulation of the original code."""
    pad = weight.shape[2] // 2
    encoder = F.conv2d(en, weight, bias, padding=pad, groups=groups)
    decoder = F.conv2d(de, weight, bias, padding=pad, groups=groups)
    return encoder + F.interpolate(decoder, scale_factor=scale, mode="nearest")


# --------------------------------------------------------------------------
# Autograd glue
# --------------------------------------------------------------------------


def _semi_shift_backward_cpu(needs, grad_out, en, de, weight, scale, groups):
    """Gradients of en, de and weight on the CPU loops. The decoder's share is
    taken at low resolution: all s x s outputs of a block see the same
    decoder window, so only their summed gradient (``pooled``) matters."""
    pad = weight.shape[2] // 2
    grad_en = grad_de = grad_weight = None
    if needs[1] or needs[2]:
        pooled = grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], de.shape[2], de.shape[3]))
        run(sum_pool_cpu, "cpu", pooled.numel(), grad_out, scale, pooled)
    if needs[0]:
        grad_en = torch.empty_like(en)
        run(transposed_conv_cpu, "cpu", grad_en.numel(), upsampled_columns(grad_out, 1, pad), weight, grad_en, groups)
    if needs[1]:
        grad_de = torch.empty_like(de)
        run(transposed_conv_cpu, "cpu", grad_de.numel(), upsampled_columns(pooled, 1, pad), weight, grad_de, groups)
    if needs[2]:
        from_en, from_de = torch.empty_like(weight), torch.empty_like(weight)
        run(correlate_cpu, "cpu", weight.numel(), grad_out, upsampled_columns(en, 1, pad), from_en, groups)
        run(correlate_cpu, "cpu", weight.numel(), pooled, upsampled_columns(de, 1, pad), from_de, groups)
        grad_weight = from_en + from_de
    return grad_en, grad_de, grad_weight


class SemiShiftFunction(torch.autograd.Function):
    """One-pass semi-shift convolution forward and backward on Numba kernels."""

    @staticmethod
    def forward(ctx, en, de, weight, bias, scale, groups, backend):
        en, de, weight, bias = en.contiguous(), de.contiguous(), weight.contiguous(), bias.contiguous()
        out = en.new_empty((en.shape[0], weight.shape[0], en.shape[2], en.shape[3]))
        pad = weight.shape[2] // 2
        if backend == "cpu":
            run(semi_shift_forward_cpu, backend, out.numel(), upsampled_columns(en, 1, pad),
                    upsampled_columns(de, scale, pad), weight, bias, out, scale, groups)
        else:
            run(semi_shift_forward_kernel, backend, out.numel(), en, de, weight, bias, out, scale, groups)
        ctx.save_for_backward(en, de, weight)
        ctx.config = (scale, groups, backend)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        en, de, weight = ctx.saved_tensors
        scale, groups, backend = ctx.config
        grad_out = grad_out.contiguous()
        needs = ctx.needs_input_grad
        if backend == "cpu":
            grads = list(_semi_shift_backward_cpu(needs, grad_out, en, de, weight, scale, groups)) + [None]
        else:
            grads = [None] * 4
            if needs[0]:
                grads[0] = torch.empty_like(en)
                run(semi_shift_grad_en_kernel, backend, en.numel(), grad_out, weight, grads[0], groups)
            if needs[1]:
                grads[1] = torch.empty_like(de)
                run(semi_shift_grad_de_kernel, backend, de.numel(), grad_out, weight, grads[1], scale, groups)
            if needs[2]:
                grads[2] = torch.empty_like(weight)
                run(semi_shift_grad_weight_kernel, backend, weight.numel(), grad_out, en, de, grads[2], scale,
                    groups)
        if ctx.needs_input_grad[3]:
            grads[3] = 2 * grad_out.sum(dim=(0, 2, 3))  # the bias enters twice
        return (*grads, None, None, None)


def semi_shift_conv(en, de, weight, bias=None, scale=2, backend=None, groups=1):
    """The semi-shift convolution of FADE, in one pass (see the module docstring).

    Args:
        en: (N, C, s*h, s*w) encoder map (high resolution).
        de: (N, C, h, w) decoder map (low resolution).
        weight: (O, C // groups, k, k) with odd k, shared by both paths.
        bias: (O,) or None; added on both paths (so twice), as the original does.
        scale: integer s.
        backend: None/"auto", "cuda", "cpu" or "torch".
        groups: channel groups of the convolution (FADE-Lite's depthwise
            content encoder uses groups = O = C).

    Returns:
        (N, O, s*h, s*w) ``== conv2d(en, weight, bias, padding=k//2)
        + nearest_up(conv2d(de, weight, bias, padding=k//2), s)``;
        differentiable in ``en``, ``de``, ``weight`` and ``bias``.
    """
    op = "semi_shift_conv"
    check_feature_map(en, "en", op)
    check_feature_map(de, "de", op)
    check_feature_map(weight, "weight", op)
    scale = check_positive_int(scale, "scale", op)
    groups = check_positive_int(groups, "groups", op)
    size = check_odd_kernel_size(weight.shape[2], "the kernel size of weight", op)
    if weight.shape[3] != size:
        raise ValueError(f"{op}: weight must have square k x k taps, got {shape_str(weight)}")
    channels = de.shape[1]
    check_same_batch(en, "en", de, "de", op)
    if en.shape[1] != channels:
        raise ValueError(f"{op}: en and de must have the same channels (they share the weight); got en "
                         f"{shape_str(en)} and de {shape_str(de)}")
    check_upsampled_size(en, "en", de, "de", scale, op)
    if channels % groups or weight.shape[0] % groups or weight.shape[1] * groups != channels:
        raise ValueError(f"{op}: weight {shape_str(weight)} does not fit {channels} input channels in "
                         f"groups={groups}: expected (O, {channels} // {groups}, k, k) with O divisible by groups")
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
        raise ValueError(f"{op}: bias must be a tensor of shape ({weight.shape[0]},), got "
                         f"{getattr(bias, 'shape', bias)}")
    devices = {t.device for t in (en, de, weight, bias)}
    if len(devices) > 1:
        raise ValueError(f"{op}: en, de, weight and bias are on different devices: "
                         f"{', '.join(sorted(map(str, devices)))}")
    backend = resolve_backend(backend, [en, de, weight, bias], op)
    result_dtype = en.dtype
    for t in (de, weight, bias):
        result_dtype = torch.promote_types(result_dtype, t.dtype)
    compute_dtype = kernel_dtype(result_dtype)
    en, de, weight, bias = (t.to(compute_dtype) for t in (en, de, weight, bias))
    if backend == "torch":
        out = semi_shift_conv_reference(en, de, weight, bias, scale, groups)
    else:
        out = SemiShiftFunction.apply(en, de, weight, bias, scale, groups, backend)
    return out.to(result_dtype)


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------


def xavier_init(conv):
    """The original FADE's init of every convolution: Xavier-uniform
    weights, zero bias."""
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class GateGenerator(nn.Module):
    """g = sigmoid(nearest_up(conv1x1(de))): one channel, from the decoder."""

    def __init__(self, in_channels, scale):
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, 1, 1)
        xavier_init(self.conv)

    def forward(self, de):
        return torch.sigmoid(F.interpolate(self.conv(de), scale_factor=self.scale, mode="nearest"))


class SemiShift(nn.Module):
    """The kernel generator: compress both features, then the semi-shift
    convolution with the shared ``content_encoder``."""

    def __init__(self, in_channels_en, in_channels_de, scale, up_kernel_size, embedding_dim, kernel_size, lite):
        super().__init__()
        self.scale = scale
        logits = up_kernel_size * up_kernel_size
        compressed = logits if lite else embedding_dim
        self.compressor_en = nn.Conv2d(in_channels_en, compressed, 1)
        self.compressor_de = nn.Conv2d(in_channels_de, compressed, 1, bias=False)
        self.content_encoder = nn.Conv2d(compressed, logits, kernel_size, padding=kernel_size // 2,
                                         groups=logits if lite else 1)
        for conv in (self.compressor_en, self.compressor_de, self.content_encoder):
            xavier_init(conv)

    def forward(self, en, de, backend=None):
        return semi_shift_conv(self.compressor_en(en), self.compressor_de(de), self.content_encoder.weight,
                               self.content_encoder.bias, self.scale, backend=backend,
                               groups=self.content_encoder.groups)


class FADE(nn.Module):
    """The FADE upsampler: ``forward(en, de)`` upsamples the decoder feature
    ``de: (N, C, h, w)`` by ``scale``, guided by the encoder feature
    ``en: (N, C, s*h, s*w)``::

        kernels = softmax(semi_shift_conv(compressor_en(en), compressor_de(de)))  # over k_up**2
        out = g * en + (1 - g) * carafe(de, kernels),  g = sigmoid(nearest_up(conv1x1(de)))

    ``lite=True`` is FADE-Lite: the compressors map straight to ``k_up**2``
    channels and the content encoder is depthwise. Parameter names are the
    official ones (``gate_generator.conv``, ``ker_generator.compressor_en``,
    ``ker_generator.compressor_de``, ``ker_generator.content_encoder``).
    The attribute ``backend`` (default None: by device) selects the backend
    of the semi-shift convolution and the reassembly.
    """

    def __init__(self, in_channels_en, in_channels_de=None, scale=2, up_kernel_size=5, embedding_dim=64,
                 kernel_size=3, lite=False):
        super().__init__()
        in_channels_de = in_channels_en if in_channels_de is None else in_channels_de
        check_positive_int(in_channels_en, "in_channels_en", "FADE")
        check_positive_int(in_channels_de, "in_channels_de", "FADE")
        if in_channels_en != in_channels_de:
            raise ValueError(
                f"FADE: in_channels_en={in_channels_en} and in_channels_de={in_channels_de} differ, but the "
                "output blends en and the upsampled de channel by channel (g * en + (1 - g) * up(de)). "
                f"Align them first, e.g. with nn.Conv2d({in_channels_de}, {in_channels_en}, 1) on the decoder "
                f"feature (or nn.Conv2d({in_channels_en}, {in_channels_de}, 1) on the encoder feature)."
            )
        self.channels = in_channels_en
        self.scale = check_positive_int(scale, "scale", "FADE")
        self.up_kernel_size = check_odd_kernel_size(up_kernel_size, "up_kernel_size", "FADE")
        kernel_size = check_odd_kernel_size(kernel_size, "kernel_size", "FADE")
        self.lite = bool(lite)
        self.backend = None
        self.gate_generator = GateGenerator(in_channels_de, scale)
        self.ker_generator = SemiShift(in_channels_en, in_channels_de, scale, up_kernel_size, embedding_dim,
                                       kernel_size, lite)

    def _check(self, en, de):
        check_feature_map(en, "en", "FADE")
        check_feature_map(de, "de", "FADE")
        s = self.scale
        if en.shape[1] != self.channels or de.shape[1] != self.channels:
            raise ValueError(f"FADE: expected en and de with {self.channels} channels, got en {shape_str(en)} "
                             f"and de {shape_str(de)}")
        if en.shape[0] != de.shape[0] or (en.shape[2], en.shape[3]) != (s * de.shape[2], s * de.shape[3]):
            raise ValueError(f"FADE: en must be the same batch and exactly scale={s} x the size of de; got en "
                             f"{shape_str(en)} and de {shape_str(de)}")

    def kernels(self, en, de):
        """The normalised upsampling kernels, (N, k_up**2, s*h, s*w)."""
        self._check(en, de)
        return F.softmax(self.ker_generator(en, de, self.backend), dim=1)

    def gate(self, de):
        """The gate map g, (N, 1, s*h, s*w): 1 keeps the encoder feature."""
        return self.gate_generator(de)

    def forward(self, en, de):
        kernels = self.kernels(en, de)
        gate = self.gate(de)
        return gate * en + (1 - gate) * carafe(de, kernels, self.up_kernel_size, self.scale, 1, backend=self.backend)

    def extra_repr(self):
        return (f"channels={self.channels}, scale={self.scale}, up_kernel_size={self.up_kernel_size}, "
                f"lite={self.lite}")
