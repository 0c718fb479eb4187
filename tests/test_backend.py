"""The backend machinery: target choice, backend resolution, launch configuration."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import numba
from numba import cuda, prange

from upsamplelib import backend
from upsamplelib.validation import in_dtype


def _import_message(env_updates):
    env = {k: v for k, v in os.environ.items()
           if k not in ("UPSAMPLELIB_QUIET", "NUMBA_ENABLE_CUDASIM", "UPSAMPLELIB_CUDA")}
    env.update(env_updates)
    result = subprocess.run([sys.executable, "-c", "import upsamplelib, numba; print(numba.config.ENABLE_CUDASIM)"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(), result.stderr


def test_import_says_once_where_kernels_run():
    lines, stderr = _import_message({})
    messages = [line for line in lines if line.startswith("upsamplelib:")]
    assert len(messages) == 1
    assert "kernels run" in messages[0]
    assert stderr == ""


def test_forcing_the_simulator():
    lines, _ = _import_message({"UPSAMPLELIB_CUDA": "simulator"})
    assert "UPSAMPLELIB_CUDA=simulator is set" in lines[0]
    assert lines[-1] == "1"


def test_user_flag_is_honoured():
    lines, _ = _import_message({"NUMBA_ENABLE_CUDASIM": "1"})
    assert "NUMBA_ENABLE_CUDASIM=1 is set" in lines[0]


def test_quiet():
    lines, _ = _import_message({"UPSAMPLELIB_QUIET": "1"})
    assert not any(line.startswith("upsamplelib:") for line in lines)


def test_bad_target_value_is_an_error():
    env = dict(os.environ, UPSAMPLELIB_CUDA="tpu")
    result = subprocess.run([sys.executable, "-c", "import upsamplelib"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "UPSAMPLELIB_CUDA='tpu'" in result.stderr


def test_no_gpu_here_means_simulator():
    if backend._driver_gpu_name() is None:
        assert backend.SIMULATOR and backend.CUDA_TARGET == "simulator"


@pytest.mark.parametrize("n,expected", [(1, (1, 32)), (32, (1, 32)), (33, (1, 64)), (256, (1, 256)),
                                        (257, (2, 256)), (10**6, (3907, 256))])
def test_launch_config(n, expected):
    blocks, threads = backend.launch_config(n)
    assert (blocks, threads) == expected
    assert blocks * threads >= n and (blocks - 1) * threads < n


def test_launch_config_rejects_empty():
    with pytest.raises(ValueError):
        backend.launch_config(0)


def test_kernel_array_shares_memory_and_needs_contiguous():
    tensor = torch.zeros(2, 3)
    array = backend.kernel_array(tensor)
    array[1, 2] = 5
    assert tensor[1, 2] == 5
    with pytest.raises(ValueError, match="contiguous"):
        backend.kernel_array(tensor.t())


def test_kernel_array_takes_a_tensor_that_requires_grad():
    tensor = torch.zeros(2, 3, requires_grad=True)
    array = backend.kernel_array(tensor)
    assert array.shape == (2, 3) and array.ctypes.data == tensor.data_ptr()


@pytest.mark.parametrize("requires_grad", [False, True])
def test_pixels_array_is_the_channels_last_memory_and_refuses_other_layouts(requires_grad):
    tensor = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    pixels = backend.pixels_array(tensor.requires_grad_(requires_grad))
    assert pixels.shape == (2, 4, 5, 3) and pixels.flags.c_contiguous
    assert pixels.ctypes.data == tensor.data_ptr()
    assert np.array_equal(pixels, tensor.detach().permute(0, 2, 3, 1).numpy())
    with pytest.raises(ValueError, match="dense channels-last"):
        backend.pixels_array(torch.zeros(2, 3, 4, 5))  # NCHW
    with pytest.raises(ValueError, match="dense channels-last"):
        backend.pixels_array(torch.zeros(2, 3, 4, 10).contiguous(memory_format=torch.channels_last)[..., ::2])


def test_in_dtype_returns_the_tensor_itself_or_its_conversion():
    tensor = torch.zeros(2, requires_grad=True)
    assert in_dtype(tensor, torch.float32) is tensor
    converted = in_dtype(tensor, torch.float64)
    assert converted.dtype == torch.float64 and converted.grad_fn is not None


def test_resolve_backend():
    x = torch.zeros(1)
    assert backend.resolve_backend(None, [x], "op") == "cpu"
    assert backend.resolve_backend("auto", [x], "op") == "cpu"
    assert backend.resolve_backend("torch", [x], "op") == "torch"
    with pytest.raises(ValueError, match="unknown backend 3"):
        backend.resolve_backend(3, [x], "op")
    if backend.SIMULATOR:
        assert backend.resolve_backend("cuda", [x], "op") == "cuda"


def test_per_element_body_runs_on_both_targets():
    """One body compiled for the CPU and called by a simulated/GPU kernel."""
    def twice_plus(x, i):
        return x[i] * x.dtype.type(2) + x.dtype.type(1)

    body = backend.per_element(twice_plus)

    @cuda.jit
    def on_cuda(x, out):
        i = cuda.grid(1)
        if i < out.size:
            out[i] = body(x, i)

    @backend.cpu_kernel
    def on_cpu(x, out):
        for i in prange(out.size):
            out[i] = body(x, i)

    x = np.arange(37, dtype=np.float32)
    a, b = np.zeros_like(x), np.zeros_like(x)
    on_cuda[backend.launch_config(x.size)](x, a)
    on_cpu(x, b)
    np.testing.assert_array_equal(a, x * 2 + 1)
    np.testing.assert_array_equal(b, x * 2 + 1)


def test_fma_rounds_once():
    a, b, c = np.float32(1 + 2**-12), np.float32(1 - 2**-12), np.float32(-1)
    # a*b = 1 - 2**-24 exactly: representable in float32 only with a single rounding
    assert backend.fma(a, b, c) == np.float32(-(2**-24))
    assert backend.fma(1.0 + 2**-30, 1.0 - 2**-30, -1.0) == -(2**-60)


_FORKED_WORKERS = r"""
import sys
import warnings
import numba
import torch
import torch.utils.data as data
import upsamplelib as ul

