"""The fast CUDA kernels (shared-memory tiles, block reductions) against the
teaching kernels, in the simulator, and the cached GPU launch path.

The fast kernels are what ``backend="cuda"`` runs on a GPU; in the
simulator the teaching kernels are the default, so these tests select each
variant with ``backend.kernel_variant_as``. Sizes are tiny (the simulator
runs ~8,500 threads/s) but cover several tiles, odd sizes, batch and
channels >= 2, groups, scales 2 and 3, float32 and float64.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import upsamplelib as ul
from upsamplelib import backend
from upsamplelib.ops import carafe as carafe_ops
from upsamplelib.ops import fade as fade_ops

ROOT = Path(__file__).resolve().parent.parent
DTYPES = [torch.float32, torch.float64]
#: Where backend="cuda" takes its tensors: the CPU in the simulator.
DEVICE = "cpu" if backend.SIMULATOR else "cuda"


@pytest.fixture
def launched(monkeypatch):
    """The names of the CUDA kernels launched during the test, in order
    (on a GPU with the launch cache off, so every launch is seen)."""
    names = []
    monkeypatch.setattr(backend.FAST_LAUNCH, "enabled", False)
    original = backend.launch_grid

    def record(kernel, blocks, threads, *args):
        names.append(kernel.py_func.__name__)
        return original(kernel, blocks, threads, *args)

    monkeypatch.setattr(backend, "launch_grid", record)
    return names


def both_variants(function):
    """function() run with the teaching kernels and with the fast ones."""
    results = {}
    for variant in ("teaching", "fast"):
        with backend.kernel_variant_as(variant):
            results[variant] = function()
    return results["teaching"], results["fast"]


# (N, C, h, w, k, s, G): the output spans two 16 x 16 tiles in the first
# case (18 x 10), not a whole number of them anywhere.
CARAFE_CASES = [(2, 4, 9, 5, 3, 2, 2), (2, 3, 4, 3, 5, 3, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CARAFE_CASES)
def test_tiled_carafe_forward_equals_the_teaching_kernel(case, dtype, launched):
    n, c, h, w, k, s, g = case
    x = torch.randn(n, c, h, w, dtype=dtype, device=DEVICE)
    masks = torch.randn(n, g * k * k, s * h, s * w, dtype=dtype, device=DEVICE)
    teaching, fast = both_variants(lambda: ul.carafe(x, masks, k, s, g, backend="cuda"))
    assert launched == ["carafe_forward_kernel", "carafe_forward_tiled_kernel"]
    # The same terms added in the same order: bit for bit.
    assert torch.equal(teaching, fast)
    reference = ul.carafe(x, masks, k, s, g, backend="torch")
    torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("case, dtype", [(CARAFE_CASES[0], torch.float64), (CARAFE_CASES[1], torch.float32)])
def test_tiled_window_products_equal_the_teaching_kernel(case, dtype, launched):
    """CARAFE's mask gradient, through autograd."""
    n, c, h, w, k, s, g = case
    x = torch.randn(n, c, h, w, dtype=dtype, device=DEVICE)
    masks = torch.randn(n, g * k * k, s * h, s * w, dtype=dtype, device=DEVICE)
    grad = torch.randn(n, c, s * h, s * w, dtype=dtype, device=DEVICE)

    def mask_gradient():
        m = masks.clone().requires_grad_()
        ul.carafe(x, m, k, s, g, backend="cuda").backward(grad)
        return m.grad

    teaching, fast = both_variants(mask_gradient)
    assert "carafe_window_products_tiled_kernel" in launched
    assert "carafe_grad_mask_kernel" in launched
    assert torch.equal(teaching, fast)


def test_tiled_sapa_similarity_equals_the_teaching_kernel(launched):
    """SAPA's similarity is a window product with one group. At k=5, s=2
    the patch side is 12, so 4096 // 144 = 28 channels fit in shared
    memory: 30 channels take two passes (28 + 2)."""
    q = torch.randn(2, 30, 6, 6, device=DEVICE)
    key = torch.randn(2, 30, 3, 3, device=DEVICE)
    teaching, fast = both_variants(lambda: ul.sapa_similarity(q, key, 5, 2, backend="cuda"))
    assert launched == ["carafe_grad_mask_kernel", "carafe_window_products_tiled_kernel"]
    assert torch.equal(teaching, fast)
    torch.testing.assert_close(fast, ul.sapa_similarity(q, key, 5, 2, backend="torch"))


def test_passes_through_the_patch():
    """The case above really walks the channels in two passes."""
    blocks, threads, run_channels, side = carafe_ops.tiled_launch(
        torch.empty(2, 25, 6, 6), lambda run_channels: 2 * 4, 5, 2, 30, 30)
    assert (threads, side, run_channels) == (256, 12, 28)
    assert blocks == 2 * 4 * 1


