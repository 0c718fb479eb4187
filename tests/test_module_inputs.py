"""The modules check their input and their constructor arguments, and say
what is wrong (ValueError or TypeError naming the value) before any work;
the simulator serves launches from several threads."""

import threading

import pytest
import torch

import upsamplelib as ul


def _expect(error, match, function, *args, **kwargs):
    with pytest.raises(error, match=match):
        function(*args, **kwargs)


GUIDED = {
    "SAPA": lambda: ul.SAPA(4, 6, embedding_dim=8),
    "SAPA-I": lambda: ul.SAPA(4, variant="I"),
    "FADE": lambda: ul.FADE(4, embedding_dim=8),
}


def _pair(name, n=1, dtype=torch.float32):
    low = 6 if name == "SAPA" else 4
    return torch.randn(n, 4, 6, 8, dtype=dtype), torch.randn(n, low, 3, 4, dtype=dtype)


def test_carafe_module_forward_checks():
    module = ul.CARAFE(4, compressed_channels=8)
    _expect(ValueError, r"built for 4", module, torch.randn(1, 3, 5, 5))
    _expect(ValueError, r"unbatched.*x.unsqueeze\(0\)", module, torch.randn(4, 5, 5))
    _expect(ValueError, r"must be 4-D", module, torch.randn(1, 1, 4, 5, 5))
    _expect(TypeError, r"floating-point.*torch.int64", module, torch.ones(1, 4, 5, 5, dtype=torch.int64))
    _expect(TypeError, r"x is torch.float64 but the module's parameters are torch.float32", module,
            torch.randn(1, 4, 5, 5, dtype=torch.float64))
    _expect(TypeError, r"sparse.*to_dense", module, torch.randn(1, 4, 5, 5).to_sparse())
    _expect(TypeError, r"must be a torch.Tensor", module, [[1.0]])


@pytest.mark.parametrize("name", GUIDED)
def test_guided_modules_forward_checks(name):
    module = GUIDED[name]()
    high, low = _pair(name)
    first, second = ("y", "x") if name.startswith("SAPA") else ("en", "de")
    if low.shape[1] == high.shape[1]:
        _expect(ValueError, "look swapped", module, low, high)
    _expect(ValueError, rf"unbatched.*{first}.unsqueeze", module, high[0], low)
    _expect(ValueError, rf"unbatched.*{second}.unsqueeze", module, high, low[0])
    _expect(ValueError, r"has 5 channels.*built for", module, torch.randn(1, 5, 6, 8), low)
    _expect(TypeError, r"floating-point", module, high.to(torch.int32), low)
    _expect(TypeError, rf"{first} is torch.float32 but {second} is torch.float64", module, high, low.double())
    _expect(ValueError, r"batch sizes differ", module, torch.cat([high, high]), low)
    _expect(ValueError, rf"exactly .* x the size of {second}", module, high[:, :, :5], low)
    if name != "SAPA-I":
        _expect(TypeError, r"parameters are torch.float32", module, high.double(), low.double())


def test_swapped_arguments_are_named_even_with_equal_channels():
    _expect(ValueError, r"look swapped.*forward\(y, x\)", ul.SAPA(4, variant="I"), torch.randn(1, 4, 3, 4),
            torch.randn(1, 4, 6, 8))
    _expect(ValueError, r"look swapped.*forward\(en, de\)", ul.FADE(4, embedding_dim=8), torch.randn(1, 4, 3, 4),
            torch.randn(1, 4, 6, 8))


def test_checks_happen_before_any_work():
    # A wrong call leaves no trace in autograd: nothing ran.
    module = ul.FADE(4, embedding_dim=8)
    with pytest.raises(ValueError):
        module(torch.randn(1, 4, 6, 8), torch.randn(1, 3, 3, 4))
    assert all(p.grad is None for p in module.parameters())


def test_autocast_may_mix_dtypes():
    module = ul.CARAFE(4, compressed_channels=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(1, 4, 5, 5))
    assert out.shape == (1, 4, 10, 10)


@pytest.mark.parametrize("value,error", [(0, ValueError), (-4, ValueError), (8.0, TypeError), ("64", TypeError),
                                         (True, TypeError)])
def test_constructor_sizes(value, error):
    _expect(error, "compressed_channels", ul.CARAFE, 4, compressed_channels=value)
    _expect(error, "embedding_dim", ul.SAPA, 4, embedding_dim=value)
    _expect(error, "embedding_dim", ul.FADE, 4, embedding_dim=value)


def test_constructor_flags_and_dilation():
    _expect(ValueError, "encoder_dilation", ul.CARAFE, 4, encoder_dilation=-1)
    _expect(ValueError, "encoder_dilation", ul.CARAFE, 4, encoder_dilation=0)
    _expect(TypeError, "lite must be True or False", ul.FADE, 4, lite="no")
    _expect(TypeError, "lite must be True or False", ul.FADE, 4, lite=1)
    _expect(TypeError, "qkv_bias must be True or False", ul.SAPA, 4, qkv_bias="yes")


