"""Checkers of lesson 04 (SAPA: embedding, similarity, softmax, the fused
block kernel, the whole upsampler, and the backward of the similarity)."""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import sys
import textwrap
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from ..backend import SIMULATOR
from ..ops.carafe import carafe_reference
from ..ops.sapa import SAPA, sapa_similarity_reference
from .engine import (CheckFailed, compare, compare_where_finite, counting_syncthreads, diagnose, first_nan_mismatch,
                     passed, require_gather, run_with_timeout)
from .rules import KernelCheck

__all__ = [
    "check_sapa_embedding",
    "check_similarity_reference",
    "check_similarity_kernel",
    "check_softmax_kernel",
    "check_similarity_block_kernel",
    "check_sapa_forward",
    "check_grad_query_kernel",
    "check_grad_key_kernel",
]

#: (N, d, h, w, kernel_size, scale): odd sizes, d not a multiple of anything,
#: maps smaller than the window, scales 1 to 3.
_SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 3, 4, 3, 2), (1, 5, 4, 3, 5, 2), (1, 2, 2, 5, 3, 3), (1, 4, 1, 2, 5, 1),
           (1, 7, 3, 3, 3, 1)]

OUT_OF_MAP_HINT = ("this slot's neighbour lies outside the low-res map. SAPA gives it logit 0 (not -inf, and not "
                   "left unwritten): write 0")
SLOT_HINT = ("slot t is window position (dy, dx) with t = (dy + r) * k + (dx + r), r = (k - 1) // 2: row-major, dy "
             "outer; it reads key[n, :, Y // s + dy, X // s + dx]")


