"""Lesson 04 (SAPA): the affiliation helpers compute what they say, the
pictures draw it, and the checkers pass right answers and explain wrong ones."""

import upsamplelib  # noqa: F401,I001  (first: it chooses the CUDA target before numba loads)

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402
import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numba import cuda  # noqa: E402

import upsamplelib as ul  # noqa: E402
from upsamplelib import affiliation, checkers, pictures  # noqa: E402
from upsamplelib import backend as ul_backend  # noqa: E402
from upsamplelib.backend import per_element  # noqa: E402
from upsamplelib.checkers.sapa import _shared_shape_problems  # noqa: E402
from upsamplelib.ops.sapa import sapa_similarity_reference  # noqa: E402

simulator_only = pytest.mark.skipif(not ul_backend.SIMULATOR,
                                    reason="only the simulator survives (and counts) divergent barriers")

# The hung-kernel machinery ends simulator threads with SystemExit, which pytest reports as a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def regions():
    return affiliation.two_region_example()


# --------------------------------------------------------------------------
# affiliation.py: examples
# --------------------------------------------------------------------------


def test_two_region_example_is_deterministic_and_consistent(regions):
    again = affiliation.two_region_example()
    assert torch.equal(regions.y, again.y) and torch.equal(regions.x, again.x)
    assert regions.y.shape == (1, 8, 48, 40) and regions.x.shape == (1, 8, 12, 10)
    assert regions.size == (48, 40) and regions.scale == 4
    assert set(regions.labels.unique().tolist()) == {0, 1}
    # the decoder map is the ideal output area-averaged; the ideal output is the labels seen through to_image
    torch.testing.assert_close(regions.x, F.avg_pool2d(regions.target, 4))
    torch.testing.assert_close(regions.to_image(regions.target), regions.labels.float(), atol=1e-5, rtol=0)
    # the guide is the ideal plus a texture
    assert 0 < float((regions.y - regions.target).abs().max()) < 1


def test_two_region_example_other_sizes():
    example = affiliation.two_region_example(low_size=(5, 7), scale=3, channels=4, texture=0.0, seed=3)
    assert example.y.shape == (1, 4, 15, 21) and example.x.shape == (1, 4, 5, 7)
    torch.testing.assert_close(example.y, example.target)


def test_photo_example():
    example = affiliation.photo_example(height=16, width=12, scale=4, bins=6)
    assert example.y.shape == (1, 6, 16, 12) and example.x.shape == (1, 6, 4, 3)
    assert example.labels is None and example.target is example.y
    image = example.image
    assert image.shape == (16, 12) and 0 <= float(image.min()) and float(image.max()) <= 1
    with pytest.raises(ValueError, match="multiples of scale"):
        affiliation.photo_example(height=18, width=12, scale=4)


# --------------------------------------------------------------------------
# affiliation.py: one output pixel
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pixel", [(0, 0), (5, 3), (8, 11), (8, 0)])
def test_bilinear_kernel_is_bilinear(pixel):
    h, w, s, k = 3, 4, 3, 5
    x = torch.randn(1, 1, h, w, dtype=torch.float64)
    Y, X = pixel
    kernel = affiliation.bilinear_kernel_at((h, w), Y, X, k, s).double()
    top, left = affiliation.window_origin(Y, X, k, s)
    padded = F.pad(x, (2, 2, 2, 2))[0, 0]
    window = padded[top + 2: top + 2 + k, left + 2: left + 2 + k]
    expected = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)[0, 0, Y, X]
    torch.testing.assert_close((kernel * window).sum(), expected, atol=1e-6, rtol=1e-6)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int((kernel > 0).sum()) <= 4


def test_window_inside_marks_the_out_of_map_slots():
    inside = affiliation.window_inside((3, 4), 0, 0, 5, 2)
    assert inside.shape == (5, 5)
    assert not inside[:2].any() and not inside[:, :2].any() and inside[2:, 2:].all()
    assert affiliation.window_inside((12, 10), 20, 19, 5, 4).all()