def test_semi_shift_conv_bias_checks():
    en, de, weight = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2), torch.randn(3, 2, 3, 3)
    _expect(TypeError, r"bias must be a floating-point tensor .* got torch.complex64", ul.semi_shift_conv, en, de,
            weight, torch.randn(3, dtype=torch.complex64))
    _expect(TypeError, r"bias must be a floating-point .* got torch.int64", ul.semi_shift_conv, en, de, weight,
            torch.ones(3, dtype=torch.int64))
    _expect(TypeError, r"bias must be a floating-point .* got torch.bool", ul.semi_shift_conv, en, de, weight,
            torch.ones(3, dtype=torch.bool))
    _expect(ValueError, r"bias must be of shape \(3,\).*got \(4,\)", ul.semi_shift_conv, en, de, weight,
            torch.randn(4))
    _expect(TypeError, r"bias must be a torch.Tensor", ul.semi_shift_conv, en, de, weight, [0.0, 0.0, 0.0])


def test_sparse_inputs_of_the_functional_ops():
    x, masks = torch.randn(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    _expect(TypeError, r"x is a torch.sparse_coo tensor", ul.carafe, x.to_sparse(), masks, 3, 2)
    _expect(TypeError, r"input is a torch.sparse_coo tensor", ul.interpolate, x.to_sparse(), scale_factor=2)
    _expect(TypeError, r"key is a torch.sparse_coo tensor", ul.sapa_similarity, torch.randn(1, 2, 6, 6),
            x.to_sparse(), 3, 2)


@pytest.mark.skipif(not ul.backend.SIMULATOR, reason="checks the simulator's serialisation")
def test_simulated_launches_from_several_threads_are_correct():
    x, masks = torch.randn(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    expected = ul.carafe(x, masks, 3, 2, backend="torch")
    images = torch.randn(1, 2, 5, 4)
    expected_up = ul.interpolate(images, scale_factor=2, mode="bilinear", backend="torch")
    errors, results = [], []

    def work(i):
        try:
            for _ in range(2):
                if i % 2:
                    results.append(torch.allclose(ul.carafe(x, masks, 3, 2, backend="cuda"), expected))
                else:
                    results.append(torch.allclose(ul.interpolate(images, scale_factor=2, mode="bilinear",
                                                                 backend="cuda"), expected_up))
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert results == [True] * 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_module_and_function_runs_under_autocast(dtype):
    # Inside autocast the semi-shift convolution's cpu path ran PyTorch's
    # convolutions in bfloat16 and handed the result to a Numba loop.
    torch.manual_seed(0)
    high, low = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 3, 4)
    weight, bias = torch.randn(5, 4, 3, 3), torch.randn(5)
    exact = ul.semi_shift_conv(high, low, weight, bias)
    modules = [(ul.CARAFE(4, compressed_channels=8), (low,)), (ul.SAPA(4, embedding_dim=8), (high, low)),
               (ul.FADE(4, embedding_dim=8), (high, low)), (ul.FADE(4, embedding_dim=8, lite=True), (high, low))]
    with torch.autocast("cpu", dtype=dtype):
        torch.testing.assert_close(ul.semi_shift_conv(high, low, weight, bias), exact)
        for module, inputs in modules:
            inputs = [t.clone().requires_grad_() for t in inputs]
            out = module(*inputs)
            out.square().sum().backward()
            assert torch.isfinite(out).all()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs)


@pytest.mark.parametrize("name", ["SAPA", "FADE"])
def test_guided_modules_at_scale_1(name):
    # Both maps have one size at scale 1: the swapped-arguments check refused every call.
    torch.manual_seed(0)
    module = ul.SAPA(4, up_factor=1, embedding_dim=8) if name == "SAPA" else ul.FADE(4, scale=1, embedding_dim=8)
    high, low = torch.randn(1, 4, 5, 7), torch.randn(1, 4, 5, 7)
    out = module(high, low)
    assert out.shape == (1, 4, 5, 7)
    module.backend = "torch"
    torch.testing.assert_close(module(high, low), out)