torch.manual_seed(0)
x = torch.randn(1, 16, 48, 48, dtype=torch.float64)  # big enough for the block transpose (32768 values, 8 channels)
masks = torch.softmax(torch.randn(1, 25, 96, 96, dtype=torch.float64), dim=1)
q, key = torch.randn(1, 8, 96, 96, dtype=torch.float64), torch.randn(1, 8, 48, 48, dtype=torch.float64)
en, de = torch.randn(1, 16, 96, 96, dtype=torch.float64), x
weight, bias = torch.randn(4, 16, 3, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)


def every_op(backend):
    leaf = x.clone().requires_grad_()
    reassembled = ul.carafe(leaf, masks, 5, 2, backend=backend)
    (grad,) = torch.autograd.grad(reassembled, leaf, torch.ones_like(reassembled))
    return [ul.interpolate(x, scale_factor=2, mode="bilinear", backend=backend),
            ul.interpolate(x, scale_factor=2, mode="nearest"),  # auto
            reassembled.detach(), grad,
            ul.sapa_similarity(q, key, 5, 2, backend=backend),
            ul.semi_shift_conv(en.contiguous(memory_format=torch.channels_last), de, weight, bias, 2,
                               backend=backend),
            torch.ops.upsamplelib.channels_last_copy(en)]


class Carafe(torch.nn.Module):
    def forward(self, x, masks):
        return ul.carafe(x, masks, 5, 2, backend="cpu")