def test_affiliation_at_is_sapa_i(regions):
    Y, X = 20, 19
    view = affiliation.affiliation_at(regions, Y, X)
    q = F.layer_norm(regions.y.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
    key = F.layer_norm(regions.x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2)
    logits = sapa_similarity_reference(q, key, 5, 4)[0, :, Y, X].reshape(5, 5)
    torch.testing.assert_close(view["logits"], logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(view["kernel"], torch.softmax(logits.flatten(), 0).reshape(5, 5), atol=1e-5, rtol=1e-4)
    assert view["region"] == 1 and view["distance"] == 1.0 and view["origin"] == (3, 2)
    # the boundary pixel takes nearly all its weight from its own side (right of the line)
    assert float(view["kernel"][:, 3:].sum()) > 0.9


def test_affiliation_at_border_has_zero_logits_outside(regions):
    view = affiliation.affiliation_at(regions, 1, 2)
    assert torch.all(view["logits"][~view["inside"]] == 0)
    assert float(view["kernel"].sum()) == pytest.approx(1.0, abs=1e-5)  # out-of-map slots still take part
    with pytest.raises(ValueError, match="outside"):
        affiliation.affiliation_at(regions, 48, 0)


def test_kernels_at_compares_the_three_methods(regions):
    kernels = affiliation.kernels_at(regions, 20, 19)
    assert list(kernels) == list(affiliation.METHODS)
    for kernel in kernels.values():
        assert kernel.shape == (5, 5) and float(kernel.sum()) == pytest.approx(1.0, abs=1e-5)
    carafe = affiliation.carafe_module(8, 4).kernels(regions.x)[0, :, 20, 19].reshape(5, 5)
    torch.testing.assert_close(kernels["CARAFE"], carafe.detach())
    # untrained CARAFE is nearly uniform, SAPA-I is sharp
    assert float(kernels["CARAFE"].max()) < 0.05 and float(kernels["SAPA-I"].max()) > 0.1


def test_boundary_distance():
    labels = torch.zeros(5, 6, dtype=torch.long)
    labels[:, 4:] = 1
    assert affiliation.boundary_distance(labels, 2, 3) == 1.0
    assert affiliation.boundary_distance(labels, 2, 0) == 4.0
    assert affiliation.boundary_distance(torch.zeros(3, 3, dtype=torch.long), 1, 1) == math.inf


def test_modules_leave_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    affiliation.carafe_module(4, 2, 3, seed=1)
    affiliation.sapa_module(4, 2, 3, "B", seed=1)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------------
# affiliation.py: the measurements
# --------------------------------------------------------------------------


def test_region_figures_of_a_step_and_a_ramp():
    labels = torch.zeros(4, 10, dtype=torch.long)
    labels[:, 5:] = 1
    step = affiliation.region_figures(labels.float(), labels)
    assert step == {"within_region_variance": 0.0, "boundary_width_px": 0.0, "peak_gradient": 1.0}
    ramp = torch.linspace(0, 1, 10).repeat(4, 1)
    figures = affiliation.region_figures(ramp, labels)
    assert figures["boundary_width_px"] == 8.0  # all but the two ends lie strictly between 0.1 and 0.9
    assert figures["peak_gradient"] == pytest.approx(1 / 9)
    assert figures["within_region_variance"] > 0


def test_measure_properties_shows_both_properties(regions):
    figures = affiliation.measure_properties(regions, decoder_query=True)
    assert list(figures) == list(affiliation.METHODS) + ["SAPA-I, decoder query"]
    sapa = figures["SAPA-I"]
    for other in ("bilinear", "CARAFE"):
        assert sapa["within_region_variance"] < figures[other]["within_region_variance"] / 50
        assert sapa["boundary_width_px"] < figures[other]["boundary_width_px"]
        assert sapa["peak_gradient"] > 3 * figures[other]["peak_gradient"]
    assert sapa["boundary_width_px"] == 0.0
    # same numbers on every call, and on the reference backend
    assert affiliation.measure_properties() == affiliation.measure_properties(regions)
    reference = affiliation.measure_properties(regions, backend="torch")
    for name in affiliation.METHODS:
        for key, value in figures[name].items():
            assert reference[name][key] == pytest.approx(value, rel=1e-4, abs=1e-9)


def test_measure_properties_needs_labels():
    with pytest.raises(ValueError, match="region labels"):
        affiliation.measure_properties(affiliation.photo_example(16, 12))


def test_properties_table_and_significant():
    assert affiliation.significant(0.000123456) == "0.000123"
    assert affiliation.significant(16.04) == "16"
    assert affiliation.significant(0.0) == "0"
    assert affiliation.significant(5.256, 2) == "5.3"
    assert [affiliation.order_of_magnitude(v) for v in (2.5e-5, 1.9e-5, 0.18, 1.0, 12.0)] == [
        "1e-05", "1e-05", "1e-01", "1e+00", "1e+01"]
    table = affiliation.properties_table({"a": {"within_region_variance": 0.01234, "boundary_width_px": 5.25,
                                                "peak_gradient": 0.19}})
    header, row = table.splitlines()
    assert "within-region variance" in header and "peak gradient" in header
    assert row.split() == ["a", "0.0123", "5.25", "0.19"]


def test_train_variants_learns(regions):
    results = affiliation.train_variants(regions, steps=4)
    assert list(results) == ["bilinear", "SAPA-I", "CARAFE", "SAPA-B", "SAPA-G"]
    assert results["bilinear"]["parameters"] == results["SAPA-I"]["parameters"] == 0
    assert results["SAPA-B"]["parameters"] == sum(
        p.numel() for p in ul.SAPA(8, up_factor=4, variant="B").parameters())
    for name in ("CARAFE", "SAPA-B", "SAPA-G"):
        assert results[name]["loss_after"] < results[name]["loss_before"]
    assert results == affiliation.train_variants(regions, steps=4)


# --------------------------------------------------------------------------
# pictures.py (lesson 04 part)
# --------------------------------------------------------------------------


def test_point_affiliation_and_explorer_figures(regions):
    view = affiliation.affiliation_at(regions, 2, 2)
    figure = pictures.point_affiliation_figure(regions.image, regions.low_image, 2, 2, view["kernel"], view["logits"],
                                               regions.scale, regions.labels, view["inside"], title="t")
    assert isinstance(figure, Figure) and len(figure.axes) == 4
    texts = [t.get_text() for t in figure.axes[2].texts]
    assert len(texts) == 25 and texts[0] == "0.0"  # out-of-map logits are 0, hatched
    kernels = affiliation.kernels_at(regions, 2, 2)
    explorer = pictures.affiliation_explorer_figure(regions.image, regions.low_image, 2, 2, view["kernel"],
                                                    view["logits"], regions.scale, kernels, None, view["inside"],
                                                    title="region 0")
    assert len(explorer.axes) == 4 + 3 and explorer.texts[-1].get_text() == "region 0"
    assert [axis.get_title() for axis in explorer.axes[4:]] == list(kernels)


def test_kernel_comparison_and_profile_figures(regions):
    kernels = affiliation.kernels_at(regions, 20, 19)
    figure = pictures.kernel_comparison_figure(kernels, title="x")
    assert len(figure.axes) == 3 and figure.axes[0].get_title() == "bilinear"
    maps = {name: regions.to_image(out) for name, out in affiliation.upsample_all(regions).items()}
    profile = pictures.boundary_profile_figure(maps, 20, regions.labels)
    assert len(profile.axes) == 4
    assert len(profile.axes[3].lines) == 4  # three methods and the ideal


def test_figure_png_closes_the_figure():
    figure = plt.figure()
    png = pictures.figure_png(figure)
    assert png.startswith(b"\x89PNG") and figure.number not in plt.get_fignums()


# --------------------------------------------------------------------------
# Checkers: right answers (the lesson's solutions)
# --------------------------------------------------------------------------

THREADS = 32
MAX_AREA = 49


def sapa_embedding(module, y, x):
    q = module.q(module.norm_y(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    key = module.k(module.norm_x(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    return q, key


def similarity_reference(q, key, kernel_size, scale):
    n, d, h, w = key.shape
    windows = F.unfold(key, kernel_size, padding=(kernel_size - 1) // 2).view(n, d, kernel_size**2, h, w)
    windows = windows.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
    return (q.unsqueeze(2) * windows).sum(dim=1)


@per_element
def window_neighbour(t, Y, X, kernel_size, scale):
    radius = (kernel_size - 1) // 2
    return Y // scale + t // kernel_size - radius, X // scale + t % kernel_size - radius


@cuda.jit
def similarity_kernel(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X = i % width
        Y = (i // width) % height
        t = (i // (width * height)) % area
        n = i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        total = 0.0
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
        logits[n, t, Y, X] = total


@cuda.jit
def softmax_kernel(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X = i % width
        Y = (i // width) % height
        n = i // (width * height)
        top = logits[n, 0, Y, X]
        for t in range(1, area):
            top = max(top, logits[n, t, Y, X])
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X] - top)
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X] - top) / total


def _block_kernel(reduce_all_channels=True, divergent=False, mean_shift=False):
    """The lesson's block kernel, or one of three classic mistakes."""

    @cuda.jit
    def kernel(q, key, weights, kernel_size, scale):
        partial = cuda.shared.array((MAX_AREA, THREADS), numba.float32)
        lane = cuda.threadIdx.x
        point = cuda.blockIdx.x
        height, width = q.shape[2], q.shape[3]
        X = point % width
        Y = (point // width) % height
        n = point // (width * height)
        area = kernel_size * kernel_size
        for t in range(area):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            total = 0.0
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                if reduce_all_channels:
                    for c in range(lane, q.shape[1], THREADS):
                        total += q[n, c, Y, X] * key[n, c, row, col]
                elif lane < q.shape[1]:  # forgets the channels past the block
                    total += q[n, lane, Y, X] * key[n, lane, row, col]
            partial[t, lane] = total
        cuda.syncthreads()
        stride = THREADS // 2
        while stride > 0:
            if lane < stride:
                for t in range(area):
                    partial[t, lane] += partial[t, lane + stride]
                if divergent:
                    cuda.syncthreads()  # only the active lanes reach this barrier
            if not divergent:
                cuda.syncthreads()
            stride //= 2
        top = partial[0, 0]
        for t in range(1, area):
            if mean_shift:  # shifts by the mean logit, not the largest
                top += partial[t, 0]
            else:
                top = max(top, partial[t, 0])
        if mean_shift:
            top /= area
        total = 0.0
        for t in range(area):
            total += math.exp(partial[t, 0] - top)
        for t in range(lane, area, THREADS):
            weights[n, t, Y, X] = math.exp(partial[t, 0] - top) / total

    return kernel


similarity_block_kernel = _block_kernel()


def sapa_forward(module, y, x):
    k, s = module.up_kernel_size, module.up_factor
    q, key = module.queries_and_keys(y, x)
    q, key = q.detach().contiguous(), key.detach().contiguous()
    n, _, height, width = q.shape
    weights = q.new_empty((n, k * k, height, width))
    similarity_block_kernel[n * height * width, THREADS](q.numpy(), key.numpy(), weights.numpy(), k, s)
    return ul.carafe(x, weights, k, s, group=1)


@cuda.jit
def grad_query_kernel(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X = i % width
        Y = (i // width) % height
        c = (i // (width * height)) % channels
        n = i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            row, col = window_neighbour(t, Y, X, kernel_size, scale)
            if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:
                total += grad_logits[n, t, Y, X] * key[n, c, row, col]
        grad_q[n, c, Y, X] = total


@cuda.jit
def grad_key_kernel(grad_logits, q, grad_key, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_key.size:
        channels, height, width = grad_key.shape[1], grad_key.shape[2], grad_key.shape[3]
        col = i % width
        row = (i // width) % height
        c = (i // (width * height)) % channels
        n = i // (width * height * channels)
        radius = (kernel_size - 1) // 2
        total = 0.0
        for dy in range(kernel_size):
            anchor_row = row - dy + radius
            if 0 <= anchor_row < height:
                for dx in range(kernel_size):
                    anchor_col = col - dx + radius
                    if 0 <= anchor_col < width:
                        t = dy * kernel_size + dx
                        for Y in range(anchor_row * scale, anchor_row * scale + scale):
                            for X in range(anchor_col * scale, anchor_col * scale + scale):
                                total += grad_logits[n, t, Y, X] * q[n, c, Y, X]
        grad_key[n, c, row, col] = total


@pytest.mark.parametrize("check, answer", [
    (checkers.check_sapa_embedding, sapa_embedding),
    (checkers.check_similarity_reference, similarity_reference),
    (checkers.check_similarity_kernel, similarity_kernel),
    (checkers.check_softmax_kernel, softmax_kernel),
    (checkers.check_sapa_forward, sapa_forward),
    (checkers.check_grad_query_kernel, grad_query_kernel),
    (checkers.check_grad_key_kernel, grad_key_kernel),
], ids=lambda value: getattr(value, "__name__", getattr(getattr(value, "py_func", None), "__name__", "")))
def test_right_answers_pass(check, answer, capsys):
    check(answer)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("PASS ")


def test_block_kernel_passes_and_restores_the_switch_interval(capsys):
    import sys

    before = sys.getswitchinterval()
    checkers.check_similarity_block_kernel(similarity_block_kernel, THREADS)
    assert capsys.readouterr().out.startswith("PASS similarity_block_kernel")
    assert sys.getswitchinterval() == before


# --------------------------------------------------------------------------
# Checkers: wrong answers are explained
# --------------------------------------------------------------------------


def test_unsolved_exercise_reports_not_implemented():
    def unsolved(module, y, x):
        raise NotImplementedError("Exercise 04.1: write this part")

    with pytest.raises(NotImplementedError, match="Exercise 04.1"):
        checkers.check_sapa_embedding(unsolved)


def test_embedding_without_the_layernorm_affine_is_caught():
    def plain_layer_norm(module, y, x):
        q = module.q(F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],))).permute(0, 3, 1, 2)
        key = module.k(F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],))).permute(0, 3, 1, 2)
        return q, key

    with pytest.raises(checkers.CheckFailed, match="LayerNorm's learned scale and shift are missing"):
        checkers.check_sapa_embedding(plain_layer_norm)


def test_reference_with_replicate_padding_gets_the_border_hint():
    def replicate(q, key, kernel_size, scale):
        r = (kernel_size - 1) // 2
        padded = F.pad(key, (r, r, r, r), mode="replicate")
        n, d, h, w = key.shape
        windows = F.unfold(padded, kernel_size).view(n, d, kernel_size**2, h, w)
        windows = windows.repeat_interleave(scale, dim=3).repeat_interleave(scale, dim=4)
        return (q.unsqueeze(2) * windows).sum(dim=1)

    with pytest.raises(checkers.CheckFailed, match="outside the low-res map.*logit 0"):
        checkers.check_similarity_reference(replicate)


def test_reference_with_transposed_slots_gets_the_slot_hint():
    def transposed(q, key, kernel_size, scale):
        logits = similarity_reference(q, key, kernel_size, scale)
        n, _, height, width = logits.shape
        return logits.view(n, kernel_size, kernel_size, height, width).transpose(1, 2).reshape(logits.shape)

    with pytest.raises(checkers.CheckFailed, match="wrong order"):
        checkers.check_similarity_reference(transposed)


@cuda.jit
def skips_out_of_map(q, key, logits, kernel_size, scale):
    i = cuda.grid(1)
    if i < logits.size:
        area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
        X = i % width
        Y = (i // width) % height
        t = (i // (width * height)) % area
        n = i // (width * height * area)
        row, col = window_neighbour(t, Y, X, kernel_size, scale)
        if 0 <= row < key.shape[2] and 0 <= col < key.shape[3]:  # writes nothing outside the map
            total = 0.0
            for c in range(q.shape[1]):
                total += q[n, c, Y, X] * key[n, c, row, col]
            logits[n, t, Y, X] = total


def test_similarity_kernel_that_skips_the_border_gets_the_border_hint():
    with pytest.raises(checkers.CheckFailed, match="outside the low-res map"):
        checkers.check_similarity_kernel(skips_out_of_map)


@cuda.jit
def naive_softmax_kernel(logits, weights):
    i = cuda.grid(1)
    area, height, width = logits.shape[1], logits.shape[2], logits.shape[3]
    if i < logits.shape[0] * height * width:
        X = i % width
        Y = (i // width) % height
        n = i // (width * height)
        total = 0.0
        for t in range(area):
            total += math.exp(logits[n, t, Y, X])
        for t in range(area):
            weights[n, t, Y, X] = math.exp(logits[n, t, Y, X]) / total


def test_naive_softmax_is_told_to_subtract_the_max():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(checkers.CheckFailed, match="Subtract each point's largest logit"):
            checkers.check_softmax_kernel(naive_softmax_kernel)


def test_shared_shape_check():
    @cuda.jit
    def runtime_shape(q, key, weights, kernel_size, scale):
        partial = cuda.shared.array((kernel_size * kernel_size, THREADS), numba.float32)
        partial[0, 0] = 0.0

    @cuda.jit
    def doubled(q, key, weights, kernel_size, scale):
        partial = cuda.shared.array(2 * THREADS, numba.float32)
        partial[0] = 0.0

    assert _shared_shape_problems(runtime_shape) == ["(kernel_size * kernel_size, THREADS)"]
    assert _shared_shape_problems(doubled) == ["2 * THREADS"]
    assert _shared_shape_problems(similarity_block_kernel) == []
    with pytest.raises(checkers.CheckFailed, match="module-level constant"):
        checkers.check_similarity_block_kernel(runtime_shape, THREADS)


def test_block_kernel_that_forgets_channels_past_the_block():
    with pytest.raises(checkers.CheckFailed, match="more than the 32 threads"):
        checkers.check_similarity_block_kernel(_block_kernel(reduce_all_channels=False), THREADS)


@simulator_only
def test_block_kernel_with_a_barrier_inside_an_if_is_caught():
    with pytest.raises(checkers.CheckFailed, match="different numbers of times"):
        checkers.check_similarity_block_kernel(_block_kernel(divergent=True), THREADS)


def test_sapa_forward_without_the_similarity_is_caught():
    def uniform(module, y, x):
        k, s = module.up_kernel_size, module.up_factor
        weights = torch.full((x.shape[0], k * k, s * x.shape[2], s * x.shape[3]), 1.0 / (k * k))
        return ul.carafe(x, weights, k, s)

    with pytest.raises(checkers.CheckFailed, match="sapa_forward"):
        checkers.check_sapa_forward(uniform)


@cuda.jit
def grad_query_with_queries(grad_logits, key, grad_q, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_q.size:
        channels, height, width = grad_q.shape[1], grad_q.shape[2], grad_q.shape[3]
        X = i % width
        Y = (i // width) % height
        c = (i // (width * height)) % channels
        n = i // (width * height * channels)
        total = 0.0
        for t in range(kernel_size * kernel_size):
            total += grad_logits[n, t, Y, X]  # forgets the key
        grad_q[n, c, Y, X] = total


def test_wrong_query_gradient_is_caught():
    with pytest.raises(checkers.CheckFailed, match="(?s)grad_query_kernel.*sum over the slots"):
        checkers.check_grad_query_kernel(grad_query_with_queries)


@cuda.jit
def scatter_grad_key(grad_logits, q, grad_key, kernel_size, scale):
    i = cuda.grid(1)
    if i < grad_key.size:
        cuda.atomic.add(grad_key, (0, 0, 0, 0), 0.0)


def test_grad_key_with_atomics_is_told_to_gather():
    with pytest.raises(checkers.CheckFailed, match="gather"):
        checkers.check_grad_key_kernel(scatter_grad_key)
