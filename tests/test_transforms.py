"""What a researcher's training code does around the operators, found
missing in a trial: torch.export with dynamic shapes past the example's
size, and vmap (eager and compiled) and batched gradients of the
operators on the cpu backend."""

from __future__ import annotations

import upsamplelib as ul  # noqa: I001  (first: it chooses the CUDA target before numba loads)
import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim, export


@pytest.mark.parametrize("lite", [False, True])
def test_fade_exported_with_dynamic_shapes_runs_past_the_example_size(lite):
    torch.manual_seed(0)
    fade = ul.FADE(16, embedding_dim=16, lite=lite).eval()
    half, batch = Dim("half", min=2, max=128), Dim("batch", min=1, max=64)
    program = export(fade, (torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8)),
                     dynamic_shapes={"en": {0: batch, 2: 2 * half, 3: 2 * half}, "de": {0: batch, 2: half, 3: half}})
    # 4 x 16 x 64 x 64: large enough for the library's block transpose, which the example was not
    en, de = torch.randn(4, 16, 64, 64), torch.randn(4, 16, 32, 32)
    torch.testing.assert_close(program.module()(en, de), fade(en, de), rtol=0, atol=0)


class _Resize(torch.nn.Module):
    def __init__(self, **arguments):
        super().__init__()
        self.arguments = arguments

    def forward(self, x):
        return ul.interpolate(x, **self.arguments)


# (input size, scale): outputs on both sides of PyTorch's nearest threshold (out_h + out_w <= 128)
_RESIZE_SIZES = [((9, 11), 2.37), ((40, 60), 2.37), ((101, 37), 2.37), ((30, 31), 2.0), ((70, 3), 2.0)]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("mode,align_corners", [("nearest", None), ("nearest-exact", None), ("bilinear", False),
                                                ("bilinear", True)])
def test_interpolate_exported_with_dynamic_sizes_runs_every_size_in_its_range(mode, align_corners, strict):
    # Before, the public function rounded the traced output size with int() (a guard on its value: non-strict
    # export refused "Constraints violated"), and picked PyTorch's nearest index rule by that size (a guard
    # that made the exported program refuse a size on the threshold's other side).
    torch.manual_seed(0)
    sizes = {}
    for scale in (2.37, 2.0):
        module = _Resize(scale_factor=scale, mode=mode, align_corners=align_corners)
        dims = {0: Dim("n", min=1, max=4), 2: Dim("h", min=2, max=128), 3: Dim("w", min=2, max=128)}
        sizes[scale] = (module, export(module, (torch.randn(2, 5, 8, 8),), dynamic_shapes={"x": dims},
                                       strict=strict).module())
    for (height, width), scale in _RESIZE_SIZES:
        module, program = sizes[scale]
        for x in (torch.randn(3, 5, height, width),
                  torch.randn(1, 5, height, width).contiguous(memory_format=torch.channels_last)):
            expected = F.interpolate(x, scale_factor=scale, mode=mode, align_corners=align_corners)
            got = program(x)
            if mode == "bilinear":
                torch.testing.assert_close(got, module(x), rtol=0, atol=0)
                torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(got, expected), (height, width, scale)