@pytest.mark.parametrize("backend", ["cpu", "cuda", "torch"])
def test_an_empty_batch_gives_an_empty_result(backend):
    # As PyTorch's layers (and F.interpolate, which ul.interpolate must equal) do, gradients included.
    high, low = torch.randn(0, 4, 6, 8, requires_grad=True), torch.randn(0, 4, 3, 4, requires_grad=True)
    masks, weight = torch.randn(0, 9, 6, 8, requires_grad=True), torch.randn(5, 4, 3, 3, requires_grad=True)
    results = {
        "interpolate": (ul.interpolate(low, scale_factor=2, mode="bilinear", backend=backend), (0, 4, 6, 8)),
        "carafe": (ul.carafe(low, masks, 3, 2, backend=backend), (0, 4, 6, 8)),
        "sapa_similarity": (ul.sapa_similarity(high, low, 3, 2, backend=backend), (0, 9, 6, 8)),
        "semi_shift_conv": (ul.semi_shift_conv(high, low, weight, backend=backend), (0, 5, 6, 8)),
    }
    for name, (out, shape) in results.items():
        assert out.shape == shape, name
    sum(out.sum() for out, _ in results.values()).backward()
    assert high.grad.shape == high.shape and low.grad.shape == low.shape and masks.grad.shape == masks.shape
    assert weight.grad is not None and not weight.grad.any()
    torch.testing.assert_close(results["interpolate"][0], torch.nn.functional.interpolate(
        low, scale_factor=2, mode="bilinear"))
    modules = [(ul.CARAFE(4, compressed_channels=8), (low,)), (ul.SAPA(4, embedding_dim=8), (high, low)),
               (ul.FADE(4, embedding_dim=8), (high, low)), (ul.FADE(4, embedding_dim=8, lite=True), (high, low))]
    for module, inputs in modules:
        module.backend = backend
        out = module(*inputs)
        assert out.shape == (0, 4, 6, 8), type(module).__name__
        out.sum().backward()
        assert all(p.grad is not None and not p.grad.any() for p in module.parameters()), type(module).__name__


def test_only_the_batch_may_be_empty():
    _expect(ValueError, r"empty.*\(1, 0, 4, 4\)", ul.carafe, torch.randn(1, 0, 4, 4), torch.randn(1, 9, 8, 8), 3, 2)
    _expect(ValueError, r"weight is empty", ul.semi_shift_conv, torch.randn(1, 4, 6, 8), torch.randn(1, 4, 3, 4),
            torch.randn(0, 4, 3, 3))
    _expect(ValueError, r"empty.*\(0, 4, 0, 4\)", ul.CARAFE(4), torch.randn(0, 4, 0, 4))
    _expect(ValueError, r"weight must be 4-D \(O, C // groups, k, k\)", ul.semi_shift_conv, torch.randn(1, 4, 6, 8),
            torch.randn(1, 4, 3, 4), torch.randn(5, 4, 3))


def _negated(tensor):
    """``tensor``'s values as a view with PyTorch's negative bit: its memory
    holds them negated, as ``x.conj().imag`` of a complex map does."""
    return torch._neg_view(tensor.neg())


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_a_tensor_with_the_negative_bit_is_read_as_its_values(backend):
    # The kernels read memory: such an input (contiguous, so nothing copies it first) raised on the cpu
    # backend and in the simulator, and a GPU would have read its values with the wrong sign.
    torch.manual_seed(0)
    high, low = torch.randn(1, 4, 6, 8), torch.randn(1, 4, 3, 4)
    masks, weight, bias = torch.softmax(torch.randn(1, 9, 6, 8), 1), torch.randn(5, 4, 3, 3), torch.randn(5)
    calls = {
        "interpolate": (lambda x: ul.interpolate(x, scale_factor=2, mode="bilinear", backend=backend), [low]),
        "interpolate channels-last": (lambda x: ul.interpolate(x, scale_factor=2, mode="nearest", backend=backend),
                                      [low.contiguous(memory_format=torch.channels_last)]),
        "carafe": (lambda x, m: ul.carafe(x, m, 3, 2, backend=backend), [low, masks]),
        "sapa_similarity": (lambda q, k: ul.sapa_similarity(q, k, 3, 2, backend=backend), [high, low]),
        "semi_shift_conv": (lambda e, d, w, b: ul.semi_shift_conv(e, d, w, b, backend=backend),
                            [high, low, weight, bias]),
    }
    for name, (op, inputs) in calls.items():
        for position in range(len(inputs)):
            leaves = [t.clone().requires_grad_() for t in inputs]
            given = [_negated(t) if i == position else t for i, t in enumerate(leaves)]
            layout = torch.channels_last if "channels-last" in name else torch.contiguous_format
            assert given[position].is_neg() and given[position].is_contiguous(memory_format=layout)
            out = op(*given)
            twins = [t.clone().requires_grad_() for t in inputs]
            expected = op(*twins)
            assert torch.equal(out, expected), (name, position)
            grad = torch.randn_like(out)
            out.backward(grad)
            expected.backward(grad)
            for leaf, twin in zip(leaves, twins):
                torch.testing.assert_close(leaf.grad, twin.grad, msg=f"{name}, input {position}")


def test_a_launch_refuses_a_tensor_with_the_negative_bit():
    # The CUDA launch hands over memory addresses; the CPU loops' NumPy view refuses such a tensor itself.
    negated = _negated(torch.ones(2, 3))
    with pytest.raises(ValueError, match="negative bit.*resolve_neg"):
        ul.backend._pack_array(negated, [])
    with pytest.raises(RuntimeError, match="negative bit"):
        ul.backend.kernel_array(negated)