def _random(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _unit_channels(t):
    """``t`` (N, d, H, W) with each pixel's channel vector scaled to length 1."""
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def _reference_logits(q, key, kernel_size, scale):
    return sapa_similarity_reference(torch.from_numpy(q).double(), torch.from_numpy(key).double(), kernel_size, scale)


def _outside_mask(shape, key_shape, kernel_size, scale):
    """(N, k*k, sH, sW) bool: the slots whose neighbour lies outside the key map."""
    _, area, height, width = shape
    radius = (kernel_size - 1) // 2
    t = np.arange(area)[:, None, None]
    rows = np.arange(height)[None, :, None] // scale + t // kernel_size - radius
    cols = np.arange(width)[None, None, :] // scale + t % kernel_size - radius
    outside = (rows < 0) | (rows >= key_shape[2]) | (cols < 0) | (cols >= key_shape[3])
    return np.broadcast_to(outside[None], shape)


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _mismatches(expected, got, rtol, atol):
    expected, got = _numpy(expected), _numpy(got)
    if expected.shape != got.shape:
        return None
    return ~np.isclose(got, expected, rtol=rtol, atol=atol)


def _transposed_slots(values, kernel_size):
    n, area, height, width = values.shape
    return values.reshape(n, kernel_size, kernel_size, height, width).transpose(0, 2, 1, 3, 4).reshape(values.shape)


def _window_hint(expected, got, key_shape, kernel_size, scale, default, rtol, atol):
    """The hint for wrong (N, k*k, sH, sW) logits or weights: slots in the wrong
    order, only the out-of-map slots wrong, values never written, or ``default``."""
    bad = _mismatches(expected, got, rtol, atol)
    if bad is None or not bad.any():
        return default
    got = _numpy(got)
    if kernel_size > 1 and not _mismatches(expected, _transposed_slots(got, kernel_size), rtol, atol).any():
        return "the window slots are in the wrong order: " + SLOT_HINT
    outside = _outside_mask(bad.shape, key_shape, kernel_size, scale)
    if not (bad & ~outside).any():
        return OUT_OF_MAP_HINT
    if np.isnan(got[bad]).any():
        unwritten = np.flatnonzero(np.isnan(got))
        if unwritten[-1] == got.size - 1 and len(unwritten) == got.size - unwritten[0]:
            return (f"the elements from flat index {unwritten[0]} on were never written, as if the guard or the "
                    f"launch stopped there: launch one thread per element of logits (logits.size = {got.size}) "
                    "and guard with `if i < logits.size:`")
        return ("some values were never written, scattered through the array: check the unravel of i, X = i % W, "
                "Y = (i // W) % H, t = (i // (W * H)) % (k*k), n = i // (W * H * k*k), so that every element "
                "has its own thread, and that every thread writes its element (also when it is 0)")
    factor = _constant_factor(_numpy(expected), got)
    if factor is not None:
        return (f"every value is the right one times {factor:.4g}: SAPA's logit is the plain dot product of q and "
                "the key, with no scaling (no 1 / sqrt(d) as in attention, no temperature)")
    return default


def _constant_factor(expected, got):
    """c where ``got`` is ``c * expected`` (c not 1) to float32 precision, else None."""
    expected, got = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    if not np.isfinite(got).all() or not (expected != 0).any():
        return None
    factor = float((expected * got).sum() / (expected * expected).sum())
    if abs(factor - 1) < 1e-3 or not np.allclose(got, factor * expected, rtol=1e-4, atol=1e-5):
        return None
    return factor


def _outside_left_out(logits, weights, key_shape, kernel_size, scale):
    """Whether ``weights`` are the softmax of ``logits`` over the inside slots only (0 outside)."""
    outside = torch.from_numpy(np.array(_outside_mask(tuple(logits.shape), key_shape, kernel_size, scale)))
    if not outside.any():
        return False
    left_out = torch.softmax(logits.masked_fill(outside, -math.inf), dim=1).numpy()
    return np.allclose(_numpy(weights), left_out, rtol=1e-4, atol=1e-5)


_NEIGHBOUR_HINT = "check that window neighbours outside the map are skipped before they are read"


def _launch(rules, launch, *arrays, guard_hint="guard the body with `if i < out.size:`", count=False, case="",
            index_hint=_NEIGHBOUR_HINT):
    """``index_hint``: what to check when an index is past an array's end
    (the softmax has no window neighbours to skip)."""
    return rules.launch(launch, *arrays, count=count, case=case, bounds_hint=f"{guard_hint}; and {index_hint}",
                        index_hint=index_hint)


# --------------------------------------------------------------------------
# 04.1 The embedding of SAPA-B
# --------------------------------------------------------------------------


def _randomise(module, seed):
    """Random values for every parameter (LayerNorm affine and biases included),
    so that an embedding that skips one of them is caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = 0.5 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(noise + (1.0 if name.startswith("norm_") and name.endswith("weight") else 0.0))
    return module


def _embedding_variants(t, norm, linear):
    """Wrong embeddings of ``t`` (N, C, H, W) through ``norm`` and ``linear``, each with its hint."""
    last = t.permute(0, 2, 3, 1)
    plain = F.layer_norm(last, norm.normalized_shape, eps=norm.eps)
    return [
        (linear(plain).permute(0, 3, 1, 2),
         "the LayerNorm's learned scale and shift are missing (F.layer_norm(t, (C,)) has none): apply the module's "
         "own LayerNorm, module.norm_y (or norm_x), which multiplies by its weight and adds its bias"),
        (linear(last).permute(0, 3, 1, 2),
         "the LayerNorm is missing: normalise each pixel's channel vector with module.norm_y (or norm_x) before "
         "the Linear module.q (or k)"),
        (F.linear(norm(last), linear.weight).permute(0, 3, 1, 2),
         "the Linear's bias is missing: call the module, module.q(...) (or module.k), or F.linear with both its "
         "weight and its bias"),
        (linear(F.layer_norm(last, norm.normalized_shape, norm.weight, norm.bias, eps=1e-6)).permute(0, 3, 1, 2),
         f"the LayerNorm's eps differs from the module's ({norm.eps:g}): call module.norm_y (or norm_x) itself"),
    ]


def check_sapa_embedding(embed):
    """``embed(module, y, x) -> (q, key)`` for a SAPA-B ``module``:
    ``q = module.q(LN_y(y))``, ``key = module.k(LN_x(x))``, LayerNorm over
    the channels, both (N, d, H, W)."""
    what = "sapa_embedding"
    cases = [(1, 4, 4, 8, 2, 3, 2), (2, 6, 3, 5, 3, 2, 2), (1, 3, 7, 16, 2, 2, 3), (1, 5, 5, 1, 1, 1, 1)]
    for index, (n, dim_y, dim_x, dim, h, w, s) in enumerate(cases):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(40 + index)
            module = SAPA(dim_y, dim_x, up_factor=s, embedding_dim=dim, variant="B").double()
            _randomise(module, 40 + index)
            y = 2 * torch.randn(n, dim_y, s * h, s * w, dtype=torch.float64) + 1
            x = 2 * torch.randn(n, dim_x, h, w, dtype=torch.float64) - 1
        expected_q, expected_key = module.queries_and_keys(y, x)
        got = embed(module, y, x)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"{what}: expected a pair (q, key), got {type(got).__name__}")
        case = f"y {tuple(y.shape)}, x {tuple(x.shape)}, embedding_dim={dim}"
        shapes = tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in got)
        if expected_q.shape != expected_key.shape and shapes == (tuple(expected_key.shape), tuple(expected_q.shape)):
            raise CheckFailed(f"{what}: q has the shape of the key and the key that of q for {case}.\nHint: the "
                              "queries come from y, the high-resolution map (module.q(module.norm_y(...))), and the "
                              "keys from x, the low-resolution one (module.k(module.norm_x(...)))")
        hint = ("LayerNorm normalises each pixel's channel vector: move the channels last "
                "(t.permute(0, 2, 3, 1)), apply module.norm_y (or norm_x), then the Linear module.q (or k), "
                "and move the channels back (permute(0, 3, 1, 2))")
        with torch.no_grad():
            for name, expected, (t, norm, linear) in (("q", expected_q, (y, module.norm_y, module.q)),
                                                      ("key", expected_key, (x, module.norm_x, module.k))):
                diagnose(expected.detach(), got[0 if name == "q" else 1].detach(), _embedding_variants(t, norm, linear),
                         what=f"{what} ({name})", case=case, hint=hint, rtol=1e-6, atol=1e-8)
    passed(what, len(cases))


# --------------------------------------------------------------------------
# 04.2 The similarity in PyTorch
# --------------------------------------------------------------------------


def check_similarity_reference(similarity):
    """``similarity(q, key, kernel_size, scale)`` in plain PyTorch:
    (N, d, sH, sW) and (N, d, h, w) -> (N, k*k, sH, sW) logits."""
    what = "similarity_reference"
    rng = np.random.default_rng(41)
    for n, d, h, w, k, s in _SHAPES:
        q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
        expected = _reference_logits(q, key, k, s)
        got = similarity(torch.from_numpy(q).double(), torch.from_numpy(key).double(), k, s)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor, got {type(got).__name__}")
        hint = _window_hint(expected, got, key.shape, k, s,
                            SLOT_HINT + ". With F.unfold(key, k, padding=r) the windows come in exactly this order "
                            "(view them as (N, d, k*k, h, w)); repeat each s times along both axes", 1e-6, 1e-8)
        cosine = _reference_logits(_unit_channels(q), _unit_channels(key), k, s)
        if got.shape == cosine.shape and torch.allclose(got.detach().double(), cosine, rtol=1e-5, atol=1e-7):
            hint = ("these are cosine similarities (q and the key normalised to length 1): SAPA's logit is the plain "
                    "dot product of q and the key; the embedding's LayerNorm is all the normalisation there is")
        compare(expected, got.detach(), what=what, case=f"q {q.shape}, key {key.shape}, k={k}, s={s}", hint=hint,
                rtol=1e-6, atol=1e-8)
    passed(what, len(_SHAPES))


# --------------------------------------------------------------------------
# 04.3 One thread per output point and window slot
# --------------------------------------------------------------------------


def check_similarity_kernel(kernel):
    """``kernel(q, key, logits, kernel_size, scale)``: one thread per element
    (n, t, Y, X) of ``logits`` on a 1-D grid."""
    what = "similarity_kernel"
    rules = KernelCheck(kernel, what, output=2)
    rng = np.random.default_rng(42)
    for index, (n, d, h, w, k, s) in enumerate(_SHAPES):
        q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
        logits = np.full((n, k * k, s * h, s * w), np.nan, np.float32)
        _launch(rules, rules.grid_for(logits.size), q, key, logits, k, s, count=index == 1,
                case=f"q {q.shape}, key {key.shape}, k={k}, s={s}",
                guard_hint="the last block runs past logits.size: guard with `if i < logits.size:`")
        expected = _reference_logits(q, key, k, s).float()
        hint = _window_hint(expected, logits, key.shape, k, s,
                            "unravel i into (n, t, Y, X) (X fastest, then Y, t, n); " + SLOT_HINT +
                            "; then sum q[n, c, Y, X] * key[n, c, row, col] over the channels c", 1e-4, 1e-4)
        compare(expected, logits, what=what, case=f"q {q.shape}, key {key.shape}, k={k}, s={s}", hint=hint,
                rtol=1e-4, atol=1e-4)
    rules.passed(len(_SHAPES))


# --------------------------------------------------------------------------
# 04.4 A numerically safe softmax
# --------------------------------------------------------------------------


_MAX_START_HINT = ("Start the running maximum at the point's first logit, logits[n, 0, Y, X] (or at -inf), not "
                   "at 0: with every logit far below 0 a maximum that starts at 0 stays 0, every exp(logit - 0) "
                   "is 0 and the sum is 0")

_SHIFT_HINT = ("exp(89) is already inf in float32, and exp(-104) is 0. Subtract each point's largest logit before "
               "exp: softmax is unchanged, the largest term is exp(0) = 1 and the sum is at least 1")


_SPIKE_HINT = ("the shift must be the point's largest logit, found over every slot t = 0 .. k*k - 1, the last "
               "included: a shift by anything else (the mean, the first or the smallest logit, a maximum that skips "
               "a slot) leaves the spike's exp(logit - shift) far above exp(89), inf in float32 (and in the "
               "simulator's float64 here)")


#: (spike, rest) of the spiked cases: the second all below 0, 1,700 apart (a shift by the smallest logit overflows)
_SPIKES = {"spike": (800.0, -800.0), "negative spike": (-100.0, -1800.0)}


def _spiked_logits(shape, spike, rest):
    """Logits of ``rest`` but one slot of ``spike`` at each point, the slot
    going round the window from point to point, so that every slot (the
    first and the last too) holds some point's spike. The softmax is
    one-hot; only a shift by the true maximum keeps every exp finite (the
    simulator's float64 too): the mean is far below the spike, and so is a
    maximum that leaves the spike's slot out."""
    batch, area, height, width = shape
    logits = np.full(shape, rest, np.float32)
    for point in range(batch * height * width):
        n, rest_of_point = divmod(point, height * width)
        logits[n, point % area, rest_of_point // width, rest_of_point % width] = spike
    return logits


def check_softmax_kernel(kernel):
    """``kernel(logits, weights)``: softmax over axis 1 of (N, k*k, H, W),
    one thread per point (n, Y, X) on a 1-D grid; must survive large logits."""
    what = "softmax_kernel"
    rules = KernelCheck(kernel, what, output=1)
    rng = np.random.default_rng(43)
    # (shape, spread): normal logits times the spread; or (shape, (low, high)): uniform in [low, high],
    # every logit so far from 0 that exp() of it, or of it minus a maximum that starts at 0, is 0 or inf
    # even in the simulator's float64.
    cases = [((1, 1, 3, 5), 1.0), ((2, 9, 4, 3), 3.0), ((1, 25, 5, 7), 1.0), ((1, 9, 3, 3), 300.0),
             ((1, 49, 2, 3), 150.0), ((1, 25, 3, 2), -1.0), ((2, 9, 2, 3), (-1000.0, -800.0)),
             ((2, 9, 3, 2), (800.0, 1000.0)), ((2, 9, 3, 3), "spike"), ((1, 25, 2, 5), "negative spike")]
    for index, (shape, spread) in enumerate(cases):
        if spread in _SPIKES:
            logits = _spiked_logits(shape, *_SPIKES[spread])
        elif isinstance(spread, tuple):
            logits = rng.uniform(*spread, size=shape).astype(np.float32)
        else:
            logits = _random(rng, shape) * np.float32(abs(spread))
        if isinstance(spread, float) and spread < 0:
            logits -= np.float32(400.0)  # every exp underflows to 0 without the shift
        elif isinstance(spread, float) and spread > 100:
            logits += np.float32(100.0)  # every exp overflows to inf without the shift
        weights = np.full(shape, np.nan, np.float32)
        points = shape[0] * shape[2] * shape[3]
        case = f"logits {shape} between {float(logits.min()):.0f} and {float(logits.max()):.0f}"
        hint = _SHIFT_HINT
        if spread in _SPIKES:
            spike, rest = _SPIKES[spread]
            case = (f"logits {shape}: at each point one slot (each slot at some point, the last included) {spike:.0f}, "
                    f"the rest {rest:.0f}")
            hint = _SPIKE_HINT
        elif float(logits.max()) < -200:
            hint = f"every logit of this case is below {math.ceil(float(logits.max()))}. " + _MAX_START_HINT
        try:
            _launch(rules, rules.grid_for(points), logits, weights, count=index == 1, case=case,
                    guard_hint="there are N * H * W points, fewer than threads: guard with "
                               "`if i < logits.shape[0] * logits.shape[2] * logits.shape[3]:`",
                    index_hint="unravel i into a point (n, Y, X) only, X = i % W, Y = (i // W) % H, n = i // (W * H); "
                               "the slots t = 0 .. k*k - 1 are a loop inside the thread")
        except (OverflowError, ZeroDivisionError) as error:
            # The simulator runs math.exp in Python, which raises where a GPU gives inf (or a 0 sum).
            raise CheckFailed(f"{what}: {type(error).__name__} ({error}) for {case}.\nHint: {hint}") from None
        expected = torch.softmax(torch.from_numpy(logits).double(), dim=1).float()
        if not np.isfinite(weights).all():
            raise CheckFailed(
                f"{what}: {int((~np.isfinite(weights)).sum())} of {weights.size} weights are nan or inf for {case}.\n"
                f"Hint: {hint}")
        compare(expected, weights, what=what, case=case, rtol=1e-5, atol=1e-6,
                hint="weights[n, t, Y, X] = exp(logits[n, t, Y, X] - m) / sum over t' of exp(logits[n, t', Y, X] - m) "
                     "with m the largest logit of the point; unravel i into (n, Y, X)")
    rules.passed(len(cases))


# --------------------------------------------------------------------------
# 04.5 One block per output point: reduction in shared memory
# --------------------------------------------------------------------------


def _shared_shape_problems(kernel):
    """Shapes of ``cuda.shared.array`` calls that a GPU compiler rejects: the
    simulator accepts any shape, the GPU needs compile-time constants."""
    function = getattr(kernel, "py_func", kernel)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return []
    constants = function.__globals__
    problems = []

    def constant(node):
        if isinstance(node, ast.Constant):
            return isinstance(node.value, int) and not isinstance(node.value, bool)
        if isinstance(node, ast.Name):
            value = constants.get(node.id)
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if isinstance(node, ast.Tuple):
            return all(constant(element) for element in node.elts)
        return False

    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "array"
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "shared"):
            shape = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "shape"), None)
            if shape is not None and not constant(shape):
                problems.append(ast.unparse(shape))
    return problems


