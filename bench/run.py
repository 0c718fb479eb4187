"""Benchmarks: upsamplelib's kernels against their baselines, measured in the same run.

    make bench                     # everything
    python bench/run.py interpolate --repeat 30

Each line gives the median time of ours and of the baseline, and their ratio
(ours / baseline: below 1.0 means ours is faster). On a machine with a CUDA
GPU the CUDA kernels are measured too, against the same baseline on the GPU.
Timings are medians over --repeat runs after warm-up runs, so the first
call's compilation is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import upsamplelib as ul  # noqa: E402

GPU = torch.cuda.is_available() and not ul.SIMULATOR
DEVICES = [("cpu", "cpu")] + ([("cuda", "cuda")] if GPU else [])


def median_ms(function, repeat: int, warmup: int = 3) -> float:
    """Median wall time of ``function()`` in milliseconds (GPU work included)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        if GPU:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if GPU:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def report(name: str, ours: float, baseline: float, baseline_name: str) -> None:
    print(f"{name:<44} ours {ours:9.3f} ms   {baseline_name} {baseline:9.3f} ms   ratio {ours / baseline:5.2f}"
          f"   (speedup {baseline / ours:6.1f}x)")


def peak_extra_memory_mb(setup: str, statement: str, device: str = "cpu") -> float:
    """Peak memory (MB) that ``statement`` allocates beyond what ``setup``
    left allocated, measured in a fresh process: on the CPU the rise of the
    resident-set high-water mark (after a warm-up on tiny inputs, so that
    compilation is not counted; MB-granular, as the OS counts pages), on a
    GPU torch's allocator peak."""
    code = textwrap.dedent(f"""
        import os, resource, sys
        os.environ["UPSAMPLELIB_QUIET"] = "1"
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        import torch
        import upsamplelib as ul
        device = {device!r}
        def peak():
            if device == "cuda":
                return torch.cuda.max_memory_allocated()
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
            # parent process across fork and exec.
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        SIZE = "tiny"
        {textwrap.indent(setup, "        ").strip()}
        {statement}
        SIZE = "full"
        {textwrap.indent(setup, "        ").strip()}
        if device == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        before = peak() if device == "cuda" else peak()
        base = torch.cuda.memory_allocated() if device == "cuda" else before
        {statement}
        if device == "cuda":
            torch.cuda.synchronize()
        print((peak() - base) / 2**20)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def report_memory(name: str, ours: float, baseline: float, baseline_name: str) -> None:
    fraction = ours / baseline if baseline > 0 else float("nan")
    print(f"{name:<44} ours {ours:9.1f} MB   {baseline_name} {baseline:9.1f} MB   ratio {fraction:5.3f}")


def gpu_kernel_ms(function, repeat: int) -> float:
    """Mean GPU time per call of the CUDA kernels ``function`` launches
    (CUPTI, through torch.profiler): the kernels alone, no launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        function()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeat):
            function()
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / 1e3 / repeat


def gpu_bandwidth_gbs() -> float:
    """Device memory bandwidth measured with a large copy (bytes read + written)."""
    a = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a), 10)
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def _backward(function, x):
    """A closure running only the backward of function(x) (graph built once)."""
    x = x.detach().requires_grad_()
    out = function(x)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, x, grad, retain_graph=True)


def bench_interpolate(repeat: int) -> None:
    print("== nearest / bilinear: 1x64x128x128 -> 256x256, float32 (baseline: F.interpolate)")
    for device, backend in DEVICES:
        x = torch.randn(1, 64, 128, 128, device=device)
        for mode in ("nearest", "bilinear"):
            ours = lambda t, m=mode: ul.interpolate(t, scale_factor=2, mode=m, backend=backend)  # noqa: E731
            theirs = lambda t, m=mode: F.interpolate(t, scale_factor=2, mode=m)  # noqa: E731
            label = f"{mode} {backend}"
            report(f"{label} forward", median_ms(lambda: ours(x), repeat), median_ms(lambda: theirs(x), repeat),
                   f"torch-{device}")
            report(f"{label} backward", median_ms(_backward(ours, x), repeat),
                   median_ms(_backward(theirs, x), repeat), f"torch-{device}")


CARAFE_SETUP = """
from upsamplelib.ops.carafe import carafe_reference
g = torch.Generator().manual_seed(0)
n, c, h, w, k, s, groups = (1, 4, 4, 4, 5, 2, {groups}) if SIZE == "tiny" else (1, 64, 64, 64, 5, 2, {groups})
x = torch.randn(n, c, h, w, generator=g).to(device).requires_grad_()
masks = torch.softmax(torch.randn(n, groups, k * k, s * h, s * w, generator=g), 2).view(n, groups * k * k, s * h, s * w)
masks = masks.to(device).requires_grad_()
grad = torch.randn(n, c, s * h, s * w, generator=g).to(device)
"""


