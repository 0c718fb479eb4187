"""Benchmark report: upsamplelib's kernels against the best plain-PyTorch code, measured in the same run.

    make bench                                   # the full report (a few minutes on 2 cores)
    python bench/run.py --quick                  # smallest sizes, one round: a smoke run
    python bench/run.py ops --repeat 20          # one section: ops, scaling, compile
    python bench/run.py ops --only semi FADE     # the ops whose names contain these words
    python bench/run.py --gpu-reference bench/gpu_reference.csv   # on a CUDA GPU only

It prints one table and writes ``build/bench/bench.csv`` and ``build/bench/bench.png``
(``--out`` changes the folder). Sections:

* ``bandwidth``: the machine's copy bandwidth (a 256 MB tensor copy), measured in this run;
* ``ops``: every op, forward and backward, ours against the best plain-PyTorch form on each
  device, the ratio (ours / baseline: below 1 means ours is faster) and the issue's target;
  interpolate and the semi-shift convolution on channels-last maps too (passes marked NHWC);
  the peak extra memory of each (``upsamplelib.timing.peak_extra_memory``: on the CPU the rise
  of the resident-set high-water mark during the call, on a GPU torch's allocator peak),
  measured in a child process so that the timings run in glibc's default allocator state;
  effective GB/s (the op's minimum traffic: each input read once, each output written once,
  over our time) as a fraction of the copy bandwidth, and GFLOP/s (FLOPs as the ops'
  registered formulas count them, ``FlopCounterMode``);
* ``scaling``: our forward time against H x W, C and k, with the fitted exponent of
  time ~ size^e (1 is linear; k enters as k*k taps, so 2 is expected there), and a verdict:
  linear in the work (no step growing more than twice as fast as the work); a fit of a
  fixed part plus a linear one (time = fixed + per_unit * work, within 15 % at each of three
  or more sizes); or not linear, naming the step where time outgrows the work, a jump in the
  page faults per call measured there, and the cause where the library knows it. Each size
  is the best of three medians;
* ``compile``: the first call of each op in a fresh process with an empty Numba cache
  (``NUMBA_CACHE_DIR`` a new folder), and again with that cache filled: the on-disk cache is
  what removes the compile time, and ``make setup`` fills it (``python -m upsamplelib.warmup``).

Times are the best of interleaved rounds of medians (``upsamplelib.timing.compare``): the
ours/baseline ratio of one run on one machine, never times from different runs.
On a machine with a CUDA GPU the ops section measures the CUDA kernels too (device "cuda").
``--gpu-reference PATH`` runs ``bench/gpu.py`` (CUDA-event timings, launch overhead, the GPU
targets), which writes PATH naming the GPU in every row: ``bench/gpu_reference.csv`` is only
ever written by a GPU run of that command.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY)

import llvmlite.binding  # noqa: E402  (Numba's compiler)
import numba  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import upsamplelib as ul  # noqa: E402
from upsamplelib.ops.carafe import carafe_reference, register_passes  # noqa: E402
from upsamplelib.ops.fade import two_convolutions  # noqa: E402
from upsamplelib.ops.sapa import sapa_similarity_reference  # noqa: E402
from upsamplelib.timing import compare, copy_bandwidth, page_faults_per_call, peak_extra_memory  # noqa: E402

GPU = torch.cuda.is_available() and not ul.SIMULATOR

COLUMNS = ["section", "device", "device_name", "op", "pass", "shape", "ours_ms", "baseline", "baseline_ms",
           "ratio", "target", "target_met", "ours_peak_mb", "baseline_peak_mb", "min_bytes", "ours_gbs",
           "copy_gbs", "fraction_of_copy", "ours_gflops", "parameter", "value", "exponent", "expected_exponent",
           "faults_per_call", "verdict", "cold_s", "warm_s"]


def processor_name() -> str:
    """The CPU's model as the system names it, and the LLVM target Numba
    compiles the CPU loops for (its vector width decides their speed): the
    same code's ratios differ from one CPU to another."""
    name = ""
    try:
        if sys.platform.startswith("linux"):
            with open("/proc/cpuinfo", errors="replace") as info:
                name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
        elif sys.platform == "darwin":
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name}, LLVM target {numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()}"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads: {processor_name()}"