@contextlib.contextmanager
def _fast_barriers():
    """The simulator's barrier is a polling loop that hands the GIL over only
    every few milliseconds; a shorter switch interval makes kernels with many
    syncthreads several times faster there. Restored afterwards."""
    previous = sys.getswitchinterval()
    if SIMULATOR:
        sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _divergent_block(counts, blocks, threads):
    """(block, {count: threads}) of the first block whose threads called
    syncthreads different numbers of times, or None."""
    for block in range(blocks):
        seen = Counter(counts.get(((block, 0, 0), (t, 0, 0)), 0) for t in range(threads))
        if len(seen) > 1:
            return block, dict(seen)
    return None


def check_similarity_block_kernel(kernel, threads_per_block):
    """``kernel(q, key, weights, kernel_size, scale)`` launched with one block
    of ``threads_per_block`` threads per output point (N * sH * sW blocks):
    the similarity logits reduced over channels in shared memory, then the
    softmax; writes the (N, k*k, sH, sW) kernels."""
    what = "similarity_block_kernel"
    problems = _shared_shape_problems(kernel)
    if problems:
        raise CheckFailed(
            f"{what}: cuda.shared.array with shape `{problems[0]}`. The simulator accepts it, a GPU compiler does "
            "not: a shared array's size is fixed when the kernel is compiled, so its shape must be a number or a "
            "module-level constant (a tuple of them), not a variable or an expression.\nHint: define e.g. "
            "`MAX_AREA = 49` at module level and use `cuda.shared.array((MAX_AREA, THREADS), numba.float32)`")
    rules = KernelCheck(kernel, what, output=2)
    rng = np.random.default_rng(44)
    # (N, d, h, w, k, s): channels fewer than, not a multiple of, and more than the block
    # and k = 1 with every logit below -900 or above +900 (positive q and key times -100 or +100): the
    # softmax of the block must survive them as the one of 04.4 does
    # (+900 before -900: a softmax without the max overflows there and is told to subtract it; one whose
    # maximum starts at 0 survives it and fails only below -900, where it is told where to start)
    # and a spike case (k = 3): one logit of 800 in each window, the rest -800 (or 0 out of the map), the
    # spike in every slot somewhere: a shift by the mean, or by a maximum that skips a slot, overflows
    cases = [(1, 37, 2, 3, 3, 2), (1, 5, 3, 2, 5, 1), (2, 70, 2, 2, 3, 1), (1, 16, 1, 1, 7, 2),
             (1, 37, 1, 2, 1, 2, 100.0), (1, 37, 1, 2, 1, 2, -100.0), (1, 4, 6, 6, 3, 2, "spike")]
    for index, (n, d, h, w, k, s, *push) in enumerate(cases):
        q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
        spiked = push == ["spike"]
        if spiked:  # key 200 on every third row and column, -200 elsewhere; q 1: logits of 4 * (+-200)
            q = np.ones_like(q)
            key = np.full_like(key, -200.0)
            key[:, :, ::3, ::3] = 200.0
        elif push:  # every product positive, then far from 0
            q, key = (np.abs(q) + np.float32(0.5)) * np.float32(push[0]), np.abs(key) + np.float32(0.5)
        weights = np.full((n, k * k, s * h, s * w), np.nan, np.float32)
        blocks = n * s * h * s * w
        case = f"q {q.shape}, key {key.shape}, k={k}, s={s}, {blocks} blocks of {threads_per_block} threads"
        if spiked:
            case += ", one logit of 800 in each window (in every slot at some point), the others -800 or 0"
        elif push:
            case += f", every logit {'below -900' if push[0] < 0 else 'above 900'}"
        try:
            with _fast_barriers(), counting_syncthreads() as counts:
                report = _launch(rules, (blocks, threads_per_block), q, key, weights, k, s, count=index == 0,
                                 case=case, guard_hint="a lane's index ran past the end of an array: its "
                                                       "channels c in range(threadIdx.x, d, THREADS) stop below d, "
                                                       "the slots it writes, t in range(threadIdx.x, k*k, THREADS), "
                                                       "below k*k, and only lanes with lane < stride read "
                                                       "partial[t, lane + stride]")
        except (OverflowError, ZeroDivisionError) as error:
            hint = _SPIKE_HINT if spiked else _MAX_START_HINT if push and push[0] < 0 else _SHIFT_HINT
            raise CheckFailed(f"{what}: {type(error).__name__} ({error}) in the softmax for {case}.\n"
                              f"Hint: {hint}") from None
        if report is not None:
            counted = (case, report, q.shape, key.shape, k, s)
        if counts is not None:
            divergent = _divergent_block(counts, blocks, threads_per_block)
            if divergent:
                block, seen = divergent
                raise CheckFailed(
                    f"{what}: in block {block} ({case}) the threads called cuda.syncthreads() different numbers "
                    f"of times ({', '.join(f'{c} times: {m} threads' for c, m in sorted(seen.items()))}). On a "
                    "GPU that hangs or races (the simulator just lets it through).\nHint: every thread of the "
                    "block must reach every syncthreads: keep it out of `if threadIdx.x < ...` branches and "
                    "loops whose count depends on the thread, and do not return early")
        expected = torch.softmax(_reference_logits(q, key, k, s), dim=1).float()
        if np.isnan(weights).any():
            index = tuple(int(i) for i in np.argwhere(np.isnan(weights))[0])
            if push:  # on a GPU exp does not raise: it overflows to inf / inf, or underflows to 0 / 0
                hint = _SPIKE_HINT if spiked else _MAX_START_HINT if push[0] < 0 else _SHIFT_HINT
                raise CheckFailed(f"{what}: weights{index} is nan for {case}: the softmax overflowed or "
                                  f"underflowed.\nHint: {hint}")
            raise CheckFailed(f"{what}: weights{index} was never written (or is nan) for {case}.\nHint: after the "
                              "softmax, the threads of the block write the k*k weights of their point: slots t = "
                              "threadIdx.x, threadIdx.x + threads, ... (there may be more slots than threads)")
        hint = ("each thread sums q * key over its channels (c = threadIdx.x, threadIdx.x + threads, ...) for every "
                "slot into partial[t, threadIdx.x]; syncthreads; halve the active threads each step adding "
                "partial[t, i + stride] into partial[t, i], with a syncthreads after each step; partial[t, 0] is then "
                "the logit (0 for an out-of-map slot); softmax with the max subtracted")
        first_channels = _reference_logits(q[:, :threads_per_block], key[:, :threads_per_block], k, s)
        if d > threads_per_block and np.allclose(weights, torch.softmax(first_channels, dim=1).numpy(), rtol=1e-4,
                                                 atol=1e-5):
            # the weights of the first THREADS channels only: one channel per lane, no loop
            hint = (f"the check has {d} channels, more than the {threads_per_block} threads: does every thread loop "
                    f"over c = threadIdx.x, threadIdx.x + {threads_per_block}, ...? " + hint)
        hint = _window_hint(expected, weights, key.shape, k, s, hint, 1e-4, 1e-5)
        if hint == OUT_OF_MAP_HINT:
            hint += " (its weight is then exp(0 - max) / sum, not 0)"
        elif _outside_left_out(_reference_logits(q, key, k, s), weights, key.shape, k, s):
            hint = ("the out-of-map slots are left out of the softmax. SAPA gives such a slot logit 0: it counts in "
                    "the max and the sum, and its weight is exp(0 - max) / sum, not 0")
        compare(expected, weights, what=what, case=case, hint=hint, rtol=1e-4, atol=1e-5)
    _require_split_channels(what, *counted, threads_per_block)
    rules.passed(len(cases))


