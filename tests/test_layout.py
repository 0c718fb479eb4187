"""upsamplelib.layout: NCHW <-> channels-last copies by 8 x 8 block
transposes (vector shuffles), against PyTorch's own copies."""

import pytest
import torch

import upsamplelib as ul
from upsamplelib.layout import (FEWEST_FAST_CHANNELS, SMALLEST_FAST_COPY, TALL_TILE, TILE, to_channels_first,
                                to_channels_last)

CHANNELS_LAST = torch.channels_last

# (N, C, H, W): whole blocks and tiles, and edges of every width: channels
# and pixels not multiples of 8, more than one tile of each, several images;
# more pixels than channels and fewer (the loop order and tile each way).
SHAPES = [(1, 64, 128, 128), (2, 25, 33, 41), (3, 8, 64, 64), (1, 9, 150, 90), (1, TILE + 9, 30, 17),
          (1, 130, 17, 19), (3, TALL_TILE + 11, 9, 11), (1, 300, 11, 13)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_copies_equal_pytorchs(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    # the block-transpose path, not the fallback
    assert x.numel() >= SMALLEST_FAST_COPY and x.shape[1] >= FEWEST_FAST_CHANNELS
    expected = x.contiguous(memory_format=CHANNELS_LAST)
    last = to_channels_last(x)
    assert torch.equal(last, expected) and last.stride() == expected.stride()
    first = to_channels_first(expected)
    assert torch.equal(first, x) and first.is_contiguous()
    # distinct values everywhere: a wrong index cannot hide behind equal ones
    ramp = torch.arange(x.numel(), dtype=dtype).reshape(shape)
    assert torch.equal(to_channels_last(ramp), ramp.contiguous(memory_format=CHANNELS_LAST))
    assert torch.equal(to_channels_first(ramp.contiguous(memory_format=CHANNELS_LAST)), ramp)


@pytest.mark.parametrize("x", [torch.randn(1, 4, 5, 6), torch.randn(1, 64, 32, 32, dtype=torch.float16),
                               torch.randn(2, 64, 32, 64)[:, :, :, ::2], torch.randn(1, 1, 200, 200),
                               torch.randn(2, 3, 150, 90)],
                         ids=["small", "float16", "strided", "one channel", "few channels"])
def test_other_tensors_go_to_channels_last_by_pytorchs_copy(x):
    last = to_channels_last(x)
    assert torch.equal(last, x) and last.is_contiguous(memory_format=CHANNELS_LAST)
    first = to_channels_first(last)
    assert torch.equal(first, x) and first.is_contiguous()


def test_views_with_a_storage_offset_and_special_values_copy_exactly():
    storage = torch.randn(3, 40, 64, 64)
    storage[1, 5, 7, 9], storage[1, 6, 0, 0], storage[2, 7, 63, 63] = float("nan"), float("inf"), -0.0
    for view in (storage[1:], storage[:, 3:40]):  # contiguous NCHW views, not at the storage's start
        assert view.storage_offset() > 0
        last = to_channels_last(view)
        expected = view.contiguous(memory_format=CHANNELS_LAST)
        assert torch.equal(last.view(torch.int32), expected.view(torch.int32))  # bit for bit: NaN, -0.0
        back = to_channels_first(expected[1:])
        assert torch.equal(back.view(torch.int32), view[1:].contiguous().view(torch.int32))


def test_a_tensor_already_in_the_layout_is_returned_as_it_is():
    x = torch.randn(1, 16, 64, 64)
    assert to_channels_first(x) is x
    last = x.contiguous(memory_format=CHANNELS_LAST)
    assert to_channels_last(last) is last


def test_a_contiguous_tensor_with_other_strides_for_its_size_one_dimensions_gets_the_usual_ones():
    # One channel stored channels-last is NCHW too (is_contiguous), with the strides torch.empty would not
    # give; the ops' fake implementations promise torch.empty's. A view, not a copy.
    one_channel = torch.empty(2, 1, 3, 4, memory_format=CHANNELS_LAST).copy_(torch.randn(2, 1, 3, 4))
    assert one_channel.is_contiguous() and one_channel.stride() != torch.empty(2, 1, 3, 4).stride()
    got = to_channels_first(one_channel)
    assert got.stride() == torch.empty(2, 1, 3, 4).stride() and got.data_ptr() == one_channel.data_ptr()
    assert torch.equal(got, one_channel)


def test_nchw_strides_are_the_ones_torch_empty_gives():
    import itertools

    from upsamplelib.layout import nchw_strides

    for shape in itertools.product(range(4), repeat=4):
        assert nchw_strides(shape) == torch.empty(shape).stride(), shape


@pytest.mark.parametrize("name", ["channels_last_copy", "channels_first_copy"])
def test_the_copy_operators_are_differentiable_and_traceable(name):
    op = getattr(torch.ops.upsamplelib, name)
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    if name == "channels_first_copy":
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    torch.library.opcheck(op, (x,))
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(lambda t: op(t) ** 2, (x,))
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: op(t * 2) + 1, backend="aot_eager", fullgraph=True)
    out = compiled(x.detach())
    assert torch.equal(out, x.detach() * 2 + 1) and out.stride() == op(x.detach()).stride()


@pytest.mark.parametrize("size", [(1, 64, 32, 32), (1, 3, 4, 5)], ids=["block transpose", "small"])
def test_gradients_come_back_in_the_layout_of_the_tensor_they_are_for(size):
    # autograd would otherwise copy a leaf's gradient into its layout, by PyTorch's slower copy;
    # a small tensor takes the operators too when autograd tracks it.
    nchw = torch.randn(size, requires_grad=True)
    last = torch.randn(size).contiguous(memory_format=CHANNELS_LAST).requires_grad_()
    (grad,) = torch.autograd.grad((to_channels_last(nchw) * 3).sum(), nchw)
    assert torch.equal(grad, torch.full_like(nchw, 3)) and grad.is_contiguous()
    (grad,) = torch.autograd.grad((to_channels_first(last) * 3).sum(), last)
    assert torch.equal(grad, torch.full_like(last, 3)) and grad.stride() == last.stride()


@pytest.mark.parametrize("size", [(1, 64, 24, 24), (1, 3, 4, 5)], ids=["block transpose", "small"])
@pytest.mark.parametrize("copy", [to_channels_last, to_channels_first])
def test_eager_copies_of_tracked_tensors_are_differentiable_to_any_order(copy, size):
    # Eagerly, a tensor autograd tracks takes the copy operators' gradient without their dispatch.
    x = torch.randn(size, dtype=torch.float64)
    if copy is to_channels_first:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    x.requires_grad_()
    out = copy(x)
    assert torch.equal(out, x) and out.grad_fn is not None and out.stride() != x.stride()
    assert torch.autograd.gradcheck(copy, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda t: copy(t) ** 2, (x,), fast_mode=True)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    assert torch.equal(grad, grad_out) and grad.stride() == x.stride()


def _op_calls():
    """(name, function, NCHW inputs) of each operator, at sizes the block transpose copies."""
    x, masks = torch.randn(1, 64, 24, 24), torch.softmax(torch.randn(1, 9, 48, 48), 1)
    weight = torch.randn(8, 64, 3, 3)
    return [("interpolate", lambda t: ul.interpolate(t, scale_factor=2, mode="bilinear", backend="cpu"), [x]),
            ("carafe", lambda t, m: ul.carafe(t, m, 3, 2, backend="cpu"), [x, masks]),
            ("sapa_similarity", lambda q, k: ul.sapa_similarity(q, k, 3, 2, backend="cpu"),
             [torch.randn(1, 64, 48, 48), x]),
            ("semi_shift_conv", lambda en, de: ul.semi_shift_conv(en, de, weight, None, 2, backend="cpu"),
             [torch.randn(1, 64, 48, 48), x])]


@pytest.mark.parametrize("case", range(4), ids=[name for name, _, _ in _op_calls()])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CHANNELS_LAST], ids=["NCHW", "channels-last"])
def test_every_operator_gives_gradients_in_the_layout_of_its_maps(case, layout):
    # Autograd would otherwise copy each leaf's gradient into its layout, with PyTorch's slower copy.
    _, function, inputs = _op_calls()[case]
    references = [t.clone().requires_grad_() for t in inputs]
    expected_out = function(*references)
    grad_out = torch.randn_like(expected_out)
    expected = torch.autograd.grad(expected_out, references, grad_out)
    leaves = [t.contiguous(memory_format=layout).requires_grad_() for t in inputs]
    out = function(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out)
    assert [g.stride() for g in grads] == [t.stride() for t in leaves]
    for got, want in zip((out, *grads), (expected_out, *expected)):
        # The semi-shift convolution's are PyTorch's convolutions run in its maps' layout, whose sums of
        # 576 products round by layout (F.conv2d's own, NCHW against channels-last: 1.1e-4 at values up
        # to 104 here); the other operators' loops give the same values in both layouts.
        scale = want.abs().max().item() if case == 3 else 1.0
        torch.testing.assert_close(got, want, rtol=1.3e-6, atol=1e-5 * scale)


def test_channels_last_strides_are_the_ones_torch_empty_gives():
    """The worked-out strides ``with_channels_last_strides`` compares with,
    for every shape with sizes 0 to 3 (zero and one are the special cases)."""
    import itertools

    from upsamplelib.layout import channels_last_strides

    for shape in itertools.product(range(4), repeat=4):
        assert channels_last_strides(shape) == torch.empty(shape, memory_format=torch.channels_last).stride(), shape
