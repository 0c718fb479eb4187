"""The Numba ops as PyTorch custom operators (torch.ops.upsamplelib.*):
opcheck, torch.compile(fullgraph=True) under aot_eager and inductor, FLOP
counts, meta tensors and torch.jit.trace."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import upsamplelib as ul
from test_higher_order import MODULES, module_inputs

OPS = torch.ops.upsamplelib
K, S = 3, 2


def _op_cases(backend, n=2):
    """(op, args) for every custom op, at small sizes."""
    x = torch.randn(n, 4, 3, 5)
    masks = torch.rand(n, 2 * K * K, 6, 10)
    grad_high = torch.randn(n, 4, 6, 10)
    en, de = torch.randn(n, 4, 6, 10), torch.randn(n, 4, 3, 5)
    weight, bias = torch.randn(4, 2, 3, 3), torch.randn(4)
    return [
        (OPS.interpolate, (x, 7, 9, "nearest", False, None, None, 0, backend)),
        (OPS.interpolate, (x, 6, 10, "bilinear", True, 2.0, 2.0, 0, backend)),
        (OPS.interpolate_backward, (grad_high, 3, 5, "nearest-exact", False, None, None, 1, backend)),
        (OPS.carafe, (x, masks, K, S, 2, backend)),
        (OPS.carafe_window_gather, (grad_high, masks, K, S, 2, backend)),
        (OPS.carafe_window_products, (grad_high, x, K, S, 2, backend)),
        (OPS.sapa_similarity, (grad_high, x, K, S, 1, backend)),
        (OPS.semi_shift_conv, (en, de, weight, bias, S, 2, backend, False)),
        (OPS.semi_shift_conv, (en, None, weight, None, S, 2, backend, False)),
        (OPS.semi_shift_conv, (None, de, weight, bias, S, 2, backend, False)),
        (OPS.semi_shift_conv_encoder_grad, (torch.randn(n, 4, 6, 10), weight, 2, backend)),
        (OPS.semi_shift_conv_decoder_grad, (torch.randn(n, 4, 6, 10), weight, S, 2, backend)),
        (OPS.semi_shift_conv_weight_grad, (torch.randn(n, 4, 6, 10), en, de, 3, S, 2, backend)),
    ]


@pytest.mark.parametrize("case", range(13))
def test_opcheck_cpu(case):
    op, args = _op_cases("cpu")[case]
    args = [a.double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("copies", [1, 2], ids=["4 channels", "8 channels"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_opcheck_cpu_channels_last(case, copies):
    # The interpolation loops take channels-last maps as they are and return channels-last results,
    # as the fake implementations say; bilinear from 6 channels (fewer: NCHW, copied by the caller).
    op, args = _op_cases("cpu")[case]
    args = [torch.cat([a.double()] * copies, 1).contiguous(memory_format=torch.channels_last).requires_grad_()
            if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(op, args)
    out = op(*args)
    assert out.is_contiguous(memory_format=torch.channels_last) != out.is_contiguous()
    assert out.is_contiguous(memory_format=torch.channels_last) == ("bilinear" not in args or copies == 2)


@pytest.mark.parametrize("case", [7, 8, 9])
def test_opcheck_cpu_semi_shift_channels_last(case):
    # Asked to, the cpu backend returns the semi-shift convolution channels-last, as the fake
    # implementation says; the CUDA kernels' result stays NCHW whatever the flag.
    op, args = _op_cases("cpu")[case]
    args = [a.double().contiguous(memory_format=torch.channels_last).requires_grad_()
            if isinstance(a, torch.Tensor) and a.dim() == 4 else a.double().requires_grad_()
            if isinstance(a, torch.Tensor) else a for a in args[:-1]] + [True]
    torch.library.opcheck(op, args)
    out = op(*args)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert op(*args[:-2], "cuda", True).is_contiguous() if ul.backend.SIMULATOR else True


def test_semi_shift_operator_takes_the_seven_arguments_of_graphs_saved_before_its_layout_flag():
    # A torch.export or torch.jit graph saved before the flag existed calls the operator without it.
    assert "bool channels_last=False" in str(OPS.semi_shift_conv.default._schema)
    args = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
            for shape in ((1, 2, 4, 4), (1, 2, 2, 2), (3, 2, 3, 3), (3,))]
    expected = ul.semi_shift_conv(*args, 2, backend="torch")
    expected_grads = torch.autograd.grad(expected.sum(), args)
    for call in (OPS.semi_shift_conv, ul.ops.fade.semi_shift_conv_op):  # dispatched, and eager
        out = call(*args, 2, 1, "cpu")
        assert out.is_contiguous()
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for got, want in zip(torch.autograd.grad(out.sum(), args), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_semi_shift_fake_result_takes_the_weights_dtype_as_the_loops_do():
    # A raw call may mix dtypes; with an Inf weight the one-pass loops write a result of the weight's.
    from torch._subclasses.fake_tensor import FakeTensorMode
    en, de = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(1, 2, 2, 2, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3)
    weight[0, 0, 0, 0] = float("inf")
    for channels_last in (False, True):
        real = OPS.semi_shift_conv(en, de, weight, None, 2, 1, "cpu", channels_last)
        with FakeTensorMode() as mode:
            fake = OPS.semi_shift_conv(*map(mode.from_tensor, (en, de, weight)), None, 2, 1, "cpu", channels_last)
        assert fake.dtype == real.dtype == torch.float32 and fake.stride() == real.stride()


@pytest.mark.parametrize("case", [0, 3, 6, 7])
def test_opcheck_cuda_backend(case):
    if not ul.backend.SIMULATOR:
        pytest.skip("the GPU run checks these through the module tests; opcheck here needs CPU tensors")
    op, args = _op_cases("cuda", n=1)[case]
    args = [a.double().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_every_op_is_registered_with_a_fake_kernel_and_autograd():
    names = {"interpolate", "interpolate_backward", "carafe", "carafe_window_gather", "carafe_window_products",
             "sapa_similarity", "semi_shift_conv", "semi_shift_conv_encoder_grad", "semi_shift_conv_decoder_grad",
             "semi_shift_conv_weight_grad"}
    assert {op.__name__ for op, _ in _op_cases("cpu")} == names


def _compiled_step(model, inputs, backend):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = compiled(*leaves)
    out.backward(torch.ones_like(out))
    return out.detach(), [t.grad for t in leaves] + [p.grad.clone() for p in model.parameters()]


def _eager_step(model, inputs):
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = model(*leaves)
    out.backward(torch.ones_like(out))
    return out.detach(), [t.grad for t in leaves] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", MODULES)
def test_modules_compile_fullgraph(name, compiler):
    make, _ = MODULES[name]
    torch.manual_seed(0)
    model = make()
    inputs = module_inputs(name, torch.float32)
    eager_out, eager_grads = _eager_step(model, inputs)
    model.zero_grad()
    out, grads = _compiled_step(model, inputs, compiler)
    tolerance = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, eager_out, **tolerance)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, **tolerance)


class _Functional(torch.nn.Module):
    """Every functional op in one graph."""

    def forward(self, x, masks, en, de, weight):
        up = ul.interpolate(x, scale_factor=2, mode="bilinear") + ul.interpolate(x, size=(6, 10))
        logits = ul.sapa_similarity(en, de, K, S)
        return (ul.carafe(x, masks, K, S).sum() + up.sum() + logits.sum()
                + ul.semi_shift_conv(en, de, weight, None, S).sum())


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_functional_ops_compile_fullgraph(compiler):
    inputs = (torch.randn(1, 4, 3, 5), torch.rand(1, K * K, 6, 10), torch.randn(1, 4, 6, 10),
              torch.randn(1, 4, 3, 5), torch.randn(2, 4, 3, 3))
    eager_out, eager_grads = _eager_step(_Functional(), inputs)
    out, grads = _compiled_step(_Functional(), inputs, compiler)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-4)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flop_counter_counts_every_op():
    x = torch.randn(1, 8, 4, 6, requires_grad=True)
    model = ul.CARAFE(8, compressed_channels=4)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    out_elements = 1 * 8 * 8 * 12
    assert counts["upsamplelib.carafe"] == 2 * out_elements * 25
    assert counts["upsamplelib.carafe_window_gather"] == 2 * out_elements * 25
    assert counts["upsamplelib.carafe_window_products"] == 2 * out_elements * 25
    assert counts["aten.convolution"] > 0  # the kernel predictor is counted as usual

    en, de = torch.randn(1, 4, 6, 8, requires_grad=True), torch.randn(1, 4, 3, 4, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        (ul.semi_shift_conv(en, de, weight).sum() + ul.sapa_similarity(en, de, 3, 2).sum()
         + ul.interpolate(de, scale_factor=2, mode="bilinear").sum() + ul.interpolate(de, scale_factor=2).sum()
         ).backward()
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    # Each map's convolution at its own resolution (the two-convolution form's work), plus the adds.
    assert counts["upsamplelib.semi_shift_conv"] == 2 * (6 * 8 + 3 * 4) * (5 * 4 * 9) + 5 * 6 * 8
    # The cpu backend's backward pools grad_out once (aten's avg_pool2d, which has no formula) and runs the
    # encoder's gradient ops on each map at its own resolution: the decoder's against the pooled grad_out.
    assert counts["upsamplelib.semi_shift_conv_weight_grad"] == 2 * (6 * 8 + 3 * 4) * (5 * 4 * 9)
    assert counts["upsamplelib.semi_shift_conv_encoder_grad"] == 2 * (6 * 8 + 3 * 4) * (5 * 4 * 9)
    assert "upsamplelib.semi_shift_conv_decoder_grad" not in counts
    assert counts["upsamplelib.sapa_similarity"] == 2 * 4 * 48 * 9
    assert counts["upsamplelib.interpolate"] == 9 * 4 * 48  # bilinear; nearest is a copy: 0
    assert "upsamplelib.interpolate_backward" in counts


def test_meta_tensors_give_shapes_only():
    meta = torch.device("meta")
    x, masks = torch.empty(2, 8, 5, 7, device=meta), torch.empty(2, 25, 10, 14, device=meta)
    assert ul.carafe(x, masks, 5, 2).shape == (2, 8, 10, 14)
    assert ul.interpolate(x, scale_factor=2.5, mode="nearest").shape == (2, 8, 12, 17)
    assert ul.sapa_similarity(torch.empty(2, 8, 10, 14, device=meta), x, 3, 2).shape == (2, 9, 10, 14)
    assert ul.semi_shift_conv(torch.empty(2, 8, 10, 14, device=meta), x,
                              torch.empty(4, 8, 3, 3, device=meta)).shape == (2, 4, 10, 14)
    for name, (make, _) in MODULES.items():
        model = make().to(meta)
        inputs = [t.to(meta) for t in module_inputs(name, torch.float32)]
        out = model(*inputs)
        assert out.device == meta and out.shape[2:] == (2 * inputs[-1].shape[2], 2 * inputs[-1].shape[3]), name


def _layout_copy_cases():
    """Calls whose maps are big enough for the block transpose (8 channels,
    32,768 values): it runs outside the operators when nothing traces."""
    g = torch.Generator().manual_seed(0)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    en, de, weight = torch.randn(1, 8, 128, 128, generator=g), torch.randn(1, 8, 64, 64, generator=g), \
        torch.randn(4, 8, 3, 3, generator=g)
    masks = torch.softmax(torch.randn(1, 9, 128, 128, generator=g), 1)
    return {
        "semi-shift NCHW": (lambda e, d, w: ul.semi_shift_conv(e, d, w, backend="cpu"), [en, de, weight]),
        "semi-shift channels-last": (lambda e, d, w: ul.semi_shift_conv(e, d, w, backend="cpu"),
                                     [cl(en), cl(de), weight]),
        "carafe channels-last": (lambda x, m: ul.carafe(x, m, 3, 2, backend="cpu"), [cl(de), cl(masks)]),
        "bilinear channels-last": (lambda x: ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu"),
                                   [cl(de)]),
    }


@pytest.mark.parametrize("case", ["semi-shift NCHW", "semi-shift channels-last", "carafe channels-last",
                                  "bilinear channels-last"])
def test_make_fx_fake_tensors_and_aot_autograd_trace_the_layout_copies(case):
    from functorch.compile import aot_function, nop
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    f, inputs = _layout_copy_cases()[case]
    expected = f(*inputs)
    for mode in ("real", "fake", "symbolic"):
        torch.testing.assert_close(make_fx(f, tracing_mode=mode)(*inputs)(*inputs), expected, rtol=0, atol=0)
    with FakeTensorMode() as fake_mode:
        fake = f(*[fake_mode.from_tensor(t) for t in inputs])
    assert (fake.shape, fake.stride()) == (expected.shape, expected.stride())
    leaves = [[t.clone().requires_grad_() for t in inputs] for _ in range(2)]
    aot_function(f, nop)(*leaves[0]).square().sum().backward()
    f(*leaves[1]).square().sum().backward()
    for traced, eager in zip(*leaves):
        torch.testing.assert_close(traced.grad, eager.grad)
        assert traced.grad.stride() == eager.grad.stride()


@pytest.mark.parametrize("name", MODULES)
def test_jit_trace_generalises_to_other_sizes(name):
    make, _ = MODULES[name]
    model = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace's deprecation and tracer warnings
        traced = torch.jit.trace(model, module_inputs(name, torch.float32))
    other = [F.interpolate(t, scale_factor=2) for t in module_inputs(name, torch.float32)]
    torch.testing.assert_close(traced(*other), model(*other))


def test_eager_calls_skip_the_dispatcher(monkeypatch):
    # They run the operator's function directly (the dispatcher's round trip cost 10-50 us a call),
    # with its derivative where autograd tracks a tensor; profiled or fake tensors go through
    # torch.ops, where the profiler and FlopCounterMode see the operator.
    dispatched = []
    through_torch_ops = ul.backend.Operator.dispatched.fget
    monkeypatch.setattr(ul.backend.Operator, "dispatched",
                        property(lambda op: dispatched.append(op.name) or through_torch_ops(op)))
    x = torch.randn(1, 2, 4, 4)
    expected = F.interpolate(x, scale_factor=2)
    assert torch.equal(ul.interpolate(x, scale_factor=2, backend="cpu"), expected) and dispatched == []
    leaf = x.clone().requires_grad_()
    out = ul.interpolate(leaf, scale_factor=2, mode="bilinear", backend="cpu")
    vector = torch.ones_like(out, requires_grad=True)
    (grad,) = torch.autograd.grad(out, leaf, vector, create_graph=True)
    grad.sum().backward()  # through interpolate_backward: interpolate(ones), all ones for bilinear
    assert dispatched == [] and torch.equal(grad, torch.full_like(x, 4.0))
    assert torch.equal(vector.grad, torch.ones_like(out))
    with torch.profiler.profile() as profile:
        ul.interpolate(x, scale_factor=2, backend="cpu")
    assert "upsamplelib::interpolate" in {event.name for event in profile.events()}
    with FlopCounterMode(display=False) as flops:
        ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu")
    assert flops.get_total_flops() > 0 and dispatched == ["interpolate", "interpolate"]


def test_backend_keeps_its_meaning_inside_the_op():
    x, masks = torch.randn(1, 2, 3, 3), torch.rand(1, 9, 6, 6)
    for backend in ("cpu", "cuda", "torch"):
        if backend == "cuda" and not ul.backend.SIMULATOR:
            continue
        torch.testing.assert_close(ul.carafe(x, masks, 3, 2, backend=backend),
                                   ul.carafe(x, masks, 3, 2, backend="torch"))


_COMPILE_AND_COUNT = """
import sys, torch, upsamplelib as ul
from torch._dynamo.utils import counters
assert ul.__file__.startswith(sys.argv[1]), ul.__file__
compiled = torch.compile(lambda x: ul.interpolate(x, scale_factor=2, backend="cpu") + 1, fullgraph=True)
compiled(torch.randn(1, 2, 4, 4))
print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
"""


def test_a_changed_library_misses_torch_compiles_caches_on_disk(tmp_path):
    # Inductor's cache knows an operator by its name: without the digest of the operators' sources in
    # its key, a graph compiled with the library before a change would run with the old fake strides.
    import os
    import shutil
    import subprocess
    import sys

    package = os.path.dirname(ul.__file__)
    copies = {}
    for name in ("before", "after"):
        copies[name] = tmp_path / name
        shutil.copytree(package, copies[name] / "upsamplelib", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copies["after"] / "upsamplelib" / "ops" / "interpolate.py", "a") as source:
        source.write("\n# a change\n")
    env = {key: value for key, value in os.environ.items() if "CACHE" not in key}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")

    def hits_and_misses(name):
        done = subprocess.run([sys.executable, "-c", _COMPILE_AND_COUNT, str(copies[name])], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(copies[name])})
        assert done.returncode == 0, done.stderr
        return tuple(map(int, done.stdout.split()))

    assert hits_and_misses("before") == (0, 1)
    assert hits_and_misses("before") == (1, 0)  # the cache works
    assert hits_and_misses("after") == (0, 1)