def similarity_loads(q_shape, key_shape, kernel_size, scale):
    """Global loads of q and key that the similarity needs, as lesson 04
    counts them: for every output point and every window slot inside the
    map, d values of q and d of key, each loaded once."""
    n, d, height, width = q_shape
    inside = ~_outside_mask((n, kernel_size * kernel_size, height, width), key_shape, kernel_size, scale)
    return 2 * d * int(inside.sum())


def _require_split_channels(what, case, report, q_shape, key_shape, k, s, threads):
    """The block kernel's lanes split the channels: together they load each
    q * key pair once, and no lane loads more than its share."""
    needed = similarity_loads(q_shape, key_shape, k, s)
    loads = report.totals["global_loads"]
    share = 2 * k * k * -(-q_shape[1] // threads)
    busiest = int(report.global_loads.max())
    if loads > needed:
        raise CheckFailed(
            f"{what}: the weights are right, but the block loads q and key {loads} times from global memory for "
            f"{case}; the dot products need {needed} loads (2 * d per inside slot of every point), as many as "
            "one thread per (point, slot) of 04.3 makes. The threads of a block should share the work, not each "
            "do all of it.\nHint: lane l sums only the channels c = l, l + THREADS, l + 2 * THREADS, ... of "
            "every slot into partial[t, l]; the tree reduction in shared memory adds the lanes' sums")
    if busiest > share:
        raise CheckFailed(
            f"{what}: the weights are right, but one thread loads {busiest} values from global memory for {case}, "
            f"more than a lane's share of the channels ({share} = 2 * k*k * ceil(d / THREADS)): the lanes do not "
            "split the channel loop.\nHint: lane l sums only the channels c = l, l + THREADS, ... of every slot "
            "into partial[t, l]; the tree reduction in shared memory adds the lanes' sums")


# --------------------------------------------------------------------------
# 04.6 The whole upsampler
# --------------------------------------------------------------------------


def check_sapa_forward(sapa_forward):
    """``sapa_forward(module, y, x)``: the output of a SAPA-B ``module``
    computed with the student's kernels and ``ul.carafe`` (group 1)."""
    what = "sapa_forward"
    # (N, dim_y, dim_x, embedding_dim, h, w, scale, kernel_size)
    cases = [(2, 6, 5, 8, 3, 4, 2, 3), (1, 4, 3, 37, 2, 3, 3, 5)]
    for index, (n, dim_y, dim_x, dim, h, w, s, k) in enumerate(cases):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(45 + index)
            module = _randomise(SAPA(dim_y, dim_x, up_factor=s, up_kernel_size=k, embedding_dim=dim, variant="B"),
                                45 + index)
            y = torch.randn(n, dim_y, s * h, s * w)
            x = torch.randn(n, dim_x, h, w)
        module.backend = "torch"
        with torch.no_grad():
            expected = module(y, x)
        with _fast_barriers():
            got = run_with_timeout(lambda: sapa_forward(module, y, x), what="sapa_forward")
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{what}: expected a tensor, got {type(got).__name__}")
        with torch.no_grad():
            logits = sapa_similarity_reference(*module.queries_and_keys(y, x), k, s)
            variants = [(carafe_reference(x, logits, k, s, 1),
                         "the kernels are not normalised: these are the logits of 04.3. Use the block kernel of "
                         "04.5, whose softmax makes each point's k*k weights sum to 1")]
        diagnose(expected, got.detach().cpu(), variants, what=what,
                 case=f"y {tuple(y.shape)}, x {tuple(x.shape)}, up_factor={s}, up_kernel_size={k}",
                 hint="q, key = the embedding (04.1, or module.queries_and_keys); the kernels from your block kernel "
                      "(one block per output point); then ul.carafe(x, kernels, module.up_kernel_size, "
                      "module.up_factor, group=1): the values are the raw x", rtol=1e-4, atol=1e-5)
    passed(what, len(cases))


# --------------------------------------------------------------------------
# 04.7 and 04.8 The backward of the similarity
# --------------------------------------------------------------------------


def _gradients(q, key, grad_logits, kernel_size, scale):
    q_ref = torch.from_numpy(q).double().requires_grad_()
    key_ref = torch.from_numpy(key).double().requires_grad_()
    logits = sapa_similarity_reference(q_ref, key_ref, kernel_size, scale)
    grad_q, grad_key = torch.autograd.grad(logits, (q_ref, key_ref), torch.from_numpy(grad_logits).double())
    return grad_q.float(), grad_key.float()


#: The gradient kernels' cases: ``_SHAPES`` and a key of 120 elements, launched (sixth) in blocks of 96,
#: so that it takes two blocks (a kernel that forgets blockIdx, or writes in a block size of its own, fails).
_GRADIENT_SHAPES = _SHAPES[:5] + [(1, 4, 5, 6, 3, 2)] + _SHAPES[5:]
#: Its launch is the counted one: an element written by two threads (blocks that overlap) is caught there.
_COUNTED_GRADIENT_CASE = 5


def _check_gradient(kernel, what, wrt, hint):
    rules = KernelCheck(kernel, what, output=2)
    rng = np.random.default_rng(46)
    for index, (n, d, h, w, k, s) in enumerate(_GRADIENT_SHAPES):
        q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
        grad_logits = _random(rng, (n, k * k, s * h, s * w))
        expected_q, expected_key = _gradients(q, key, grad_logits, k, s)
        if wrt == "q":
            grad = np.full_like(q, np.nan)
            arrays, expected, name = (grad_logits, key, grad), expected_q, "grad_q"
        else:
            grad = np.full_like(key, np.nan)
            arrays, expected, name = (grad_logits, q, grad), expected_key, "grad_key"
        _launch(rules, rules.grid_for(grad.size), *arrays, k, s, count=index == _COUNTED_GRADIENT_CASE,
                case=f"q {q.shape}, key {key.shape}, k={k}, s={s}", guard_hint=f"guard with `if i < {name}.size:`")
        if np.isnan(grad).any():
            index = tuple(int(i) for i in np.argwhere(np.isnan(grad))[0])
            raise CheckFailed(f"{what}: {name}{index} was never written for q {q.shape}, key {key.shape}, k={k}, "
                              f"s={s}.\nHint: one thread per element of {name}; each writes its total, also when "
                              "it is 0 (the checker does not zero the array first)")
        diagnose(expected, grad, _gradient_variants(q, key, grad_logits, k, s, wrt), what=what,
                 case=f"q {q.shape}, key {key.shape}, k={k}, s={s}", hint=hint, rtol=1e-4, atol=1e-4)
    if wrt == "q":
        _check_nan_at_skipped_slots(rules, what, rng)
    _check_nan_times_zero(rules, what, wrt, rng)
    rules.passed(len(_GRADIENT_SHAPES) + (wrt == "q") + 1)


def _check_nan_at_skipped_slots(rules, what, rng):
    """grad_logits nan at every slot whose neighbour lies outside the key map: those slots are skipped
    (SPEC), so grad_q stays finite."""
    n, d, h, w, k, s = 1, 3, 3, 4, 3, 2
    q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
    grad_logits = _random(rng, (n, k * k, s * h, s * w))
    grad_logits[_outside_mask(grad_logits.shape, key.shape, k, s)] = np.nan
    expected = _gradients(q, key, grad_logits, k, s)[0]
    grad = np.full_like(q, np.nan)
    case = f"q {q.shape}, key {key.shape}, k={k}, s={s}, grad_logits nan at every slot outside the key map"
    _launch(rules, rules.grid_for(grad.size), grad_logits, key, grad, k, s, case=case,
            guard_hint="guard with `if i < grad_q.size:`")
    if not np.isfinite(grad).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(grad))[0])
        raise CheckFailed(f"{what}: grad_q{index} is {grad[index]} for {case}.\nHint: skip the slots whose neighbour "
                          "lies outside the key map (their logit is the constant 0), rather than multiplying their "
                          "grad_logits by a zero read: a nan or inf there must never reach grad_q")
    compare(expected, grad, what=what, case=case, rtol=1e-4, atol=1e-4,
            hint="sum grad_logits[n, t, Y, X] * key[n, c, neighbour] over the slots t whose neighbour is inside the map")