def test_compiled_interpolate_with_dynamic_sizes_compiles_once_across_the_nearest_threshold():
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: ul.interpolate(x, scale_factor=2.37, backend="cpu"), backend=counter,
                             dynamic=True)
    for (height, width), _ in _RESIZE_SIZES:
        x = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
        got = compiled(x)
        assert torch.equal(got, F.interpolate(x, scale_factor=2.37))
        vectors = torch.randn_like(got)
        (grad,) = torch.autograd.grad(got, x, vectors)
        (expected,) = torch.autograd.grad(F.interpolate(x, scale_factor=2.37), x, vectors)
        torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 1


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_of_fade_eager_and_compiled_equals_a_loop_over_the_batch():
    torch.manual_seed(0)
    fade = ul.FADE(8, embedding_dim=8).eval().double()
    en, de = torch.randn(3, 2, 8, 16, 16, dtype=torch.float64), torch.randn(3, 2, 8, 8, 8, dtype=torch.float64)
    expected = torch.stack([fade(a, b) for a, b in zip(en, de)])
    torch.testing.assert_close(torch.func.vmap(fade)(en, de), expected, rtol=0, atol=1e-14)
    # Compiled, Dynamo traced the channels-last copies outside the op, which ask is_contiguous: "NYI: querying
    # is_contiguous inside of vmap" before. (A function, not the module: vmap names its function with repr,
    # which Dynamo cannot trace for a module.)
    torch._dynamo.reset()
    compiled = torch.compile(torch.func.vmap(lambda e, d: fade(e, d)), fullgraph=True)
    torch.testing.assert_close(compiled(en, de), expected, rtol=0, atol=1e-14)
    weight, bias = torch.randn(5, 8, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    semi_shift = torch.func.vmap(lambda e, d: ul.semi_shift_conv(e, d, weight, bias, 2, backend="cpu"))
    torch.testing.assert_close(torch.compile(semi_shift, fullgraph=True)(en, de), semi_shift(en, de),
                               rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_batched_gradients_of_semi_shift_conv_equal_the_torch_backend():
    torch.manual_seed(0)
    en = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    de = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(3, 2, 5, 8, 8, dtype=torch.float64)
    grads = {backend: torch.autograd.grad(ul.semi_shift_conv(en, de, weight, scale=2, backend=backend),
                                          (en, de, weight), vectors, is_grads_batched=True)
             for backend in ("cpu", "torch")}
    for got, expected in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    jacobians = {backend: torch.autograd.functional.jacobian(
        lambda e: ul.semi_shift_conv(e, de.detach()[:1, :, :2, :2], weight.detach(), scale=2, backend=backend),
        en.detach()[:1, :, :4, :4], vectorize=True) for backend in ("cpu", "torch")}
    torch.testing.assert_close(jacobians["cpu"], jacobians["torch"], rtol=1e-12, atol=1e-12)


def _vmapped_cases():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 4, 8, 8, dtype=torch.float64)
    masks = torch.softmax(torch.randn(3, 1, 25, 16, 16, dtype=torch.float64), 2)
    q, key = torch.randn(3, 1, 4, 16, 16, dtype=torch.float64), torch.randn(3, 1, 4, 8, 8, dtype=torch.float64)
    carafe_module, sapa_module = ul.CARAFE(4).double().eval(), ul.SAPA(4, 4).double().eval()
    return {
        "interpolate bilinear": (lambda a: ul.interpolate(a, scale_factor=2, mode="bilinear", backend="cpu"), (x,)),
        "interpolate nearest": (lambda a: ul.interpolate(a, scale_factor=2, mode="nearest", backend="cpu"), (x,)),
        "carafe": (lambda a, b: ul.carafe(a, b, 5, 2, 1, backend="cpu"), (x, masks)),
        "sapa_similarity": (lambda a, b: ul.sapa_similarity(a, b, 5, 2, backend="cpu"), (q, key)),
        "CARAFE": (lambda a: carafe_module(a), (x,)),
        "SAPA": (lambda a, b: sapa_module(a, b), (q, x)),
    }


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.parametrize("name", list(_vmapped_cases()))
def test_vmap_of_every_operator_eager_and_compiled_equals_a_loop(name):
    # The nearest mode asked a batched tensor for its memory format: "NYI: querying is_contiguous inside of
    # vmap", eagerly too, before.
    function, inputs = _vmapped_cases()[name]
    expected = torch.stack([function(*[t[i] for t in inputs]) for i in range(inputs[0].shape[0])])
    torch.testing.assert_close(torch.func.vmap(function)(*inputs), expected, rtol=0, atol=0)
    torch._dynamo.reset()
    compiled = torch.compile(torch.func.vmap(function), fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), expected, rtol=0, atol=1e-14)