class Outputs(data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = every_op("cpu")
        try:  # its backend was chosen in the parent
            exported.module()(x, masks)
            refused = ""
        except RuntimeError as error:
            refused = str(error)
        return outputs, ul.backend.FORKED_AFTER_OPENMP, sorted({str(w.message)[:60] for w in caught}), refused


in_parent = every_op("cpu")  # the parent's parallel loops start its threading layer
exported = torch.export.export(Carafe(), (x, masks))
layer = numba.threading_layer()
gnu = layer == "omp" and sys.modules["numba.np.ufunc.omppool"].openmp_vendor == "GNU"
loader = data.DataLoader(Outputs(), batch_size=None, num_workers=2, multiprocessing_context="fork")
for outputs, rerouted, messages, refused in loader:
    assert rerouted == gnu, (layer, rerouted)
    assert all("runs its PyTorch form" in message for message in messages) and len(messages) == 4 * rerouted
    assert ("forked after Numba's OpenMP threads started" in refused) == gnu, refused
    for ours, theirs in zip(outputs, in_parent, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert outputs[-1].is_contiguous(memory_format=torch.channels_last)
assert not ul.backend.FORKED_AFTER_OPENMP
print("workers agree; threading layer", layer, messages)
"""


def test_forked_dataloader_workers_run_every_op_after_the_parent_ran_parallel_loops():
    # On GNU OpenMP a forked child's first parallel Numba loop kills it (SIGTERM): the workers would die.
    result = subprocess.run([sys.executable, "-c", _FORKED_WORKERS], capture_output=True, text=True, timeout=600,
                            env={k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "workers agree" in result.stdout


_THREAD_COUNTS = r"""
import numba
import numpy as np
import torch
import torch.utils.data as data
import upsamplelib as ul


@numba.njit(parallel=True)
def threads_used(n):
    ids = np.empty(n, np.int64)
    for i in numba.prange(n):
        ids[i] = numba.get_thread_id()
    return len(set(ids))


x = torch.randn(1, 4, 8, 8)


def after_an_op():
    # (PyTorch's thread count, Numba's, the threads a parallel loop used)
    ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu")
    return torch.get_num_threads(), numba.get_num_threads(), threads_used(1000)


class InWorker(data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):  # the worker has set PyTorch's count to 1 before
        return after_an_op()


def check(got, expected):
    # TBB's work stealing may leave a thread without iterations; the other layers split a prange evenly
    assert list(got[:2]) == list(expected[:2]), (got, expected)
    assert got[2] == expected[2] or numba.threading_layer() == "tbb" and 1 <= got[2] <= expected[2], (got, expected)


if __name__ == "__main__":
    torch.set_num_threads(1)  # before the first op: starting Numba's threads must not reset it
    check(after_an_op(), (1, 1, 1))
    torch.set_num_threads(2)
    check(after_an_op(), (2, 2, 2))
    torch.set_num_threads(1)
    check(after_an_op(), (1, 1, 1))
    torch.set_num_threads(8)  # more than NUMBA_NUM_THREADS: capped
    check(after_an_op(), (8, 2, 2))
    torch.set_num_threads(2)
    numba.set_num_threads(1)  # the user's own choice for Numba stays
    check(after_an_op(), (2, 1, 1))
    loader = data.DataLoader(InWorker(), batch_size=None, num_workers=1, multiprocessing_context="spawn")
    (in_worker,) = list(loader)
    check(in_worker, (1, 1, 1))
    print("numba follows torch")
"""


def test_cpu_loops_follow_torch_set_num_threads(tmp_path):
    # Before, Numba ran NUMBA_NUM_THREADS threads whatever PyTorch's count (2 in a DataLoader worker that set 1),
    # and its first parallel loop reset PyTorch's count to that.
    script = tmp_path / "thread_counts.py"  # a file: the spawned worker imports the Dataset from it
    script.write_text(_THREAD_COUNTS)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "NUMBA_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "numba follows torch" in result.stdout


@numba.njit(parallel=True)
def _record_threads(ids):
    for i in numba.prange(ids.size):
        ids[i] = numba.get_thread_id()


@pytest.mark.skipif(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS) < 2, reason="needs 2 threads")
def test_a_small_cpu_loop_runs_on_one_thread_and_a_large_one_on_all():
    # Below the grain a parallel loop only risks waiting for a busy core: one thread, as PyTorch does.
    threads = backend.follow_torch_threads()
    small, large = torch.zeros(backend.SERIAL_ELEMENTS - 1, dtype=torch.int64), torch.zeros(1 << 20, dtype=torch.int64)
    backend.run(_record_threads, "cpu", small.numel(), small)
    assert small.unique().tolist() == [0]
    assert numba.get_num_threads() == threads  # put back after the call
    backend.run(_record_threads, "cpu", large.numel(), large)
    assert len(large.unique()) == threads
    assert numba.get_num_threads() == threads