def _check_nan_times_zero(rules, what, wrt, rng):
    """grad_logits nan at the centre slot (always inside the map) of the first output row, and the other input
    (key for grad_q, q for grad_key) 0 in its channel 0: the spec keeps nan * 0 = nan there, which a kernel that
    skips a term by its value (``if value != 0``) drops."""
    n, d, h, w, k, s = 1, 3, 3, 4, 3, 2
    q, key = _random(rng, (n, d, s * h, s * w)), _random(rng, (n, d, h, w))
    grad_logits = _random(rng, (n, k * k, s * h, s * w))
    grad_logits[:, k * k // 2, 0] = np.nan
    (key if wrt == "q" else q)[:, 0] = 0
    expected = _gradients(q, key, grad_logits, k, s)[0 if wrt == "q" else 1].numpy()
    name, other = ("grad_q", "key") if wrt == "q" else ("grad_key", "q")
    grad = np.full_like(q if wrt == "q" else key, np.nan)
    case = (f"q {q.shape}, key {key.shape}, k={k}, s={s}, grad_logits nan at the centre slot of output row 0 and "
            f"{other} 0 in channel 0")
    _launch(rules, rules.grid_for(grad.size), grad_logits, key if wrt == "q" else q, grad, k, s, case=case,
            guard_hint=f"guard with `if i < {name}.size:`")
    mismatch = first_nan_mismatch(expected, grad)
    if mismatch is not None:
        index, word = mismatch
        why = (f"it should be nan: a nan of grad_logits times the {other} value 0 is nan" if word == "a number"
               else "no nan of grad_logits reaches it")
        raise CheckFailed(f"{what}: {name}{index} is {word} for {case}; {why}.\nHint: skip a slot by where its "
                          "neighbour lies (outside the key map), never by a value")
    compare_where_finite(expected, grad, what=what, case=case, rtol=1e-4, atol=1e-4,
                         hint="skip a slot by where its neighbour lies (outside the key map), never by a value")


def _gradient_variants(q, key, grad_logits, kernel_size, scale, wrt):
    """Wrong gradients of q or key, each with its hint: each is the right
    gradient of a rearranged grad_logits."""
    def gradient(rearranged):
        return _gradients(q, key, rearranged.copy(), kernel_size, scale)[0 if wrt == "q" else 1]

    found = [(gradient(_transposed_slots(grad_logits, kernel_size)), "the window slots are in the wrong order: "
              + SLOT_HINT)]
    if wrt == "key":
        first_outputs = np.zeros_like(grad_logits)
        first_outputs[:, :, ::scale, ::scale] = grad_logits[:, :, ::scale, ::scale]
        found += [
            (gradient(first_outputs),
             "only one output per low-res pixel is counted. All s x s outputs attached to a low-res pixel read key "
             "through the same slot: sum over Y = anchor_row * s .. anchor_row * s + s - 1 (and the same for X)"),
            (gradient(grad_logits[:, ::-1]),
             "the anchor is (row - dy + r, col - dx + r) (minus, not plus): the outputs attached to low-res pixel "
             "(a, b) read key at (a + dy - r, b + dx - r) through slot (dy, dx)"),
        ]
    return found


def check_grad_query_kernel(kernel):
    """``kernel(grad_logits, key, grad_q, kernel_size, scale)``: one thread per
    element (n, c, Y, X) of ``grad_q``."""
    _check_gradient(kernel, "grad_query_kernel", "q",
                    "logits[t] = sum_c q[c] * key[c, window t], so d loss / d q[n, c, Y, X] = sum over the slots t "
                    "inside the map of grad_logits[n, t, Y, X] * key[n, c, row_t, col_t]")


def check_grad_key_kernel(kernel):
    """``kernel(grad_logits, q, grad_key, kernel_size, scale)``: one thread per
    element (n, c, row, col) of ``grad_key``, a gather (no atomics)."""
    what = "grad_key_kernel"
    require_gather(kernel, what, "sums into its own key element")
    _check_gradient(kernel, what, "key",
                    "key[n, c, row, col] is read through slot (dy, dx) by the s x s outputs attached to low-res "
                    "pixel (row - dy + r, col - dx + r), if that pixel is inside the map; sum "
                    "grad_logits[n, t, Y, X] * q[n, c, Y, X] over those slots and outputs")