def bench_carafe(repeat: int) -> None:
    print("== CARAFE reassembly: N=1, C=64, 64x64 -> 128x128, k=5 (baseline: unfold formulation, "
          "upsamplelib.ops.carafe.carafe_reference)")
    from upsamplelib.ops.carafe import carafe_reference

    for device, backend in DEVICES:
        for groups in (1, 4):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(1, 64, 64, 64, generator=g).to(device)
            masks = torch.softmax(torch.randn(1, groups, 25, 128, 128, generator=g), 2).view(1, groups * 25, 128, 128)
            masks = masks.to(device)
            ours = lambda a, b: ul.carafe(a, b, 5, 2, groups, backend=backend)  # noqa: E731
            theirs = lambda a, b: carafe_reference(a, b, 5, 2, groups)  # noqa: E731
            label = f"carafe G={groups} {backend}"
            report(f"{label} forward", median_ms(lambda: ours(x, masks), repeat),
                   median_ms(lambda: theirs(x, masks), repeat), f"unfold-{device}")
            grads = []
            for function in (ours, theirs):
                xr, mr = x.clone().requires_grad_(), masks.clone().requires_grad_()
                out = function(xr, mr)
                grad = torch.randn_like(out)
                grads.append(lambda o=out, a=xr, b=mr, gr=grad: torch.autograd.grad(o, (a, b), gr, retain_graph=True))
            report(f"{label} backward (x and masks)", median_ms(grads[0], repeat), median_ms(grads[1], repeat),
                   f"unfold-{device}")
            setup = CARAFE_SETUP.format(groups=groups)
            forward = "out = {}(x, masks, k, s, groups{})"
            ours_fwd = forward.format("ul.carafe", f", backend={backend!r}")
            theirs_fwd = forward.format("carafe_reference", "")
            backward = "; torch.autograd.grad(out, (x, masks), grad)"
            report_memory(f"{label} forward peak extra memory", peak_extra_memory_mb(setup, ours_fwd, device),
                          peak_extra_memory_mb(setup, theirs_fwd, device), f"unfold-{device}")
            report_memory(f"{label} fwd+bwd peak extra memory",
                          peak_extra_memory_mb(setup, ours_fwd + backward, device),
                          peak_extra_memory_mb(setup, theirs_fwd + backward, device), f"unfold-{device}")
            if device == "cuda":
                kernel = gpu_kernel_ms(lambda: ours(x, masks), repeat)
                bandwidth = gpu_bandwidth_gbs()
                minimum_bytes = 4 * (x.numel() + masks.numel() + x.numel() * 4)  # read x, masks; write out
                roofline = minimum_bytes / (bandwidth * 1e9) * 1e3
                print(f"{label} forward kernel {kernel:.4f} ms on the GPU; memory roofline {roofline:.4f} ms "
                      f"at the measured {bandwidth:.0f} GB/s: {roofline / kernel:.0%} of roofline")


SAPA_SETUP = """
g = torch.Generator().manual_seed(0)
channels, h, w = (8, 4, 4) if SIZE == "tiny" else ({channels}, {size}, {size})
module = ul.SAPA(channels, channels, up_factor=2, up_kernel_size=5, embedding_dim=64).to(device)
module.backend = {backend!r}
y = torch.randn(1, channels, 2 * h, 2 * w, generator=g).to(device).requires_grad_()
x = torch.randn(1, channels, h, w, generator=g).to(device).requires_grad_()
"""


