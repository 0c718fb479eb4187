"""Lesson 03 (CARAFE): the checkers pass right answers and explain wrong ones,
and the pictures draw what they say."""

import upsamplelib  # noqa: F401,I001  (first: it chooses the CUDA target before numba loads)

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numba import cuda, float32  # noqa: E402

from upsamplelib import backend as ul_backend  # noqa: E402
from upsamplelib import checkers, pictures  # noqa: E402
from upsamplelib.backend import launch_config, per_element  # noqa: E402

simulator_only = pytest.mark.skipif(not ul_backend.SIMULATOR, reason="only the simulator reports bad indices")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------
# Right answers (the lesson's solutions)
# --------------------------------------------------------------------------


@per_element
def unravel4(i, channels, height, width):
    x = i % width
    rest = i // width
    y = rest % height
    rest = rest // height
    return rest // channels, rest % channels, y, x


def predict_kernels(x, channel_compressor, content_encoder, scale, kernel_size, group):
    logits = F.pixel_shuffle(content_encoder(channel_compressor(x)), scale)
    n, slots, height, width = logits.shape
    weights = F.softmax(logits.view(n, group, kernel_size * kernel_size, height, width), dim=2)
    return weights.view(n, slots, height, width)


@cuda.jit
def padded_kernel(x_padded, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += masks[n, dy * kernel_size + dx, Y, X] * x_padded[n, c, Y // scale + dy, X // scale + dx]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_group_kernel(x, masks, out, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        g = c // (out.shape[1] // group)
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def border_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            row = Y // scale - r + dy
            if 0 <= row < x.shape[2]:
                for dx in range(kernel_size):
                    col = X // scale - r + dx
                    if 0 <= col < x.shape[3]:
                        total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


TILE = 8
MAX_RADIUS = 3
WINDOW = TILE + 2 * MAX_RADIUS


@cuda.jit
def tiled_kernel(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    top = Y0 // scale - r
    left = X0 // scale - r
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = top + j // cols
        col = left + j % cols
        value = float32(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    if Y < height and X < width:
        g = c // (channels // group)
        ty = Y // scale - Y0 // scale
        tx = X // scale - X0 // scale
        total = float32(0)
        for dy in range(kernel_size):
            if 0 <= Y // scale - r + dy < x.shape[2]:  # the slots outside the map are skipped (a nan mask there)
                for dx in range(kernel_size):
                    if 0 <= X // scale - r + dx < x.shape[3]:
                        total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * tile[ty + dy, tx + dx]
        out[n, c, Y, X] = total


@cuda.jit
def carafe_grad_x_kernel(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_x.size:
        n, c, row, col = unravel4(i, grad_x.shape[1], grad_x.shape[2], grad_x.shape[3])
        r = (kernel_size - 1) // 2
        g = c // (grad_x.shape[1] // group)
        total = grad_x.dtype.type(0)
        for dy in range(kernel_size):
            anchor_row = row - dy + r
            if 0 <= anchor_row < grad_x.shape[2]:
                for dx in range(kernel_size):
                    anchor_col = col - dx + r
                    if 0 <= anchor_col < grad_x.shape[3]:
                        slot = (g * kernel_size + dy) * kernel_size + dx
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                total += masks[n, slot, Y, X] * grad_out[n, c, Y, X]
        grad_x[n, c, row, col] = total


@cuda.jit
def carafe_grad_masks_kernel(grad_out, x, grad_masks, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_masks.size:
        n, slot, Y, X = unravel4(i, grad_masks.shape[1], grad_masks.shape[2], grad_masks.shape[3])
        area = kernel_size * kernel_size
        r = (kernel_size - 1) // 2
        g = slot // area
        t = slot % area
        row = Y // scale - r + t // kernel_size
        col = X // scale - r + t % kernel_size
        group_channels = x.shape[1] // group
        total = grad_masks.dtype.type(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            for c in range(g * group_channels, (g + 1) * group_channels):
                total += grad_out[n, c, Y, X] * x[n, c, row, col]
        grad_masks[n, slot, Y, X] = total


def _launch(kernel, tensor):
    return kernel[launch_config(tensor.numel(), 128)]


class GoodFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, masks, kernel_size, scale, group):
        x, masks = x.detach().contiguous(), masks.detach().contiguous()
        out = x.new_empty((x.shape[0], x.shape[1], scale * x.shape[2], scale * x.shape[3]))
        _launch(carafe_group_kernel, out)(x.numpy(), masks.numpy(), out.numpy(), kernel_size, scale, group)
        ctx.save_for_backward(x, masks)
        ctx.config = (kernel_size, scale, group)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, masks = ctx.saved_tensors
        kernel_size, scale, group = ctx.config
        grad_out = grad_out.detach().contiguous()
        grad_x, grad_masks = torch.empty_like(x), torch.empty_like(masks)
        _launch(carafe_grad_x_kernel, grad_x)(grad_out.numpy(), masks.numpy(), grad_x.numpy(), kernel_size, scale,
                                              group)
        _launch(carafe_grad_masks_kernel, grad_masks)(grad_out.numpy(), x.numpy(), grad_masks.numpy(), kernel_size,
                                                      scale, group)
        return grad_x, grad_masks, None, None, None


@pytest.mark.parametrize("check,args", [
    (checkers.check_predict_kernels, (predict_kernels,)),
    (checkers.check_carafe_padded_kernel, (padded_kernel,)),
    (checkers.check_carafe_border_kernel, (border_kernel,)),
    (checkers.check_carafe_group_kernel, (carafe_group_kernel,)),
    (checkers.check_carafe_tiled_kernel, (tiled_kernel, TILE, MAX_RADIUS)),
    (checkers.check_carafe_grad_x_kernel, (carafe_grad_x_kernel,)),
    (checkers.check_carafe_grad_masks_kernel, (carafe_grad_masks_kernel,)),
    (checkers.check_carafe_function, (GoodFunction,)),
], ids=lambda value: getattr(value, "__name__", ""))
def test_right_answers_pass_with_one_line(check, args, capsys):
    check(*args)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("PASS "), lines


def test_the_group_kernel_also_passes_the_border_check_as_group_1(capsys):
    @cuda.jit
    def wrapped(x, masks, out, kernel_size, scale):
        i = cuda.grid(1)
        if i < out.size:
            n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
            r = (kernel_size - 1) // 2
            total = out.dtype.type(0)
            for t in range(kernel_size * kernel_size):
                row = Y // scale - r + t // kernel_size
                col = X // scale - r + t % kernel_size
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, t, Y, X] * x[n, c, row, col]
            out[n, c, Y, X] = total

    checkers.check_carafe_border_kernel(wrapped)
    assert capsys.readouterr().out.startswith("PASS carafe_border_kernel")


# --------------------------------------------------------------------------
# Kernel prediction: the usual mistakes are named
# --------------------------------------------------------------------------


def _softmax_over_everything(x, compressor, encoder, scale, kernel_size, group):
    return F.softmax(F.pixel_shuffle(encoder(compressor(x)), scale), dim=1)


def _softmax_before_shuffle(x, compressor, encoder, scale, kernel_size, group):
    return F.pixel_shuffle(F.softmax(encoder(compressor(x)), dim=1), scale)


def _no_softmax(x, compressor, encoder, scale, kernel_size, group):
    return F.pixel_shuffle(encoder(compressor(x)), scale)


def _no_shuffle(x, compressor, encoder, scale, kernel_size, group):
    return F.softmax(encoder(compressor(x)), dim=1)


@pytest.mark.parametrize("wrong,message", [
    (_softmax_before_shuffle, "before the pixel shuffle"),
    (_no_softmax, "not normalised"),
    (_no_shuffle, r"wrong|shape"),
])
def test_predict_kernels_mistakes_are_named(wrong, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        checkers.check_predict_kernels(wrong)


def test_softmax_over_all_groups_is_named():
    # Only the cases with several groups tell it apart; the first of those fails.
    with pytest.raises(checkers.CheckFailed, match="each group's kernel is normalised on its own"):
        checkers.check_predict_kernels(_softmax_over_everything)


def test_no_shuffle_reports_the_expected_shape():
    with pytest.raises(checkers.CheckFailed, match=r"expected \(1, 25, 10, 12\)"):
        checkers.check_predict_kernels(_no_shuffle)


def test_unsolved_exercise_reports_not_implemented():
    def stub(*args):
        raise NotImplementedError("Exercise 03.1: write this part")

    with pytest.raises(NotImplementedError, match="03.1"):
        checkers.check_predict_kernels(stub)


# --------------------------------------------------------------------------
# Forward kernels: wrong borders, slots and groups are named
# --------------------------------------------------------------------------


@cuda.jit
def renormalising_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        weight = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = Y // scale - r + dy
                col = X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
                    weight += masks[n, dy * kernel_size + dx, Y, X]
        out[n, c, Y, X] = total / weight


@cuda.jit
def clamping_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = min(max(Y // scale - r + dy, 0), x.shape[2] - 1)
                col = min(max(X // scale - r + dx, 0), x.shape[3] - 1)
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def transposed_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = Y // scale - r + dy
                col = X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, dx * kernel_size + dy, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


@cuda.jit
def unguarded_border_kernel(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += masks[n, dy * kernel_size + dx, Y, X] * x[n, c, Y // scale - r + dy, X // scale - r + dx]
        out[n, c, Y, X] = total


@pytest.mark.parametrize("kernel,message", [
    (renormalising_kernel, "renormalises"),
    (clamping_kernel, "repeats the edge pixel"),
    (transposed_kernel, "rows and columns of the window are swapped"),
])
def test_border_mistakes_are_named(kernel, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        checkers.check_carafe_border_kernel(kernel)


@simulator_only
def test_missing_border_test_is_caught():
    with pytest.raises(checkers.CheckFailed, match="carafe_border_kernel"):
        checkers.check_carafe_border_kernel(unguarded_border_kernel)


def test_the_padded_check_wants_the_padded_offsets():
    # border_kernel subtracts r although x_padded is already shifted by r
    with pytest.raises(checkers.CheckFailed, match=r"carafe_padded_kernel: .*wrong|First mismatch"):
        checkers.check_carafe_padded_kernel(border_kernel)


@cuda.jit
def interleaved_group_kernel(x, masks, out, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        g = c % group
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row = Y // scale - r + dy
                col = X // scale - r + dx
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    total += masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X] * x[n, c, row, col]
        out[n, c, Y, X] = total


def test_interleaved_groups_are_named():
    with pytest.raises(checkers.CheckFailed, match=r"c // \(C // group\).*not c % group"):
        checkers.check_carafe_group_kernel(interleaved_group_kernel)


def test_the_first_mismatch_is_located():
    @cuda.jit
    def off_by_one_scale(x, masks, out, kernel_size, scale, group):
        i = cuda.grid(1)
        if i < out.size:
            n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
            out[n, c, Y, X] = x[n, c, min(Y // scale, x.shape[2] - 1), min(X // scale, x.shape[3] - 1)]

    with pytest.raises(checkers.CheckFailed, match=r"First mismatch at index \(\d+, \d+, \d+, \d+\): expected"):
        checkers.check_carafe_group_kernel(off_by_one_scale)


# --------------------------------------------------------------------------
# The tiled kernel: what only a GPU would reject is read from the source
# --------------------------------------------------------------------------


@cuda.jit
def runtime_shaped_kernel(x, masks, out, kernel_size, scale, group):
    r = (kernel_size - 1) // 2
    tile = cuda.shared.array((TILE + 2 * r, TILE + 2 * r), float32)
    cuda.syncthreads()
    tile[0, 0] = 0


@cuda.jit
def early_return_kernel(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    Y = cuda.blockIdx.y * TILE + cuda.threadIdx.y
    X = cuda.blockIdx.x * TILE + cuda.threadIdx.x
    if Y >= out.shape[2] or X >= out.shape[3]:
        return
    tile[cuda.threadIdx.y, cuda.threadIdx.x] = 0
    cuda.syncthreads()


@cuda.jit
def sync_in_branch_kernel(x, masks, out, kernel_size, scale, group):
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    Y = cuda.blockIdx.y * TILE + cuda.threadIdx.y
    if Y < out.shape[2]:
        tile[cuda.threadIdx.y, cuda.threadIdx.x] = 0
        cuda.syncthreads()


@pytest.mark.parametrize("kernel,message", [
    (runtime_shaped_kernel, "`r`, which is not a module-level integer constant"),
    (early_return_kernel, "returns on line"),
    (sync_in_branch_kernel, "inside an `if`"),
    (carafe_group_kernel, "no shared array"),
])
def test_tiled_kernel_source_problems_are_explained(kernel, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        checkers.check_carafe_tiled_kernel(kernel, TILE, MAX_RADIUS)


def test_shape_from_an_argument_attribute_is_rejected():
    @cuda.jit
    def shaped_by_input(x, masks, out, kernel_size, scale, group):
        tile = cuda.shared.array(x.shape[2], float32)
        cuda.syncthreads()
        tile[0] = 0

    problems = checkers.shared_memory_problems(shaped_by_input)
    assert any("x.shape[2]" in p for p in problems)


def test_the_right_tiled_kernel_has_no_source_problems():
    assert checkers.shared_memory_problems(tiled_kernel) == []


def test_tiled_stub_reports_not_implemented():
    @cuda.jit
    def stub(x, masks, out, kernel_size, scale, group):
        raise NotImplementedError("Exercise 03.5: write this part")

    with pytest.raises(NotImplementedError, match="03.5"):
        checkers.check_carafe_tiled_kernel(stub, TILE, MAX_RADIUS)


@cuda.jit
def lazy_loader_kernel(x, masks, out, kernel_size, scale, group):
    """Right, except that only the threads inside the output load the tile."""
    tile = cuda.shared.array((WINDOW, WINDOW), float32)
    channels, height, width = out.shape[1], out.shape[2], out.shape[3]
    n = cuda.blockIdx.z // channels
    c = cuda.blockIdx.z % channels
    Y0 = cuda.blockIdx.y * TILE
    X0 = cuda.blockIdx.x * TILE
    r = (kernel_size - 1) // 2
    rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
    cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
    Y = Y0 + cuda.threadIdx.y
    X = X0 + cuda.threadIdx.x
    inside = Y < height and X < width
    for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
        row = Y0 // scale - r + j // cols
        col = X0 // scale - r + j % cols
        value = float32(0)
        if inside and 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            value = x[n, c, row, col]
        tile[j // cols, j % cols] = value
    cuda.syncthreads()
    if inside:
        g = c // (channels // group)
        total = float32(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                total += (masks[n, (g * kernel_size + dy) * kernel_size + dx, Y, X]
                          * tile[Y // scale - Y0 // scale + dy, X // scale - X0 // scale + dx])
        out[n, c, Y, X] = total


def test_threads_outside_the_output_must_still_load():
    with pytest.raises(checkers.CheckFailed, match="must help load the tile"):
        checkers.check_carafe_tiled_kernel(lazy_loader_kernel, TILE, MAX_RADIUS)


# --------------------------------------------------------------------------
# Backward kernels and the Function
# --------------------------------------------------------------------------


@cuda.jit
def scatter_grad_x_kernel(grad_out, masks, grad_x, kernel_size, scale, group):
    i = cuda.grid(1)
    if i < grad_out.size:
        n, c, Y, X = unravel4(i, grad_out.shape[1], grad_out.shape[2], grad_out.shape[3])
        cuda.atomic.add(grad_x, (n, c, Y // scale, X // scale), grad_out[n, c, Y, X])


def test_atomics_are_refused_in_the_gather():
    with pytest.raises(checkers.CheckFailed, match="gather"):
        checkers.check_carafe_grad_x_kernel(scatter_grad_x_kernel)


@cuda.jit
def one_output_per_anchor_kernel(grad_out, masks, grad_x, kernel_size, scale, group):
    """Forgets the s*s outputs of an anchor: reads only the first."""
    i = cuda.grid(1)
    if i < grad_x.size:
        n, c, row, col = unravel4(i, grad_x.shape[1], grad_x.shape[2], grad_x.shape[3])
        r = (kernel_size - 1) // 2
        g = c // (grad_x.shape[1] // group)
        total = grad_x.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                a, b = row - dy + r, col - dx + r
                if 0 <= a < grad_x.shape[2] and 0 <= b < grad_x.shape[3]:
                    slot = (g * kernel_size + dy) * kernel_size + dx
                    total += masks[n, slot, a * scale, b * scale] * grad_out[n, c, a * scale, b * scale]
        grad_x[n, c, row, col] = total


def test_wrong_feature_gradient_gets_the_anchor_hint():
    with pytest.raises(checkers.CheckFailed, match=r"carafe_grad_x_kernel: .*\n.*\nHint: .*anchor|attached"):
        checkers.check_carafe_grad_x_kernel(one_output_per_anchor_kernel)


@cuda.jit
def all_channels_grad_masks_kernel(grad_out, x, grad_masks, kernel_size, scale, group):
    """Sums over every channel instead of the group's."""
    i = cuda.grid(1)
    if i < grad_masks.size:
        n, slot, Y, X = unravel4(i, grad_masks.shape[1], grad_masks.shape[2], grad_masks.shape[3])
        area = kernel_size * kernel_size
        r = (kernel_size - 1) // 2
        t = slot % area
        row = Y // scale - r + t // kernel_size
        col = X // scale - r + t % kernel_size
        total = grad_masks.dtype.type(0)
        if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
            for c in range(x.shape[1]):
                total += grad_out[n, c, Y, X] * x[n, c, row, col]
        grad_masks[n, slot, Y, X] = total


def test_mask_gradient_over_all_channels_fails_with_groups():
    with pytest.raises(checkers.CheckFailed, match="group=2.*\n.*First mismatch|channels c of group g"):
        checkers.check_carafe_grad_masks_kernel(all_channels_grad_masks_kernel)


class TooFewGradients(GoodFunction):
    @staticmethod
    def backward(ctx, grad_out):
        return GoodFunction.backward(ctx, grad_out)[:2]


class NoMaskGradient(GoodFunction):
    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_masks, *rest = GoodFunction.backward(ctx, grad_out)
        return (grad_x, torch.zeros_like(grad_masks), *rest)


def test_function_returning_too_few_gradients_is_explained():
    with pytest.raises(checkers.CheckFailed, match=r"one gradient per input of forward"):
        checkers.check_carafe_function(TooFewGradients)


def test_function_with_a_wrong_gradient_names_it():
    with pytest.raises(checkers.CheckFailed, match="gradient of masks"):
        checkers.check_carafe_function(NoMaskGradient)


# --------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------


def test_footprint_figure_counts_the_window_and_its_sharers():
    figure = pictures.carafe_footprint_figure([(3, 1, 2, 2), (5, 2, 1, 6), (5, 3, 9, 13)], low_size=(6, 6))
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 3
    assert "9 of 9 slots inside" in titles[0] and "no other output reads it" in titles[0]
    assert "output (1, 6) -> low-res (0, 3)" in titles[1] and "15 of 25 slots inside" in titles[1]
    assert "4 outputs share" in titles[1]
    assert "20 of 25 slots inside" in titles[2] and "9 outputs share" in titles[2]
    # the k*k slot numbers are written in the window
    assert {text.get_text() for text in figure.axes[1].texts} >= {str(t) for t in range(25)}


def test_footprint_figure_clamps_the_pixel_to_the_output():
    figure = pictures.carafe_footprint_figure([(3, 2, 100, -4)], low_size=(6, 5))
    title = figure.axes[0].get_title()
    assert "output (11, 0) -> low-res (5, 0)" in title and "4 of 9 slots inside" in title


def test_tile_figure_counts_what_a_block_stages():
    figure = pictures.carafe_tile_figure(8, 5, 2, block=(1, 0), max_radius=3, low_size=(8, 8))
    assert isinstance(figure, Figure)
    assert "64 outputs read 8 x 8 low-res values (shared array 14 x 14)" in figure.axes[0].get_title()
    # a block hanging over the edge of a 10 x 10 output computes only 2 x 2 of its outputs
    figure = pictures.carafe_tile_figure(8, 3, 2, block=(1, 1), max_radius=3, low_size=(5, 5))
    assert "4 outputs read 6 x 6 low-res values" in figure.axes[0].get_title()
    # scale 1, largest radius: the tile fills the shared array exactly
    figure = pictures.carafe_tile_figure(8, 7, 1, max_radius=3)
    assert "read 14 x 14 low-res values (shared array 14 x 14)" in figure.axes[0].get_title()


def test_kernels_figure_draws_one_panel_per_pixel():
    generator = torch.Generator().manual_seed(0)
    low = torch.rand(3, 6, 5, generator=generator)
    kernels = F.softmax(torch.randn(9, 12, 10, generator=generator), dim=0)
    pixels = [(0, 0), (5, 7), (11, 9)]
    figure = pictures.carafe_kernels_figure(low, kernels, 2, pixels, high_image=torch.rand(3, 12, 10),
                                            title="kernels")
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 1 + len(pixels)
    assert [axis.get_title() for axis in figure.axes[1:]] == ["1: output (0, 0)", "2: output (5, 7)",
                                                              "3: output (11, 9)"]
    # one disc per window slot, its area proportional to the weight
    discs = figure.axes[2].collections
    assert len(discs) == 9
    sizes = np.array([float(d.get_sizes()[0]) for d in discs])
    np.testing.assert_allclose(sizes, 900 * kernels[:, 5, 7].double().numpy(), rtol=1e-6)
    # gray (h, w) images and NumPy kernels work too, without the high-res panel
    figure = pictures.carafe_kernels_figure(low[0].numpy(), kernels.numpy(), 2, [(3, 3)])
    assert figure.axes[0].get_title() == "input"


def test_kernels_figure_rejects_non_square_kernels():
    with pytest.raises(ValueError, match="square"):
        pictures.carafe_kernels_figure(torch.rand(4, 4), torch.rand(8, 8, 8), 2, [(0, 0)])


def test_unsolved_kernel_reports_not_implemented_on_every_target():
    # A GPU does not report an exception raised inside a kernel; the checker reads the stub instead.
    @cuda.jit
    def stub(x, masks, out, kernel_size, scale, group):
        raise NotImplementedError("Exercise 03.4: write this part")

    with pytest.raises(NotImplementedError, match="Exercise 03.4 is not solved yet: write `carafe_group_kernel`"):
        checkers.check_carafe_group_kernel(stub)


@cuda.jit
def border_kernel_multiplying_zero_in(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                value = out.dtype.type(0)
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    value = x[n, c, row, col]
                total += masks[n, dy * kernel_size + dx, Y, X] * value  # an outside slot's mask still counts
        out[n, c, Y, X] = total


def test_a_border_kernel_multiplying_zeros_in_is_told_to_skip_the_outside_slots():
    with pytest.raises(checkers.CheckFailed, match=r"masks are nan only at the slots that read outside(.|\n)*"
                                                   r"skip the whole term there"):
        checkers.check_carafe_border_kernel(border_kernel_multiplying_zero_in)


@cuda.jit
def border_kernel_skipping_zeros(x, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        r = (kernel_size - 1) // 2
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                row, col = Y // scale - r + dy, X // scale - r + dx
                value = out.dtype.type(0)
                if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                    value = x[n, c, row, col]
                if value != 0:  # "nothing to add": but 0 * nan is nan
                    total += masks[n, dy * kernel_size + dx, Y, X] * value
        out[n, c, Y, X] = total


@cuda.jit
def padded_kernel_skipping_zeros(x_padded, masks, out, kernel_size, scale):
    i = cuda.grid(1)
    if i < out.size:
        n, c, Y, X = unravel4(i, out.shape[1], out.shape[2], out.shape[3])
        total = out.dtype.type(0)
        for dy in range(kernel_size):
            for dx in range(kernel_size):
                value = x_padded[n, c, Y // scale + dy, X // scale + dx]
                if value != 0:  # skips the padding, and the zeros of the map with it
                    total += masks[n, dy * kernel_size + dx, Y, X] * value
        out[n, c, Y, X] = total


@pytest.mark.parametrize("check, kernel, read, hint", [
    (checkers.check_carafe_border_kernel, border_kernel_skipping_zeros, r"x\[\d, \d, 1, 1\]", "never by a value"),
    # The padded kernel's message names x_padded's indices, and its fix: sum every slot
    (checkers.check_carafe_padded_kernel, padded_kernel_skipping_zeros, r"x_padded\[\d, \d, 2, 2\]",
     "the padded kernel sums all k\\*k slots, its padding included: drop the `value != 0`")])
def test_a_kernel_skipping_zero_values_is_told_to_skip_by_position(check, kernel, read, hint):
    with pytest.raises(checkers.CheckFailed, match=r"(?s)is a number for x \(2, 2, 3, 4\), kernel_size=3, scale=2, "
                                                   r"group=1(, blocks of 32 threads)?, whose x holds a 0 and a nan "
                                                   rf"inside the map; its window reads {read} = 0 at a slot whose mask "
                                                   r"is nan"
                                                   rf".*{hint}"):
        check(kernel)


def _tiled_with(mistake):
    """The lesson's tiled kernel with one mistake: "modulo" (group c % G), "first image's masks",
    "padding multiplied" (every slot summed, the tile's zeros standing for the outside ones), "zeros skipped"
    (a slot skipped where the tile holds 0) or "zero weights skipped" (and where its mask is 0)."""

    @cuda.jit
    def kernel(x, masks, out, kernel_size, scale, group):
        tile = cuda.shared.array((WINDOW, WINDOW), float32)
        channels, height, width = out.shape[1], out.shape[2], out.shape[3]
        n = cuda.blockIdx.z // channels
        c = cuda.blockIdx.z % channels
        Y0 = cuda.blockIdx.y * TILE
        X0 = cuda.blockIdx.x * TILE
        r = (kernel_size - 1) // 2
        top = Y0 // scale - r
        left = X0 // scale - r
        rows = (Y0 + TILE - 1) // scale - Y0 // scale + 1 + 2 * r
        cols = (X0 + TILE - 1) // scale - X0 // scale + 1 + 2 * r
        for j in range(cuda.threadIdx.y * TILE + cuda.threadIdx.x, rows * cols, TILE * TILE):
            row = top + j // cols
            col = left + j % cols
            value = float32(0)
            if 0 <= row < x.shape[2] and 0 <= col < x.shape[3]:
                value = x[n, c, row, col]
            tile[j // cols, j % cols] = value
        cuda.syncthreads()
        Y = Y0 + cuda.threadIdx.y
        X = X0 + cuda.threadIdx.x
        if Y < height and X < width:
            g = c % group if mistake == "modulo" else c // (channels // group)
            m = 0 if mistake == "first image's masks" else n
            ty = Y // scale - Y0 // scale
            tx = X // scale - X0 // scale
            total = float32(0)
            for dy in range(kernel_size):
                for dx in range(kernel_size):
                    inside = (0 <= Y // scale - r + dy < x.shape[2]) and (0 <= X // scale - r + dx < x.shape[3])
                    weight, value = masks[m, (g * kernel_size + dy) * kernel_size + dx, Y, X], tile[ty + dy, tx + dx]
                    if mistake == "zeros skipped":  # the tile's zeros taken for the outside slots
                        inside = value != 0
                    if mistake == "zero weights skipped":
                        inside = inside and weight != 0
                    if inside or mistake == "padding multiplied":
                        total += weight * value
            out[n, c, Y, X] = total

    return kernel


@pytest.mark.parametrize("mistake, message", [
    ("modulo", r"group c // \(C // group\)"),
    ("first image's masks", r"x \(2, 4, 3, 2\).*\n.*First mismatch at index \(1"),
    # The lesson's text had the tile's zeros stand for the padding and every slot summed: the checker passed it.
    ("padding multiplied", r"(?s)is nan for .*grid .* whose masks are nan only at the slots that read outside the map"
                           r".*skip the whole term there"),
    # Skipping by value passed every case before, whose random values are never exactly 0.
    ("zeros skipped", r"(?s)out\[\d, 0, [23], [01]\] is a number .*reads x\[\d, 0, 1, 1\] = 0 at a slot whose "
                      r"mask is nan.*never by a value"),
    ("zero weights skipped", r"(?s)out\[\d, \d, [45], [45]\] is a number .*reads x\[\d, \d, 2, 3\] = nan, at a slot "
                             r"whose mask is 0 here.*never by a value"),
])
def test_tiled_kernel_mistakes_hidden_by_one_channel_groups_or_uniform_masks_are_caught(mistake, message):
    with pytest.raises(checkers.CheckFailed, match=message):
        checkers.check_carafe_tiled_kernel(_tiled_with(mistake), TILE, MAX_RADIUS)