def _channels_last_maps(*batch, channels=8, height=32, width=37):
    """Maps of shape (*batch, N, channels, height, width), each (N, C, H, W) map channels-last."""
    dims = len(batch) + 1
    return torch.randn(*batch, 2, height, width, channels).permute(*range(dims), dims + 2, dims, dims + 1)


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.parametrize("shape,scale", [((3, 2, 6, 10, 10), 2.098), ((2, 2, 6, 40, 30), 2.3),
                                         ((2, 1, 2, 32, 37), (3.37, 1.002))])
def test_vmap_of_nearest_interpolate_equals_vmap_of_f_interpolate_bit_for_bit(shape, scale):
    # A small output and two large ones: PyTorch's index math differs between them (see nearest_rule); the
    # first and the last fail with the other one's.
    x = torch.randn(shape)
    ours = torch.func.vmap(lambda a: ul.interpolate(a, scale_factor=scale, mode="nearest", backend="cpu"))(x)
    assert torch.equal(ours, torch.func.vmap(lambda a: F.interpolate(a, scale_factor=scale, mode="nearest"))(x))


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_of_nearest_over_channels_last_maps_follows_pytorchs_folded_batch():
    # PyTorch's batching rule folds vmap's dimension into N as a view where it can, so channels-last maps of
    # more than 3 channels keep its channels-last kernel's index math; ours took the contiguous one's and
    # differed in 123264 values of the first case (a review's reproducer).
    scale, vmap = (3.37, 1.002), torch.func.vmap
    ours = lambda a: ul.interpolate(a, scale_factor=scale, mode="nearest", backend="cpu")  # noqa: E731
    theirs = lambda a: F.interpolate(a, scale_factor=scale, mode="nearest")  # noqa: E731
    x = _channels_last_maps(2)
    assert torch.equal(vmap(ours)(x), vmap(theirs)(x))
    assert torch.equal(vmap(ours, in_dims=1)(x.movedim(0, 1)), vmap(theirs, in_dims=1)(x.movedim(0, 1)))
    nested = _channels_last_maps(2, 3)
    assert torch.equal(vmap(vmap(ours))(nested), vmap(vmap(theirs))(nested))
    assert torch.equal(vmap(vmap(ours), in_dims=1)(nested.movedim(0, 1)),
                       vmap(vmap(theirs), in_dims=1)(nested.movedim(0, 1)))


# --------------------------------------------------------------------------
# The torch.func transforms of the gradient: grad, vjp, jacrev, hessian and
# their vmaps raised "it must override the setup_context staticmethod" on
# every operator before (PyTorch 2.13's register_autograd generates an
# old-style autograd function, which functorch refuses).
# --------------------------------------------------------------------------

_ALL = (0, 1, 2, 3)


def _operator_cases(backend):
    """name -> (function of tensors, shapes of its tensors): each public op, small."""
    return {
        "nearest": (lambda x: ul.interpolate(x, scale_factor=2, mode="nearest", backend=backend), [(1, 2, 3, 3)]),
        "bilinear": (lambda x: ul.interpolate(x, scale_factor=2, mode="bilinear", backend=backend), [(1, 2, 3, 3)]),
        "bilinear align_corners size": (
            lambda x: ul.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True, backend=backend),
            [(1, 2, 3, 4)]),
        "carafe": (lambda x, m: ul.carafe(x, m, 3, 2, 1, backend=backend), [(1, 2, 3, 3), (1, 9, 6, 6)]),
        "sapa_similarity": (lambda q, k: ul.sapa_similarity(q, k, 3, 2, backend=backend), [(1, 2, 4, 4), (1, 2, 2, 2)]),
        "semi_shift_conv": (lambda e, d, w, b: ul.semi_shift_conv(e, d, w, b, 2, backend=backend),
                            [(1, 2, 4, 4), (1, 2, 2, 2), (3, 2, 3, 3), (3,)]),
    }