def bench_sapa(repeat: int) -> None:
    print("== SAPA-B module (d=64, k=5, x2) forward and backward (baseline: the same module on the plain-PyTorch "
          "unfold formulation, backend='torch')")
    for device, backend in DEVICES:
        for channels, size, runs in ((64, 32, repeat), (256, 120, max(3, repeat // 5))):
            torch.manual_seed(0)
            module = ul.SAPA(channels, channels).to(device)
            y = torch.randn(1, channels, 2 * size, 2 * size, device=device)
            x = torch.randn(1, channels, size, size, device=device)
            label = f"sapa-B C={channels} {size}->{2 * size} {backend}"
            times = {}
            for name in (backend, "torch"):
                module.backend = name
                forward = median_ms(lambda: module(y, x), runs)
                yr, xr = y.clone().requires_grad_(), x.clone().requires_grad_()
                out = module(yr, xr)
                grad = torch.randn_like(out)
                backward = median_ms(lambda: torch.autograd.grad(out, (yr, xr), grad, retain_graph=True), runs)
                times[name] = (forward, backward)
            report(f"{label} forward", times[backend][0], times["torch"][0], f"unfold-{device}")
            report(f"{label} backward (y and x)", times[backend][1], times["torch"][1], f"unfold-{device}")
            statement = "out = module(y, x); torch.autograd.grad(out, (y, x), torch.ones_like(out))"
            memory = [peak_extra_memory_mb(SAPA_SETUP.format(channels=channels, size=size, backend=name),
                                           statement, device) for name in (backend, "torch")]
            report_memory(f"{label} fwd+bwd peak extra memory", *memory, f"unfold-{device}")


FADE_SETUP = """
from upsamplelib.ops.fade import two_convolutions
g = torch.Generator().manual_seed(0)
c, h = (4, 4) if SIZE == "tiny" else (64, 64)
en = torch.randn(1, c, 2 * h, 2 * h, generator=g).to(device).requires_grad_()
de = torch.randn(1, c, h, h, generator=g).to(device).requires_grad_()
weight = (0.01 * torch.randn(25, c, 3, 3, generator=g)).to(device).requires_grad_()
bias = torch.zeros(25).to(device).requires_grad_()
"""


def _concat_conv(en, de, weight, bias):
    """The naive alternative: one conv over [encoder, upsampled decoder]."""
    both = torch.cat([en, F.interpolate(de, scale_factor=2, mode="nearest")], dim=1)
    return F.conv2d(both, torch.cat([weight, weight], dim=1), 2 * bias, padding=weight.shape[2] // 2)


def bench_fade(repeat: int) -> None:
    print("== FADE: semi-shift convolution (C=64 compressed, 64x64 -> 128x128, 3x3 -> 25 logits) and the whole "
          "module (C=64) forward+backward (baselines: the two-conv PyTorch formulation, and one conv over "
          "[encoder, upsampled decoder])")
    from upsamplelib.ops.fade import two_convolutions

    for device, backend in DEVICES:
        g = torch.Generator().manual_seed(0)
        en = torch.randn(1, 64, 128, 128, generator=g).to(device)
        de = torch.randn(1, 64, 64, 64, generator=g).to(device)
        weight = (0.01 * torch.randn(25, 64, 3, 3, generator=g)).to(device)
        bias = torch.zeros(25, device=device)
        variants = {
            "ours": lambda *t: ul.semi_shift_conv(*t, scale=2, backend=backend),
            "two-conv": lambda *t: two_convolutions(*t, 2),
            "concat-conv": _concat_conv,
        }
        forward, backward = {}, {}
        for name, function in variants.items():
            forward[name] = median_ms(lambda f=function: f(en, de, weight, bias), repeat)
            leaves = [t.clone().requires_grad_() for t in (en, de, weight, bias)]
            out = function(*leaves)
            grad = torch.randn_like(out)
            backward[name] = median_ms(lambda o=out, l=leaves, gr=grad: torch.autograd.grad(o, l, gr, retain_graph=True),
                                       repeat)
        for name in ("two-conv", "concat-conv"):
            report(f"semi-shift {backend} forward", forward["ours"], forward[name], f"{name}-{device}")
            report(f"semi-shift {backend} backward (en, de, W, b)", backward["ours"], backward[name], f"{name}-{device}")
        statements = {
            "ours": f"out = ul.semi_shift_conv(en, de, weight, bias, 2, backend={backend!r})",
            "two-conv": "out = two_convolutions(en, de, weight, bias, 2)",
            "concat-conv": ("both = torch.cat([en, torch.nn.functional.interpolate(de, scale_factor=2)], 1); "
                            "out = torch.nn.functional.conv2d(both, torch.cat([weight, weight], 1), 2 * bias, padding=1)"),
        }
        backward_statement = "; torch.autograd.grad(out, (en, de, weight, bias), torch.ones_like(out))"
        memory = {name: peak_extra_memory_mb(FADE_SETUP, statement + backward_statement, device)
                  for name, statement in statements.items()}
        for name in ("two-conv", "concat-conv"):
            report_memory(f"semi-shift {backend} fwd+bwd peak extra memory", memory["ours"], memory[name],
                          f"{name}-{device}")
        torch.manual_seed(0)
        module = ul.FADE(64).to(device)
        en_full, de_full = torch.randn(1, 64, 128, 128, device=device), torch.randn(1, 64, 64, 64, device=device)

        def module_step(name):
            module.backend = name
            a, b = en_full.clone().requires_grad_(), de_full.clone().requires_grad_()
            out = module(a, b)
            torch.autograd.grad(out, (a, b), torch.ones_like(out))

        report(f"FADE module {backend} forward+backward", median_ms(lambda: module_step(backend), repeat),
               median_ms(lambda: module_step("torch"), repeat), f"two-conv+unfold-{device}")


SUITES = {"interpolate": bench_interpolate, "carafe": bench_carafe, "sapa": bench_sapa, "fade": bench_fade}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU measurements")
    args = parser.parse_args(argv)
    if args.gpu_only:
        if not GPU:
            parser.error("--gpu-only: no CUDA GPU here")
        DEVICES[:] = [("cuda", "cuda")]
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"CUDA: {torch.cuda.get_device_name() if GPU else 'none'}")
    for name in args.suites or SUITES:
        SUITES[name](args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
