"""checkers.compiled_run: a kernel's body compiled for the CPU with a GPU's
number types, run once per thread.

The kernels sit at module level, as in a notebook: the runner reads their
source."""

import math

import numpy as np
import pytest
from numba import cuda, float32

from upsamplelib import backend as ul_backend
from upsamplelib.backend import per_element
from upsamplelib.checkers.compiled_run import compiled_launcher

pytestmark = pytest.mark.skipif(not ul_backend.SIMULATOR, reason="the runner stands in for a GPU in the simulator")

SCALE = np.float32(0.525)  # 210 / 400 in float32


@cuda.jit
def times_float32(out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = i * SCALE


@cuda.jit
def coordinates(out):
    x, y = cuda.grid(2)
    if x < out.shape[1] and y < out.shape[0]:
        out[y, x, 0] = cuda.threadIdx.x + 1000 * cuda.threadIdx.y
        out[y, x, 1] = cuda.blockIdx.x + 1000 * cuda.blockIdx.y
        out[y, x, 2] = cuda.blockDim.x + 1000 * cuda.blockDim.y
        out[y, x, 3] = cuda.gridDim.x + 1000 * cuda.gridDim.y
        width, height = cuda.gridsize(2)
        out[y, x, 4] = width + 1000 * height


@cuda.jit
def thread_index_type(out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = cuda.threadIdx.x * np.float32(0.5)


@per_element
def index_of(dst):
    return dst + 1


@cuda.jit(device=True)
def device_index_of(dst):
    return dst + 1


@cuda.jit
def past_the_end(x, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[index_of(i)]


@cuda.jit
def through_device_function(x, out):
    i = cuda.grid(1)
    if i < out.size - 1:
        out[i] = x[device_index_of(i)]


@cuda.jit
def divides_by_zero(values, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = values[i] // 0


@cuda.jit
def _ul_launch(x, out):  # a name of the rewrite's own
    i = cuda.grid(1)
    if i < out.size:
        out[i] = x[i]


@cuda.jit
def python_float_times_float32(out):
    i = cuda.grid(1)
    if i < out.size:
        scale = 210 / 400  # a Python float: float32 beside a float32 in NumPy, float64 compiled
        out[i] = np.float32(i) * scale


@cuda.jit
def with_shared_memory(out):
    tile = cuda.shared.array(4, float32)
    tile[0] = 1
    cuda.syncthreads()
    out[0] = tile[0]


@cuda.jit
def with_an_atomic(out):
    cuda.atomic.add(out, 0, 1)


@cuda.jit(device=True)
def this_threads_value():
    return cuda.grid(1) * SCALE


@cuda.jit(device=True)
def through_this_threads_value():
    return this_threads_value()  # calls a helper that reads the grid, itself reading none


@cuda.jit
def times_float32_in_helpers(out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = through_this_threads_value()


@cuda.jit(device=True)
def plane_coordinates():
    x, y = cuda.grid(2)
    return x, y, cuda.threadIdx.x, cuda.blockIdx.y


@cuda.jit
def coordinates_from_a_helper(out):
    x, y, thread_x, block_y = plane_coordinates()
    if x < out.shape[1] and y < out.shape[0]:
        out[y, x, 0] = x + 1000 * y
        out[y, x, 1] = thread_x + 1000 * block_y
        out[y, x, 2] = x % cuda.warpsize


@cuda.jit(device=True)
def pixel_with_positional_only_parameters(width, /):
    x, y = cuda.grid(2)
    return x + width * y


@cuda.jit
def through_positional_only_parameters(out):
    i = pixel_with_positional_only_parameters(out.shape[1])
    if i < out.size:
        out.ravel()[i] = i


@cuda.jit(device=True)
def scaled(value, factor=2):
    return value * factor


@cuda.jit
def keyword_to_a_device_function(x, out, factor):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = scaled(x[i], factor=factor)


@cuda.jit
def grid_by_keyword(out):
    x, y = cuda.grid(ndim=2)  # the simulator takes no keyword here; a GPU's compile does
    if x < out.shape[1] and y < out.shape[0]:
        out[y, x] = x + 1000 * y


@cuda.jit
def helper_reading_the_grid_as_a_value(out):
    value = this_threads_value
    out[0] = value()


def test_helpers_reading_the_grid_get_the_threads_coordinates():
    out = np.zeros(400, np.float64)
    compiled_launcher(times_float32_in_helpers)(4, 128, out)
    assert np.array_equal(out, np.arange(400) * np.float64(SCALE))  # float64, as compiled
    out = np.full((6, 40, 3), -1, np.int64)
    compiled_launcher(coordinates_from_a_helper)((10, 2), (4, 3), out)
    simulated = np.full_like(out, -1)
    coordinates_from_a_helper[(10, 2), (4, 3)](simulated)
    assert np.array_equal(out, simulated)
    assert out[0, 33, 2] == 1  # the warp size is 32


def test_the_grid_by_keyword():
    out = np.full((6, 40), -1, np.int64)
    compiled_launcher(grid_by_keyword)((10, 2), (4, 3), out)
    assert np.array_equal(out, np.arange(40)[None, :] + 1000 * np.arange(6)[:, None])


def test_a_helper_with_positional_only_parameters_gets_the_coordinates_first():
    out = np.full((4, 8), -1, np.int64)
    compiled_launcher(through_positional_only_parameters)((2, 2), (4, 2), out)
    assert np.array_equal(out.ravel(), np.arange(32))


def test_the_simulators_missing_keywords_are_told_not_raised():
    # A GPU's compile takes keyword arguments to a device function, the simulator does not.
    from upsamplelib import checkers
    with pytest.raises(checkers.CheckFailed, match=r"keyword argument factor=\.\.\..*\n.*by position"):
        checkers.check_scale_kernel(keyword_to_a_device_function)


def test_a_helper_reading_the_grid_used_as_a_value_is_not_run():
    assert compiled_launcher(helper_reading_the_grid_as_a_value) is None


def test_an_int_times_a_float32_is_float64_as_compiled():
    """The simulator (NumPy) keeps it float32; a GPU's compile makes it float64."""
    out = np.zeros(400, np.float64)
    compiled_launcher(times_float32)(4, 128, out)
    expected = np.arange(400) * np.float64(SCALE)
    assert np.array_equal(out, expected)
    simulated = np.zeros(400, np.float64)
    times_float32[4, 128](simulated)
    assert not np.array_equal(simulated, expected)  # in float32, as NumPy computes it
    assert math.floor(simulated[40]) == 21 and math.floor(out[40]) == 20


def test_every_coordinate_is_the_threads_own():
    out = np.full((6, 10, 5), -1, np.int64)
    compiled_launcher(coordinates)((3, 2), (4, 3), out)
    simulated = np.full_like(out, -1)
    coordinates[(3, 2), (4, 3)](simulated)
    assert np.array_equal(out, simulated)


def test_a_thread_coordinate_times_a_float32_is_float64():
    out = np.zeros(8, np.float64)
    compiled_launcher(thread_index_type)(1, 8, out)
    # threadIdx.x is an int32 there: int32 times float32 is float64 in Numba too
    assert np.array_equal(out, np.arange(8) * 0.5)


def test_an_index_past_the_end_raises_index_error():
    with pytest.raises(IndexError):
        compiled_launcher(past_the_end)(1, 8, np.zeros(8, np.float32), np.zeros(8, np.float32))


def test_device_functions_are_compiled_too():
    x = np.arange(8, dtype=np.float32)
    out = np.zeros(8, np.float32)
    compiled_launcher(through_device_function)(1, 8, x, out)
    assert np.array_equal(out[:-1], x[1:])


def test_an_integer_division_by_zero_gives_zero_as_on_a_gpu():
    out = np.full(4, 7, np.int64)
    compiled_launcher(divides_by_zero)(1, 4, np.arange(4), out)
    assert np.array_equal(out, np.zeros(4))


def test_a_python_float_times_a_float32_is_float64_as_compiled():
    out = np.zeros(400, np.float64)
    compiled_launcher(python_float_times_float32)(4, 128, out)
    assert np.array_equal(out, np.arange(400) * 0.525)


@pytest.mark.parametrize("kernel", [with_shared_memory, with_an_atomic, _ul_launch])
def test_kernels_beyond_the_threads_coordinates_are_not_run(kernel):
    assert compiled_launcher(kernel) is None


def test_a_kernel_without_source_is_not_run():
    namespace = {"cuda": cuda}
    exec("def made(out):\n    out[0] = 1\n", namespace)  # noqa: S102
    assert compiled_launcher(cuda.jit(namespace["made"])) is None