def _scalar(function):
    """A non-linear scalar of the op's output, so that second derivatives are not zero."""
    def loss(*tensors):
        out = function(*tensors)
        return (out.sin() * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()
    return loss


def _doubled(tensors):
    return [torch.stack([t, 2 * t]) for t in tensors]


_FUNC_TRANSFORMS = {
    "grad": lambda f, a: torch.func.grad(_scalar(f), argnums=_ALL[:len(a)])(*a),
    "vjp": lambda f, a: torch.func.vjp(f, *a)[1](torch.ones_like(f(*a)).cumsum(-1)),
    "jacrev": lambda f, a: torch.func.jacrev(f, argnums=_ALL[:len(a)])(*a),
    "vmap of grad": lambda f, a: torch.func.vmap(torch.func.grad(_scalar(f), argnums=_ALL[:len(a)]))(*_doubled(a)),
    "grad of vmap": lambda f, a: torch.func.grad(lambda *b: _scalar(torch.func.vmap(f))(*b),
                                                 argnums=_ALL[:len(a)])(*_doubled(a)),
    "hessian": lambda f, a: torch.func.hessian(_scalar(f), argnums=_ALL[:len(a)])(*a),
    "jacrev of jacrev": lambda f, a: torch.func.jacrev(torch.func.jacrev(_scalar(f), argnums=_ALL[:len(a)]),
                                                       argnums=_ALL[:len(a)])(*a),
    "jacfwd": lambda f, a: torch.func.jacfwd(f, argnums=_ALL[:len(a)])(*a),
    "jvp of grad": lambda f, a: torch.func.jvp(torch.func.grad(_scalar(f), argnums=_ALL[:len(a)]), tuple(a),
                                               tuple(torch.linspace(-1, 2, t.numel(), dtype=t.dtype).reshape(t.shape)
                                                     for t in a)),
}


def _operator_inputs(name, shapes):
    torch.manual_seed(0)
    tensors = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    if name == "carafe":
        tensors[1] = tensors[1].softmax(1)
    return tensors


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # PyTorch's own jvp decompositions load
@pytest.mark.parametrize("transform", list(_FUNC_TRANSFORMS))
@pytest.mark.parametrize("name", list(_operator_cases("cpu")))
def test_torch_func_transforms_of_every_operator_equal_the_torch_backend(name, transform):
    function, shapes = _operator_cases("cpu")[name]
    inputs = _operator_inputs(name, shapes)
    expected = _FUNC_TRANSFORMS[transform](_operator_cases("torch")[name][0], inputs)
    torch.testing.assert_close(_FUNC_TRANSFORMS[transform](function, inputs), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("transform", ["grad", "jvp of grad"])
def test_torch_func_transforms_on_the_cuda_kernels_in_the_simulator(transform):
    # The CUDA backend's own derivative ops (the semi-shift's decoder gradient is one the cpu backend lacks).
    for name in ("carafe", "semi_shift_conv"):
        function, shapes = _operator_cases("cuda")[name]
        inputs = _operator_inputs(name, shapes)
        expected = _FUNC_TRANSFORMS[transform](_operator_cases("torch")[name][0], inputs)
        torch.testing.assert_close(_FUNC_TRANSFORMS[transform](function, inputs), expected, rtol=1e-10, atol=1e-10)


def _module_cases():
    torch.manual_seed(0)
    en, de = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 4, 4, dtype=torch.float64)
    return {
        "CARAFE": (ul.CARAFE(4, 2), (de,)),
        "SAPA": (ul.SAPA(4, 4, embedding_dim=4), (en, de)),
        "FADE": (ul.FADE(4, embedding_dim=4), (en, de)),
        "FADE lite": (ul.FADE(4, embedding_dim=4, lite=True), (en, de)),
    }


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.parametrize("name", list(_module_cases()))
def test_parameter_gradients_by_torch_func_equal_autograds(name):
    # What a researcher's functional training step does: torch.func.grad over functional_call.
    module, inputs = _module_cases()[name]
    module = module.double()
    module.backend = "cpu"
    params = {key: p.detach() for key, p in module.named_parameters()}
    target = torch.randn_like(module(*inputs))

    def loss(parameters):
        return (torch.func.functional_call(module, parameters, inputs) - target).pow(2).sum()

    got = torch.func.grad(loss)(params)
    expected = torch.autograd.grad(loss(dict(module.named_parameters())), list(module.parameters()))
    for (key, value), reference in zip(got.items(), expected):
        torch.testing.assert_close(value, reference, rtol=1e-11, atol=1e-12, msg=key)
    per_example = torch.func.vmap(torch.func.grad(lambda p, *x: (torch.func.functional_call(module, p, tuple(
        t[None] for t in x)) - target).pow(2).sum()), in_dims=(None,) + (0,) * len(inputs))(params, *[
            torch.cat([t, t]) for t in inputs])
    for key, value in per_example.items():
        torch.testing.assert_close(value, torch.stack([got[key], got[key]]), rtol=1e-11, atol=1e-12, msg=key)


def test_functionalize_of_operators_and_modules_equals_the_plain_call():
    # functionalize is a functorch transform with no rule for an autograd function: under it a call must take
    # the operator itself (a review found "NYI: Functionalize rule for custom_function_call").
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 3)
    resize = lambda a: ul.interpolate(a, scale_factor=2, mode="bilinear", backend="cpu")  # noqa: E731
    torch.testing.assert_close(torch.func.functionalize(resize)(x), resize(x), rtol=0, atol=0)
    fade = ul.FADE(4, embedding_dim=4).eval()
    en, de = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(torch.func.functionalize(fade)(en, de), fade(en, de), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_an_input_changed_in_place_after_the_call_does_not_fail_the_gradient(backend):
    # The derivative of interpolate needs no input, and the semi-shift's none of its bias: saving them for
    # backward made autograd refuse ("modified by an inplace operation"), where the reference does not.
    def loss(x):
        y, bias = x * 1, x[0, :, 0, 0] * 1
        out = ul.interpolate(y, scale_factor=2, mode="bilinear", backend=backend)
        weight = torch.ones(2, 2, 3, 3, dtype=x.dtype)
        shifted = ul.semi_shift_conv(out, x.cos(), weight, bias, 2, backend=backend)
        y.relu_()
        bias.relu_()
        return (out * out).sum() + (shifted * shifted).sum() + y.sum() + bias.sum()

    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    expected = torch.func.grad(loss)(x) if backend == "torch" else None
    got = torch.func.grad(loss)(x)
    batch = torch.randn(2, 1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    (batched,) = torch.autograd.grad(torch.func.vmap(loss)(batch).sum(), batch)
    eager = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(loss(eager), eager)
    torch.testing.assert_close(got, plain, rtol=1e-12, atol=1e-12)
    for i in range(2):
        member = batch[i].detach().clone().requires_grad_()
        torch.testing.assert_close(batched[i], torch.autograd.grad(loss(member), member)[0], rtol=1e-12, atol=1e-12)
    if expected is not None:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_jvp_over_a_gradient_leaves_out_inputs_without_a_tangent_as_the_reference_does():
    # The jvp of the weight gradient with respect to de alone: grad_out and en carry no tangent, and en holds
    # an Inf. Given zeros for their tangents (autograd's default), the CUDA backend's weight-gradient op added
    # weight_grad(0, en, de), whose 0 * Inf made the tangent NaN where the reference's is finite.
    torch.manual_seed(0)
    en, de = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(1, 1, 2, 2, dtype=torch.float64)
    en[0, 0, 1, 1] = float("inf")
    weight, cotangent = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.randn(1, 1, 4, 4, dtype=torch.float64)
    tangent = torch.randn_like(de)

    def weight_gradient_tangent(backend):
        def weight_gradient(d):
            return torch.func.grad(lambda w: (ul.semi_shift_conv(en, d, w, backend=backend) * cotangent).sum())(weight)
        return torch.func.jvp(weight_gradient, (de,), (tangent,))[1]

    expected = weight_gradient_tangent("torch")
    assert torch.isfinite(expected).all()
    for backend in ("cuda", "cpu"):
        torch.testing.assert_close(weight_gradient_tangent(backend), expected, rtol=1e-12, atol=1e-12)


def _forward_over_reverse(function, inputs):
    """The tangent of the gradient by torch.autograd's forward mode over its reverse mode."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(t, torch.linspace(-1, 2, t.numel(), dtype=t.dtype).reshape(t.shape))
                 for t in leaves]
        grads = torch.autograd.grad(_scalar(function)(*duals), duals, create_graph=True)
        return [torch.autograd.forward_ad.unpack_dual(g).tangent for g in grads]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("name", list(_operator_cases("cpu")))
def test_forward_mode_over_a_backward_pass_equals_the_torch_backend(name):
    # torch.autograd.forward_ad over torch.autograd.grad (a Hessian-vector product): before, the public
    # functions added the tangent outside the operators, the backward's operators met tangents and PyTorch
    # refused them ("You must implement the jvp function").
    inputs = _operator_inputs(name, _operator_cases("cpu")[name][1])
    got = _forward_over_reverse(_operator_cases("cpu")[name][0], inputs)
    expected = _forward_over_reverse(_operator_cases("torch")[name][0], inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    hessians = [torch.autograd.functional.hessian(_scalar(_operator_cases(backend)[name][0]), tuple(inputs),
                                                  vectorize=True, outer_jacobian_strategy="forward-mode")
                for backend in ("cpu", "torch")]
    torch.testing.assert_close(hessians[0], hessians[1], rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_forward_mode_takes_the_autograd_function_only_for_inputs_with_tangents():
    # Under forward_ad alone, a call whose inputs carry no tangent runs as outside forward mode (its output has
    # no tangent either); before, it paid the autograd function (211 us against 86 for a 1x8x4x4 map).
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    plain = ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu")
    with torch.autograd.forward_ad.dual_level():
        untouched = ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu")
        dual = ul.interpolate(torch.autograd.forward_ad.make_dual(x, torch.ones_like(x)), scale_factor=2,
                              mode="bilinear", backend="cpu")
        assert torch.autograd.forward_ad.unpack_dual(untouched).tangent is None
        tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    assert type(untouched.grad_fn) is type(plain.grad_fn) and "eager" in type(plain.grad_fn).__name__
    assert "transformable" in type(dual.grad_fn).__name__
    torch.testing.assert_close(untouched, plain, rtol=0, atol=0)
    torch.testing.assert_close(tangent, ul.interpolate(torch.ones_like(x), scale_factor=2, mode="bilinear",
                                                       backend="torch"), rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated")
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_mode_under_a_dispatch_mode_and_a_jit_trace_keeps_the_tangent(requires_grad):
    # A review of the change above found: under FlopCounterMode (or make_fx) inside dual_level, semi_shift_conv's
    # layout copy, an operator called inside its kernel below autograd, crashed reading tangents there; and
    # torch.jit.trace inside dual_level kept the untangented call, whose traced function then dropped tangents.
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils.flop_counter import FlopCounterMode

    forward_ad = torch.autograd.forward_ad
    en, de, weight, bias = _operator_inputs("semi_shift_conv", _operator_cases("cpu")["semi_shift_conv"][1])
    en, de = en.requires_grad_(requires_grad), de.requires_grad_(requires_grad)
    semi = _operator_cases("cpu")["semi_shift_conv"][0]
    expected = _operator_cases("torch")["semi_shift_conv"][0](en, de, weight, bias)
    expected_tangent = _operator_cases("torch")["semi_shift_conv"][0](torch.ones_like(en), torch.zeros_like(de), weight,
                                                                       None)

    def with_and_without_a_tangent(*tensors):
        with forward_ad.dual_level():
            plain = semi(*tensors)
            dual = semi(forward_ad.make_dual(tensors[0], torch.ones_like(tensors[0])), *tensors[1:])
            return plain, forward_ad.unpack_dual(dual).tangent

    with FlopCounterMode(display=False):
        plain, tangent = with_and_without_a_tangent(en, de, weight, bias)
    traced_plain, traced_tangent = make_fx(with_and_without_a_tangent)(en, de, weight, bias)(en, de, weight, bias)
    for got, want in ((plain, expected), (tangent, expected_tangent), (traced_plain, expected),
                      (traced_tangent, expected_tangent)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    x = en.detach()
    with forward_ad.dual_level():
        traced = torch.jit.trace(lambda a: ul.interpolate(a, scale_factor=2, mode="bilinear", backend="cpu"), (x,),
                                 check_trace=False)
        dual = traced(forward_ad.make_dual(x, torch.ones_like(x)))
        torch.testing.assert_close(forward_ad.unpack_dual(dual).tangent, torch.ones(1, 2, 8, 8, dtype=x.dtype))


def _batched_gradients_with_tangents(function, inputs, create_graph, dual_inputs):
    """(gradient, its tangent) of each input: torch.autograd.grad with is_grads_batched inside forward mode,
    the first ``dual_inputs`` inputs carrying tangents; with ``create_graph``, also the gradient of a scalar
    of those gradients (None entries where it has none)."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    with torch.autograd.forward_ad.dual_level():
        duals = [torch.autograd.forward_ad.make_dual(t, torch.linspace(-1, 2, t.numel(), dtype=t.dtype).reshape(t.shape))
                 if i < dual_inputs else t for i, t in enumerate(leaves)]
        out = function(*duals)
        vectors = torch.linspace(-2, 1, 3 * out.numel(), dtype=out.dtype).reshape(3, *out.shape)
        grads = torch.autograd.grad(out, duals, vectors, is_grads_batched=True, create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
        results = [tuple(torch.autograd.forward_ad.unpack_dual(g)) for g in grads]
        if create_graph:
            scalar = sum((g.sin() * torch.linspace(-1, 1, g.numel(), dtype=g.dtype).reshape(g.shape)).sum()
                         for g in grads)
            results.append(torch.autograd.grad(scalar, leaves, allow_unused=True))
        return results


@pytest.mark.filterwarnings("ignore:.*batching rule")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("dual_inputs", ["all", "the first", "none"])
@pytest.mark.parametrize("backend", ["cpu", "cuda"])
@pytest.mark.parametrize("name", ["carafe", "sapa_similarity", "semi_shift_conv", "nearest times a dual scalar"])
def test_batched_gradients_of_inputs_with_tangents_equal_the_torch_backend(name, backend, dual_inputs, create_graph):
    # Before, carafe, sapa_similarity and semi_shift_conv raised "Only the 'batched grad' use case is supported"
    # (the backward's operators, on autograd's legacy batched tensors, took an autograd function), interpolate's
    # gradient lost its tangent silently (the dispatcher's function dropped it), and with no tangent at all a
    # further gradient of carafe's batched gradients raised ("element 0 of tensors does not require grad").
    def function(b):
        if name == "nearest times a dual scalar":  # the scalar first: its tangent alone moves x's gradient
            return lambda c, x: ul.interpolate(x, scale_factor=2, mode="nearest", backend=b) * c.sum()
        return _operator_cases(b)[name][0]
    shapes = [(2,), (1, 2, 3, 3)] if name == "nearest times a dual scalar" else _operator_cases("cpu")[name][1]
    inputs = _operator_inputs(name, shapes)
    dual_count = {"all": len(inputs), "the first": 1, "none": 0}[dual_inputs]
    got = _batched_gradients_with_tangents(function(backend), inputs, create_graph, dual_count)
    expected = _batched_gradients_with_tangents(function("torch"), inputs, create_graph, dual_count)
    if create_graph:
        for a, b in zip(got.pop(), expected.pop()):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for (grad, tangent), (expected_grad, expected_tangent) in zip(got, expected):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)
        assert (tangent is None) == (expected_tangent is None)
        if tangent is not None:
            torch.testing.assert_close(tangent, expected_tangent, rtol=1e-10, atol=1e-10)
    assert any(tangent is not None for _, tangent in got) == (dual_inputs != "none")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_one_tensor_passed_as_two_inputs_gets_both_tangents(layout):
    # semi_shift_conv(x, x, ...) at scale 1 and sapa_similarity(q, q, ...): the jvp took its inputs back from
    # the saved tensors by identity, found x at the first position twice, and left the second out (a review
    # found tangents off by half their size, silently).
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64).contiguous(memory_format=layout)
    weight, bias = torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    tangents = (torch.randn_like(x), torch.randn_like(weight), torch.randn_like(bias))
    cases = {
        "semi_shift_conv": lambda b: lambda a, w, c: ul.semi_shift_conv(a, a, w, c, 1, backend=b),
        "sapa_similarity": lambda b: lambda a, w, c: ul.sapa_similarity(a, a, 3, 1, backend=b) * c.sum() + w.sum(),
    }
    for name, make in cases.items():
        expected = torch.func.jvp(make("torch"), (x, weight, bias), tangents)[1]
        for backend in ("cpu", "cuda"):
            got = torch.func.jvp(make(backend), (x, weight, bias), tangents)[1]
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name} {backend}")
            with torch.autograd.forward_ad.dual_level():
                duals = [torch.autograd.forward_ad.make_dual(p, t) for p, t in zip((x, weight, bias), tangents)]
                got = torch.autograd.forward_ad.unpack_dual(make(backend)(*duals)).tangent
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=f"{name} {backend} forward_ad")