# --------------------------------------------------------------------------
# Plain-PyTorch forms the kernels are held to
# --------------------------------------------------------------------------


def carafe_slot_loop(x, masks, kernel_size, scale):
    """CARAFE (group 1) as the best plain-PyTorch loop: the zero-padded input
    upsampled once, then one ``addcmul`` per window slot (k*k of them), each a
    shifted view times that slot's mask. No unfold, no k*k-times copy."""
    n, channels, height, width = x.shape
    radius = (kernel_size - 1) // 2
    padded = F.interpolate(F.pad(x, (radius,) * 4), scale_factor=scale, mode="nearest")
    out = x.new_zeros((n, channels, scale * height, scale * width))
    for slot in range(kernel_size * kernel_size):
        dy, dx = divmod(slot, kernel_size)
        view = padded[:, :, scale * dy: scale * (dy + height), scale * dx: scale * (dx + width)]
        out.addcmul_(view, masks[:, slot: slot + 1])
    return out


def concat_convolution(en, de, weight, bias, scale):
    """The naive semi-shift: one convolution over [encoder, upsampled decoder]
    (twice the channels at high resolution; lesson 05 compares the three)."""
    both = torch.cat([en, F.interpolate(de, scale_factor=scale, mode="nearest")], dim=1)
    return F.conv2d(both, torch.cat([weight, weight], dim=1), 2 * bias, padding=weight.shape[2] // 2)


# --------------------------------------------------------------------------
# The cases: (op, pass, shape, ours, {baseline: (function, target ratio or None)}, minimum bytes)
# --------------------------------------------------------------------------


def _grad_closure(function, inputs):
    """A closure running only the backward of ``function(*inputs)`` (the
    graph is built once, kept with retain_graph)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = function(*leaves)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)


def _step_closure(function, inputs):
    """A closure running forward and backward of ``function(*inputs)``."""
    def step():
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = function(*leaves)
        out.backward(torch.ones_like(out))  # fresh leaves: nothing accumulates across calls
    return step


def _bytes(*tensors_or_counts):
    return sum(4 * (t.numel() if isinstance(t, torch.Tensor) else t) for t in tensors_or_counts)


def cases(device: str, quick: bool):
    """Yield (op, pass, shape, ours, {baseline name: (function, target)}, minimum bytes, flop function).
    A target is the largest ours/baseline ratio the issue accepts."""
    backend = "cuda" if device == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    # interpolate, on NCHW maps and on channels-last (NHWC) ones, which F.interpolate has kernels for
    c, h = (8, 32) if quick else (64, 128)
    nchw = randn(1, c, h, h)
    for layout, x in (("", nchw), (" (NHWC)", nchw.contiguous(memory_format=torch.channels_last))):
        for mode, forward_target, backward_target in (("nearest", 0.7, 1.0), ("bilinear", 0.7, 1.0)):
            ours = lambda t, m=mode: ul.interpolate(t, scale_factor=2, mode=m, backend=backend)  # noqa: E731
            torch_form = lambda t, m=mode: F.interpolate(t, scale_factor=2, mode=m)  # noqa: E731
            shape = f"1x{c}x{h}x{h}->{2 * h}x{2 * h}"
            traffic = _bytes(x, 4 * x.numel())
            yield (f"interpolate {mode}", "forward" + layout, shape, lambda o=ours, x=x: o(x),
                   {"F.interpolate": (lambda f=torch_form, x=x: f(x), forward_target)}, traffic,
                   lambda o=ours, x=x: o(x))
            yield (f"interpolate {mode}", "backward" + layout, shape, _grad_closure(ours, [x]),
                   {"F.interpolate": (_grad_closure(torch_form, [x]), backward_target)}, traffic,
                   _grad_closure(ours, [x]))

    # CARAFE
    c, h, k = (8, 16, 5) if quick else (64, 64, 5)
    x = randn(1, c, h, h)
    masks = torch.softmax(randn(1, k * k, 2 * h, 2 * h), 1)
    ours = lambda a, b: ul.carafe(a, b, k, 2, 1, backend=backend)  # noqa: E731
    unfold = lambda a, b: carafe_reference(a, b, k, 2, 1)  # noqa: E731
    shape = f"1x{c}x{h}x{h}->{2 * h}x{2 * h}, k={k}"
    out_numel = 4 * x.numel()
    yield ("carafe", "forward", shape, lambda: ours(x, masks),
           {"unfold": (lambda: unfold(x, masks), 1 / 40),
            "slot loop (addcmul)": (lambda: carafe_slot_loop(x, masks, k, 2), 1 / 4)},
           _bytes(x, masks, out_numel), lambda: ours(x, masks))
    yield ("carafe", "backward (x, masks)", shape, _grad_closure(ours, [x, masks]),
           {"unfold": (_grad_closure(unfold, [x, masks]), None)},
           _bytes(out_numel, x, masks, x, masks), _grad_closure(ours, [x, masks]))

    # SAPA similarity (the op) and the SAPA-B module at the authors' size
    d, h, k = (8, 16, 5) if quick else (64, 64, 5)
    q, key = randn(1, d, 2 * h, 2 * h), randn(1, d, h, h)
    ours = lambda a, b: ul.sapa_similarity(a, b, k, 2, backend=backend)  # noqa: E731
    unfold = lambda a, b: sapa_similarity_reference(a, b, k, 2)  # noqa: E731
    shape = f"q 1x{d}x{2 * h}x{2 * h}, key {h}x{h}, k={k}"
    traffic = _bytes(q, key, k * k * q.numel() // d)
    yield ("sapa similarity", "forward", shape, lambda: ours(q, key), {"unfold": (lambda: unfold(q, key), None)},
           traffic, lambda: ours(q, key))
    yield ("sapa similarity", "backward (q, key)", shape, _grad_closure(ours, [q, key]),
           {"unfold": (_grad_closure(unfold, [q, key]), None)}, traffic + _bytes(q, key),
           _grad_closure(ours, [q, key]))
    channels, size = (16, 12) if quick else (256, 120)
    torch.manual_seed(0)
    module = ul.SAPA(channels, channels).to(device)
    y, x = randn(1, channels, 2 * size, 2 * size), randn(1, channels, size, size)

    def sapa_module(name):
        def run(a, b):
            module.backend = name
            return module(a, b)
        return run

    shape = f"C={channels}, {size}x{size}->{2 * size}x{2 * size}"
    yield ("SAPA-B module", "forward", shape, lambda: sapa_module(backend)(y, x),
           {"unfold (backend='torch')": (lambda: sapa_module("torch")(y, x), 1 / 15)}, None,
           lambda: sapa_module(backend)(y, x))
    yield ("SAPA-B module", "backward (y, x)", shape, _grad_closure(sapa_module(backend), [y, x]),
           {"unfold (backend='torch')": (_grad_closure(sapa_module("torch"), [y, x]), None)}, None,
           _grad_closure(sapa_module(backend), [y, x]))

    # The semi-shift convolution and the FADE module
    c, h = (8, 16) if quick else (64, 64)
    en, de = randn(1, c, 2 * h, 2 * h), randn(1, c, h, h)
    weight, bias = 0.01 * randn(25, c, 3, 3), randn(25)
    tensors = [en, de, weight, bias]
    ours = lambda *t: ul.semi_shift_conv(*t, scale=2, backend=backend)  # noqa: E731
    two_conv = lambda *t: two_convolutions(*t, 2)  # noqa: E731
    concat = lambda *t: concat_convolution(*t, 2)  # noqa: E731
    shape = f"C={c}, {h}x{h}->{2 * h}x{2 * h}, 3x3 -> 25"
    out_numel = 25 * en.numel() // c
    yield ("semi_shift_conv", "forward", shape, lambda: ours(*tensors),
           {"two convolutions": (lambda: two_conv(*tensors), 1.0),
            "one conv over [en, up(de)]": (lambda: concat(*tensors), None)}, _bytes(en, de, weight, out_numel),
           lambda: ours(*tensors))
    yield ("semi_shift_conv", "forward+backward", shape, _step_closure(ours, tensors),
           {"two convolutions": (_step_closure(two_conv, tensors), 1.0),
            "one conv over [en, up(de)]": (_step_closure(concat, tensors), None)},
           _bytes(en, de, weight, out_numel) * 2 + _bytes(out_numel), _step_closure(ours, tensors))
    maps_last = [t.contiguous(memory_format=torch.channels_last) for t in (en, de)] + [weight, bias]
    yield ("semi_shift_conv", "forward+backward (NHWC)", shape, _step_closure(ours, maps_last),
           {"two convolutions": (_step_closure(two_conv, maps_last), 1.0)},
           _bytes(en, de, weight, out_numel) * 2 + _bytes(out_numel), _step_closure(ours, maps_last))
    torch.manual_seed(0)
    fade = ul.FADE(c).to(device)

    def fade_module(name):
        def run(a, b):
            fade.backend = name
            return fade(a, b)
        return run

    yield ("FADE module", "forward+backward", f"C={c}, {h}x{h}->{2 * h}x{2 * h}",
           _step_closure(fade_module(backend), [en, de]),
           {"two convolutions + unfold (backend='torch')": (_step_closure(fade_module("torch"), [en, de]), None)},
           None, _step_closure(fade_module(backend), [en, de]))


def count_flops(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def selected_cases(device: str, quick: bool, only=()):
    """The cases whose op name contains one of the words of ``only`` (all without any)."""
    for case in cases(device, quick):
        if not only or any(word.lower() in case[0].lower() for word in only):
            yield case


def _compared_functions(ours, baselines) -> dict:
    """{"ours": ours, baseline name: baseline function} of one case."""
    return {"ours": ours, **{name: function for name, (function, _) in baselines.items()}}


def measure_memory(device: str, quick: bool, only=()) -> dict:
    """{(op, pass): {function name: peak extra MB}}, measured in a child
    process. Measuring leaves glibc's mmap threshold fixed (see
    ``peak_extra_memory``): timings taken after it in the same process would
    run in an allocator state that no other process is in, with fewer page
    faults for large tensors than glibc's default gives."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", device]
    command += (["--quick"] if quick else []) + (["--only", *only] if only else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the memory measurement failed:\n{done.stderr[-3000:]}")
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return {tuple(key.split("|")): value for key, value in peaks.items()}


def print_memory_peaks(device: str, quick: bool, only=()) -> None:
    """The child process of ``measure_memory``: one JSON line of peaks."""
    peaks = {}
    for op, pass_, _, ours, baselines, _, _ in selected_cases(device, quick, only):
        functions = _compared_functions(ours, baselines)
        for function in functions.values():
            function()  # a first call compiles and may allocate for good: not the call's peak
        peaks[f"{op}|{pass_}"] = {name: peak_extra_memory(function, device) / 2**20
                                  for name, function in functions.items()}
    print(json.dumps(peaks))


def measure_ops(device: str, quick: bool, repeats: int, rounds: int, copy_gbs: float, peaks=None, only=()):
    """One row per (op, pass, baseline); ``peaks`` from ``measure_memory``
    (None: no memory columns)."""
    rows = []
    for op, pass_, shape, ours, baselines, traffic, flop_function in selected_cases(device, quick, only):
        functions = _compared_functions(ours, baselines)
        heavy = "SAPA-B" in op and not quick
        seconds = compare(functions, warmup=1 if heavy else 2, repeats=max(3, repeats // 3) if heavy else repeats,
                          rounds=rounds, device=device)
        flops = count_flops(flop_function)
        memory = (peaks or {}).get((op, pass_), {})
        for name, (_, target) in baselines.items():
            ratio = seconds["ours"] / seconds[name]
            gbs = traffic / seconds["ours"] / 1e9 if traffic else float("nan")
            rows.append({
                "section": "ops", "device": device, "device_name": device_name(device), "op": op, "pass": pass_,
                "shape": shape, "ours_ms": 1e3 * seconds["ours"], "baseline": name,
                "baseline_ms": 1e3 * seconds[name], "ratio": ratio,
                "target": "" if target is None else target,
                "target_met": "" if target is None else ratio <= target,
                "ours_peak_mb": memory.get("ours", float("nan")),
                "baseline_peak_mb": memory.get(name, float("nan")), "min_bytes": traffic or "",
                "ours_gbs": gbs, "copy_gbs": copy_gbs, "fraction_of_copy": gbs / copy_gbs,
                "ours_gflops": flops / seconds["ours"] / 1e9,
            })
            print_op_row(rows[-1])
    return rows


# --------------------------------------------------------------------------
# Scaling
# --------------------------------------------------------------------------


def scaling_runs(device: str, quick: bool, repeats: int):
    """Our forward time against one size at a time, the others fixed; the
    fitted exponent of time ~ size^e over the run."""
    backend = "cuda" if device == "cuda" else "cpu"
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    def interpolate(c=32, h=64):
        x = randn(1, c, h, h)
        return lambda: ul.interpolate(x, scale_factor=2, mode="bilinear", backend=backend)

    def carafe(c=32, h=32, k=5):
        x, masks = randn(1, c, h, h), torch.softmax(randn(1, k * k, 2 * h, 2 * h), 1)
        return lambda: ul.carafe(x, masks, k, 2, 1, backend=backend)

    def semi_shift(c=32, h=32, k=3):
        tensors = [randn(1, c, 2 * h, 2 * h), randn(1, c, h, h), randn(25, c, k, k), randn(25)]
        return lambda: ul.semi_shift_conv(*tensors, scale=2, backend=backend)

    sides = [32, 64] if quick else [64, 128, 256]
    channels = [8, 16] if quick else [16, 32, 64]
    kernels = [3, 5] if quick else [3, 5, 7]
    plans = [("interpolate bilinear", "H x W", [(s * s, interpolate(h=s)) for s in sides], 1),
             ("interpolate bilinear", "C", [(c, interpolate(c=c)) for c in channels], 1),
             ("carafe", "H x W", [(s * s // 4, carafe(h=s // 2)) for s in sides], 1),
             ("carafe", "C", [(c, carafe(c=c)) for c in channels], 1),
             ("carafe", "k", [(k, carafe(k=k)) for k in kernels], 2),
             ("semi_shift_conv", "H x W", [(s * s // 4, semi_shift(h=s // 2)) for s in sides], 1),
             ("semi_shift_conv", "C", [(c, semi_shift(c=c)) for c in channels], 1),
             ("semi_shift_conv", "k", [(k, semi_shift(k=k)) for k in kernels[:2] + [1]][::-1], 2)]
    rows = []
    for op, parameter, points, expected in plans:
        values, times, faults = [], [], []
        for value, function in sorted(points, key=lambda p: p[0]):
            seconds = compare({"ours": function}, warmup=2, repeats=repeats, rounds=1 if quick else 3,
                              device=device)["ours"]
            values.append(value)
            times.append(seconds)
            faults.append(page_faults_per_call(function) if device == "cpu" else float("nan"))
        exponent = fit_exponent(values, times)
        verdict = scaling_verdict(parameter, values, times, expected, faults, known_cause(op, parameter, device))
        for value, seconds, faulted in zip(values, times, faults):
            rows.append({"section": "scaling", "device": device, "device_name": device_name(device), "op": op,
                         "pass": "forward", "parameter": parameter, "value": value, "ours_ms": 1e3 * seconds,
                         "exponent": exponent, "expected_exponent": expected, "faults_per_call": faulted,
                         "verdict": verdict})
        print(f"  {op:<22} time ~ {parameter:<5}^{exponent:4.2f}  (work ~ {parameter}^{expected}; "
              + ", ".join(f"{v}: {1e3 * t:.2f} ms" for v, t in zip(values, times)) + f")\n      {verdict}")
    return rows


#: How far a time may sit from a fitted line, relative to itself, and still
#: count as on it: about the run-to-run spread of a shared 2-core machine.
FIT_TOLERANCE = 0.15
#: How much faster than the work one step may grow and still count as
#: linear: an exponent fitted over a whole run can average a jump away.
STEP_TOLERANCE = 2.0


def scaling_verdict(parameter, values, times, expected, faults=None, cause=None) -> str:
    """Whether time grows linearly with the work (work ~ value^expected):
    plainly (the fitted exponent within 0.25 of the work's, and no step
    growing more than STEP_TOLERANCE times faster than the work); as a fixed part
    plus a linear one (with three points or more: time = fixed + per_unit *
    work fits every point within FIT_TOLERANCE; two points always fit); or
    not, naming the step where time outgrows the work most and what is known
    of why: a jump in the page faults per call (``faults``, one per value)
    measured there, and ``cause(before, after)``, the library's reason for
    that step if it knows one; or, when no step grows faster than the work
    (beyond FIT_TOLERANCE), the step that grows least, and that a cost which
    does not grow weighs at those sizes."""
    works = [v ** expected for v in values]
    growth = [(times[i + 1] / times[i]) / (works[i + 1] / works[i]) for i in range(len(values) - 1)]
    if abs(fit_exponent(values, times) - expected) <= 0.25 and max(growth) <= STEP_TOLERANCE:
        return "linear in the work"
    miss = None
    if len(values) >= 3:
        fixed, per_unit, miss = fit_fixed_plus_per_unit(works, times)
        if fixed > 0 and per_unit > 0 and miss <= FIT_TOLERANCE:
            return (f"fits a part linear in the work plus {1e3 * fixed:.2f} ms that does not grow with {parameter} "
                    f"({fixed / times[0]:.0%} of the smallest run's time)")
    outgrown = max(growth) > 1 + FIT_TOLERANCE
    i = (max if outgrown else min)(range(len(growth)), key=growth.__getitem__)
    reasons = [f"{parameter} {values[i]} -> {values[i + 1]} takes {times[i + 1] / times[i]:.1f}x the time for "
               f"{works[i + 1] / works[i]:.1f}x the work"]
    if not outgrown:
        reasons.append(f"no step grows faster than the work (beyond {FIT_TOLERANCE:.0%}): a cost that does not grow "
                       f"with {parameter} weighs at these sizes"
                       + (f" (a fixed part plus a linear one misses a point by {miss:.0%})" if miss is not None else ""))
        return "NOT linear in the work: " + "; ".join(reasons)
    if faults is not None and faults[i + 1] >= 1000 and faults[i + 1] >= 4 * faults[i]:  # NaN compares False
        reasons.append(f"{faults[i + 1]:.0f} page faults per call there against {faults[i]:.0f}: fresh memory "
                       "faulted in on every call" + (" (glibc maps each block of 32 MiB or more anew)"
                                                     if sys.platform.startswith("linux") else ""))
    known = cause(values[i], values[i + 1]) if cause is not None else ""
    if known:
        reasons.append(known)
    return "NOT linear in the work: " + "; ".join(reasons)


def fit_fixed_plus_per_unit(works, times):
    """Least squares time = fixed + per_unit * work: (fixed, per_unit, the
    largest miss of a point, relative to its time)."""
    mean_work, mean_time = sum(works) / len(works), sum(times) / len(times)
    per_unit = (sum((w - mean_work) * (t - mean_time) for w, t in zip(works, times))
                / sum((w - mean_work) ** 2 for w in works))
    fixed = mean_time - per_unit * mean_work
    return fixed, per_unit, max(abs(fixed + per_unit * w - t) / t for w, t in zip(works, times))


def known_cause(op, parameter, device):
    """``cause(before, after)``: why a scaling run's step from one value to
    the next leaves the line, where the library knows it ("" where not)."""
    def cause(before, after):
        if device == "cpu" and op == "carafe" and parameter == "k":
            passes, passes_before = len(register_passes(after)), len(register_passes(before))
            if passes > passes_before:
                return (f"k = {after} sums its window in {passes} passes (k = {before}: {passes_before}), each storing "
                        "its sums for the next to reload (upsamplelib/ops/carafe.py, REGISTER_SUMS_MOST_SLOTS)")
        return ""
    return cause


def fit_exponent(values, times) -> float:
    """Least-squares slope of log(time) against log(value)."""
    xs, ys = [math.log(v) for v in values], [math.log(t) for t in times]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


# --------------------------------------------------------------------------
# First-call compile time
# --------------------------------------------------------------------------

COMPILE_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    start = time.perf_counter()
    sys.path.insert(0, {repository!r})
    import torch
    import upsamplelib as ul
    times = {{"import upsamplelib": time.perf_counter() - start}}
    def grads(out, *inputs):
        torch.autograd.grad(out.sum(), inputs)
    def leaf(*shape):
        return torch.randn(*shape, requires_grad=True)
    x, q, key = leaf(1, 3, 5, 6), leaf(1, 4, 10, 12), leaf(1, 4, 5, 6)
    masks = torch.softmax(torch.randn(1, 9, 10, 12), 1).requires_grad_()
    en, de, w, b = leaf(1, 4, 10, 12), leaf(1, 4, 5, 6), leaf(9, 4, 3, 3), leaf(9)
    calls = {{
        "interpolate nearest": lambda: grads(ul.interpolate(x, scale_factor=2, backend="cpu"), x),
        "interpolate bilinear": lambda: grads(ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu"), x),
        "carafe": lambda: grads(ul.carafe(x, masks, 3, 2, backend="cpu"), x, masks),
        "sapa similarity": lambda: grads(ul.sapa_similarity(q, key, 3, 2, backend="cpu"), q, key),
        "semi_shift_conv": lambda: grads(ul.semi_shift_conv(en, de, w, b, 2, backend="cpu"), en, de, w, b),
        "FADE module": lambda: grads(ul.FADE(4)(en, de), en, de),
    }}
    for name in {names!r}:
        start = time.perf_counter()
        calls[name]()
        times[name] = time.perf_counter() - start
    print(json.dumps(times))
""")

COMPILE_OPS = ["interpolate nearest", "interpolate bilinear", "carafe", "sapa similarity", "semi_shift_conv",
               "FADE module"]


def compile_times(quick: bool):
    """First call (forward + backward, float32, tiny inputs) of each op, in a
    fresh process with an empty Numba cache, then in another with that cache
    filled. Ops share compiled helpers, so an op's time is what it adds
    after the ones above it."""
    names = COMPILE_OPS[:1] if quick else COMPILE_OPS
    script = COMPILE_SCRIPT.format(repository=REPOSITORY, names=names)
    results = []
    with tempfile.TemporaryDirectory(prefix="upsamplelib-numba-cache-") as cache:
        environment = dict(os.environ, NUMBA_CACHE_DIR=cache, UPSAMPLELIB_QUIET="1")
        for _ in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                  env=environment, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = results
    rows = []
    for name in ["import upsamplelib"] + names:
        rows.append({"section": "compile", "device": "cpu", "device_name": device_name("cpu"), "op": name,
                     "pass": "first call (forward+backward)", "cold_s": cold[name], "warm_s": warm[name]})
        print(f"  {name:<22} empty Numba cache {cold[name]:6.2f} s   filled cache {warm[name]:6.2f} s")
    print(f"  total                  empty Numba cache {sum(cold.values()):6.2f} s   filled cache "
          f"{sum(warm.values()):6.2f} s   (`make setup` fills the cache: python -m upsamplelib.warmup)")
    return rows


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _format(value, spec):
    return "-" if value in ("", None) or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_op_row(row):
    target = row["target"]
    target_text = "" if target == "" else (f"<= {target:.2f}" if target >= 0.5 else f">= {1 / target:.0f}x faster")
    met = "" if target == "" else ("met" if row["target_met"] else "NOT MET")
    print(f"  {row['op']:<20} {row['pass']:<24} {row['ours_ms']:9.3f} {row['baseline'][:30]:<30} "
          f"{row['baseline_ms']:9.3f} {row['ratio']:6.3f} {target_text:>15} {met:>7}  "
          f"{_format(row['ours_peak_mb'], '7.1f')} {_format(row['baseline_peak_mb'], '7.1f')}  "
          f"{_format(row['ours_gbs'], '6.1f')} {_format(row['fraction_of_copy'], '5.0%')} "
          f"{_format(row['ours_gflops'], '6.2f')}")


def print_op_header(device, copy_gbs):
    print(f"== {device} ({device_name(device)}): copy bandwidth {copy_gbs:.1f} GB/s (a 256 MB copy, read + write)")
    print(f"  {'op':<20} {'pass':<24} {'ours ms':>9} {'baseline':<30} {'base ms':>9} {'ratio':>6} "
          f"{'target':>15} {'':>7}  {'MB ours':>7} {'MB base':>7}  {'GB/s':>6} {'%copy':>5} {'GFLOP/s':>6}")


def write_csv(rows, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in COLUMNS})


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    op_rows = [r for r in rows if r["section"] == "ops"]
    scaling = [r for r in rows if r["section"] == "scaling"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 0.35 * len(op_rows) + 2.5))
    labels = [f"{r['op']} {r['pass']} vs {r['baseline']} ({r['device']})" for r in op_rows]
    ratios = [r["ratio"] for r in op_rows]
    colours = ["tab:green" if r["target_met"] is True else "tab:red" if r["target_met"] is False else "tab:gray"
               for r in op_rows]
    positions = range(len(op_rows))
    left.barh(positions, ratios, color=colours)
    for position, row in zip(positions, op_rows):
        if row["target"] != "":
            left.plot([row["target"]] * 2, [position - 0.4, position + 0.4], color="black")
    left.axvline(1.0, color="gray", linestyle=":")
    left.set_xscale("log")
    left.set_yticks(list(positions), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("time ours / time baseline (log; black tick: the target; green met, red not)")
    for op, parameter in sorted({(r["op"], r["parameter"]) for r in scaling}):
        points = [r for r in scaling if r["op"] == op and r["parameter"] == parameter]
        values = [r["value"] for r in points]
        times = [r["ours_ms"] for r in points]
        right.plot([v / values[0] for v in values], [t / times[0] for t in times], marker="o",
                   label=f"{op} vs {parameter}: exponent {points[0]['exponent']:.2f} "
                         f"(work: {points[0]['expected_exponent']})")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("size / smallest size")
    right.set_ylabel("time / time at the smallest size")
    right.set_title("scaling of our forward time" if scaling else "scaling: not run in this report")
    if scaling:
        right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help="any of ops, scaling, compile (default: all)")
    parser.add_argument("--quick", action="store_true", help="smallest sizes, one round, no memory: a smoke run")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per median (default 10; quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--only", nargs="+", default=(), metavar="WORD",
                        help="ops section: only the ops whose name contains one of these words")
    parser.add_argument("--out", default=os.path.join(REPOSITORY, "build", "bench"),
                        help="folder for bench.csv and bench.png")
    parser.add_argument("--memory-child", metavar="DEVICE", help=argparse.SUPPRESS)
    parser.add_argument("--gpu-reference", metavar="PATH",
                        help="on a CUDA GPU: run bench/gpu.py, the GPU benchmark (CUDA events), writing PATH")
    args = parser.parse_args(argv)
    sections = args.sections or ["ops", "scaling", "compile"]
    unknown = [name for name in sections if name not in ("ops", "scaling", "compile")]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from ops, scaling, compile")
    if args.memory_child:
        print_memory_peaks(args.memory_child, args.quick, args.only)
        return 0
    repeats = args.repeat or (2 if args.quick else 10)
    rounds = args.rounds or (1 if args.quick else 3)
    devices = ["cpu"] + (["cuda"] if GPU else [])
    if args.gpu_reference:
        # One writer for the committed GPU figures: bench/gpu.py (it names the GPU in every row).
        if not GPU:
            parser.error("--gpu-reference needs a CUDA GPU (this process has none): its figures must come "
                         "from a GPU run")
        return subprocess.call([sys.executable, os.path.join(REPOSITORY, "bench", "gpu.py"),
                                "--csv", args.gpu_reference])
    started = time.perf_counter()
    load = os.getloadavg()[0]
    busy = " (above the CPU count: other work shares the machine and times are noisy)" if load > os.cpu_count() else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {os.cpu_count()} CPUs; "
          f"CUDA: {torch.cuda.get_device_name() if GPU else 'none'}; load average at start {load:.1f}{busy}")
    rows = []
    for device in devices:
        copy_gbs = copy_bandwidth(device, megabytes=32 if args.quick else 256) / 1e9
        rows.append({"section": "bandwidth", "device": device, "device_name": device_name(device),
                     "op": "tensor copy", "copy_gbs": copy_gbs})
        if "ops" in sections:
            print_op_header(device, copy_gbs)
            peaks = None if args.quick else measure_memory(device, args.quick, args.only)
            rows += measure_ops(device, args.quick, repeats, rounds, copy_gbs, peaks, only=args.only)
        if "scaling" in sections:
            print(f"== scaling on {device}: our forward time against one size at a time")
            rows += scaling_runs(device, args.quick, repeats)
    if "compile" in sections:
        print("== first call (forward + backward) of each op in a fresh process, numba cache empty / filled")
        rows += compile_times(args.quick)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    os.makedirs(args.out, exist_ok=True)
    csv_path, png_path = os.path.join(args.out, "bench.csv"), os.path.join(args.out, "bench.png")
    write_csv(rows, csv_path)
    if any(r["section"] == "ops" for r in rows):
        plot(rows, png_path)
        print(f"wrote {csv_path} and {png_path} in {time.perf_counter() - started:.0f} s")
    else:
        print(f"wrote {csv_path} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