def test_tiles_fall_back_when_the_patch_does_not_fit():
    """A window too large for shared memory: no tiled launch (the teaching
    kernel runs), instead of a wrong one."""
    target = torch.empty(1, 1, 8, 8)
    assert carafe_ops.tiled_launch(target, lambda r: 1, 65, 1, 1, 8) is None
    assert carafe_ops.tiled_launch(target, lambda r: 1, 49, 1, 1, 8) is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("en_given", [True, False])
def test_reduced_weight_gradient_equals_the_teaching_kernel(dtype, en_given, launched):
    """One block per weight with a shared-memory sum, against one thread
    per weight: the same terms in another order, so equal to rounding.
    Two groups, batch 2, an odd low-res width."""
    n, c, o, h, w, k, s, groups = 2, 4, 2, 2, 3, 3, 2, 2
    en = torch.randn(n, c, s * h, s * w, dtype=dtype, device=DEVICE) if en_given else None
    de = torch.randn(n, c, h, w, dtype=dtype, device=DEVICE)
    grad = torch.randn(n, o, s * h, s * w, dtype=dtype, device=DEVICE)
    teaching, fast = both_variants(
        lambda: torch.ops.upsamplelib.semi_shift_conv_weight_grad(grad, en, de, k, s, groups, "cuda"))
    assert launched == ["semi_shift_grad_weight_kernel", "semi_shift_grad_weight_reduce_kernel"]
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(fast, teaching, rtol=tolerance, atol=tolerance)


def test_reduction_threads_are_a_power_of_two():
    assert [fade_ops.reduce_threads(p) for p in (1, 32, 33, 100, 256, 10**6)] == [32, 32, 64, 128, 256, 256]


def test_kernel_variant_selection():
    assert backend.kernel_variant() == ("teaching" if backend.SIMULATOR else "fast")
    with backend.kernel_variant_as("fast"):
        assert backend.kernel_variant() == "fast"
        with backend.kernel_variant_as("teaching"):
            assert backend.kernel_variant() == "teaching"
        assert backend.kernel_variant() == "fast"
    with pytest.raises(ValueError, match="unknown kernel variant"):
        backend.set_kernel_variant("quick")


def test_every_fast_kernel_is_in_the_ptx_check():
    for name in ("carafe_forward_tiled_kernel", "carafe_window_products_tiled_kernel",
                 "semi_shift_grad_weight_reduce_kernel"):
        assert any(key.endswith("." + name) for key in backend.CUDA_KERNELS), name


# --------------------------------------------------------------------------
# The cached launch path (backend.FastLaunch). It only runs on a GPU; what
# can be checked without one: its argument packing equals numba-cuda's own
# (_Kernel._prepare_args of the installed version), and its caching logic.
# --------------------------------------------------------------------------


def _run_as_gpu_target(code):
    """Run code in a process where upsamplelib targets the GPU (no GPU
    needed: nothing is launched), with numba-cuda's real dispatcher."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "UPSAMPLELIB_CUDA": "gpu", "UPSAMPLELIB_QUIET": "1"})


PACKING_CHECK = """
        import ctypes, types as pytypes
        import numpy as np, torch
        from upsamplelib import backend
        from numba.core import types
        from numba.cuda import dispatcher

        class Layout:
            strides_in_bytes = None
            is_contiguous_c, is_contiguous_f = True, False

        def as_device_view(tensor):  # what numba sees of a contiguous CUDA tensor
            return pytypes.SimpleNamespace(size=tensor.numel(), dtype=np.dtype(str(tensor.dtype).split(".")[1]),
                                           ptr=tensor.data_ptr(), shape=tuple(tensor.shape), _layout=Layout())

        class Hint:
            def __init__(self, value):
                self.value = value
            def to_device(self, retr, stream=0):
                return as_device_view(self.value)

        dispatcher.wrap_arg = Hint
        numba_kernel = pytypes.SimpleNamespace(extensions=[])
        cases = [(types.Array(types.float32, 4, "C"), torch.empty(2, 3, 1, 5)),
                 (types.Array(types.float64, 3, "C"), torch.empty(4, 0, 7, dtype=torch.float64)),
                 (types.Array(types.int64, 2, "C"), torch.empty(2, 9, dtype=torch.int64)),
                 (types.int64, 7), (types.float32, np.float32(0.5)), (types.float64, 0.25), (types.boolean, True)]
        def plain(values):
            return [(type(v).__name__, v.value if isinstance(v, ctypes._SimpleCData) else v) for v in values]
        for numba_type, value in cases:
            theirs, ours = [], []
            dispatcher._Kernel._prepare_args(numba_kernel, numba_type, value, 0, [], theirs)
            backend.parameter_packer(numba_type)(value, ours)
            assert plain(ours) == plain(theirs), (numba_type, plain(ours), plain(theirs))
        print("same", len(cases))