class _DropsTheFirst(torch.autograd.Function):
    """2 * z, with no gradient for y: y's producer gets an undefined gradient."""

    @staticmethod
    def forward(y, z):
        return z * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def jvp(ctx, tangent_y, tangent_z):
        return tangent_z * 2 if tangent_z is not None else None

    @staticmethod
    def backward(ctx, grad):
        return None, grad * 2


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_an_undefined_gradient_of_the_output_gives_none_under_forward_mode_and_torch_func():
    # The autograd function the transforms take does not materialise zero tangents, nor so zero gradients:
    # its backward met None ("'NoneType' object has no attribute 'contiguous'", a review's reproducer).
    torch.manual_seed(0)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    masks = torch.randn(1, 9, 6, 6, dtype=torch.float64).softmax(1).requires_grad_()
    z = torch.randn(2, dtype=torch.float64, requires_grad=True)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        out = _DropsTheFirst.apply(ul.carafe(dual, masks, 3, 2, 1, backend="cpu"), z)
        grads = torch.autograd.grad(out.sum(), [x, masks, z], allow_unused=True)
    assert grads[0] is None and grads[1] is None
    torch.testing.assert_close(grads[2], torch.full_like(z, 2))
    grads = torch.func.grad(lambda a, b, c: _DropsTheFirst.apply(ul.carafe(a, b, 3, 2, 1, backend="cpu"), c).sum(),
                            argnums=(0, 1, 2))(x.detach(), masks.detach(), z.detach())
    assert not grads[0].any() and not grads[1].any()
    torch.testing.assert_close(grads[2], torch.full_like(z, 2))