"""

# With the driver replaced by recorders: the first launch goes through
# numba, the later ones only pack and call the driver, with the cached
# stream and configuration; a float64 call has no overload recorded under
# its types, so it always takes numba's path.
CACHING_CHECK = """
        import types as pytypes
        import torch
        from upsamplelib import backend
        from numba.core import types

        torch.cuda.current_device = torch._C._cuda_getDevice = lambda: 0
        torch._C._cuda_getCurrentRawStream = lambda device: 1234
        numba_launches, driver_calls = [], []
        backend.launch_grid = lambda kernel, blocks, threads, *args: numba_launches.append((blocks, threads))
        backend.kernel_array = lambda tensor: tensor
        launch = backend.FastLaunch()
        launch.streams[1234] = "torch's stream"
        launch.configs[(3, 256)] = "config 3 x 256"
        launch.driver_launch = lambda stream, config, function, *parameters: driver_calls.append(
            (stream, config, function, parameters))

        def numba_type(value):
            if isinstance(value, torch.Tensor):
                return types.Array(types.float32 if value.dtype == torch.float32 else types.float64, value.dim(), "C")
            return types.int64

        f32 = (types.Array(types.float32, 2, "C"), types.int64)
        class Kernel:  # hashable, as numba's dispatchers are
            def __init__(self, **fields):
                self.__dict__.update(fields)

        compiled = pytypes.SimpleNamespace(
            debug=False, cooperative=False, extensions=[], argument_types=f32,
            _codelibrary=pytypes.SimpleNamespace(get_cufunc=lambda: pytypes.SimpleNamespace(kernel="cu function")))
        kernel = Kernel(overloads={f32: compiled}, typeof_pyval=numba_type)
        x = torch.zeros(2, 3)
        launch(kernel, 3, 256, (x, 5))
        assert numba_launches == [(3, 256)] and driver_calls == []
        launch(kernel, 3, 256, (x, 6))
        launch(kernel, 3, 256, (x, 7))
        assert numba_launches == [(3, 256)], numba_launches
        stream, config, function, parameters = driver_calls[-1]
        assert (stream, config, function) == ("torch's stream", "config 3 x 256", "cu function")
        assert list(parameters[:9]) == [0, 0, 6, 4, x.data_ptr(), 2, 3, 12, 4] and parameters[9].value == 7
        # float64: no compiled overload recorded under its types -> numba's path every time
        y = torch.zeros(2, 3, dtype=torch.float64)
        launch(kernel, 3, 256, (y, 5))
        launch(kernel, 3, 256, (y, 5))
        assert len(numba_launches) == 3 and len(driver_calls) == 2
        print("cached")
"""


@pytest.fixture(scope="module")
def gpu_target_checks():
    """Both checks in one process where upsamplelib targets the GPU (no
    GPU needed: nothing reaches a driver), with numba-cuda's real
    dispatcher module. Each prints its verdict line or its traceback."""
    script = "import sys, traceback\n" + "".join(
        f"try:\n    exec(compile({textwrap.dedent(code)!r}, {name!r}, 'exec'), {{}})\n"
        "except Exception:\n    traceback.print_exc(file=sys.stdout)\n"
        for name, code in (("packing", PACKING_CHECK), ("caching", CACHING_CHECK)))
    return _run_as_gpu_target(script)


def test_packed_parameters_equal_numbas(gpu_target_checks):
    assert "same 7" in gpu_target_checks.stdout.splitlines(), gpu_target_checks.stdout + gpu_target_checks.stderr


def test_fast_launch_caches_after_the_first_launch(gpu_target_checks):
    assert "cached" in gpu_target_checks.stdout.splitlines(), gpu_target_checks.stdout + gpu_target_checks.stderr


# --------------------------------------------------------------------------
# bench/gpu.py (the GPU benchmark that bench/gpu_check.sh runs): what of it
# runs without a GPU. `bash bench/gpu_check.sh --dry-run` runs every case.
# --------------------------------------------------------------------------


def _gpu_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_slot_loop_baseline_is_carafe():
    gpu_bench = _gpu_bench()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    masks = torch.randn(2, 2 * 9, 15, 12, dtype=torch.float64)
    torch.testing.assert_close(gpu_bench.carafe_slot_loop(x, masks, 3, 3, 2),
                               carafe_ops.carafe_reference(x, masks, 3, 3, 2))


@pytest.mark.skipif(not backend.SIMULATOR, reason="checks the refusal without a GPU")
def test_the_gpu_benchmark_refuses_to_run_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as raised:
        _gpu_bench().main([])
    assert raised.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err
