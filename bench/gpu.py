"""The GPU benchmark: upsamplelib's CUDA kernels against plain PyTorch on the
same GPU, timed with CUDA events, written to ``bench/gpu_reference.csv``.

    python bench/gpu.py                      # on a CUDA GPU: measure, write the CSV
    python bench/gpu.py --csv other.csv      # somewhere else
    python bench/gpu.py --dry-run            # no GPU needed: every case once, tiny, on the CPU; writes nothing

``bench/gpu_check.sh`` runs it, after the GPU tests, in one call (device
time is short). Every row names the GPU it was measured on; the CSV is
only ever written by a run on a GPU, never by hand or by ``--dry-run``.

What is measured (medians over ``--repeat`` runs after warm-up; ratios are
ours / baseline, below 1 is faster):

* launch overhead: host wall time per call of a tiny op, many calls in a
  row (the GPU idles: the host is the bottleneck), for numba's own launch
  path, the cached path (``backend.FAST_LAUNCH``), the whole ``ul.interpolate``
  call and ``F.interpolate``. Target: <= 50 us per small op;
* CARAFE forward, C=256, 128x128 -> 256x256, k=5: fast and teaching kernels,
  unfold and the slot-loop ``addcmul`` form; effective GB/s of the minimum
  traffic against the measured copy bandwidth. Target: >= 60 % of copy;
* SAPA-B at the authors' size (256 channels, 120x120 -> 240x240): the
  similarity and the module forward. Target: module forward < 0.3 ms;
* FADE module forward+backward against its plain-PyTorch form (backend="torch");
* every op's backward against its plain-PyTorch form.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import upsamplelib as ul  # noqa: E402
from upsamplelib import backend as machinery  # noqa: E402
from upsamplelib.ops.carafe import carafe_reference  # noqa: E402
from upsamplelib.ops.fade import two_convolutions  # noqa: E402
from upsamplelib.ops.sapa import sapa_similarity_reference  # noqa: E402

DEFAULT_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_reference.csv")
COLUMNS = ["gpu", "case", "ours", "ours_ms", "baseline", "baseline_ms", "ratio", "effective_gbs", "copy_gbs",
           "fraction_of_copy", "note"]


# --------------------------------------------------------------------------
# Timers
# --------------------------------------------------------------------------


def cuda_event_ms(function, repeat=30, warmup=5):
    """Median GPU time of ``function()`` in ms, between two CUDA events on
    the current stream (launch overhead that the GPU hides is not counted)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def wall_ms(function, repeat=30, warmup=3):
    """Median wall time of ``function()`` in ms (the --dry-run timer, and the
    GPU's when synchronised inside)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def host_us_per_call(function, calls=2000, rounds=5, synchronize=None):
    """Host wall time per call, in us, of ``calls`` calls in a row (the
    median of ``rounds``): the per-call overhead when the kernels are tiny."""
    function()
    results = []
    for _ in range(rounds):
        if synchronize:
            synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            function()
        if synchronize:
            synchronize()
        results.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(results)


def copy_bandwidth_gbs(device, timer, megabytes=1024):
    """Measured device copy bandwidth: (read + write) bytes / time of a copy."""
    elements = megabytes * 2**20 // 4
    source = torch.empty(elements, device=device)
    target = torch.empty_like(source)
    ms = timer(lambda: target.copy_(source))
    return 2 * source.numel() * 4 / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------
# Baselines that the library does not ship
# --------------------------------------------------------------------------


def carafe_slot_loop(x, masks, kernel_size, scale, group=1):
    """CARAFE as a loop over the k*k window slots, one ``addcmul_`` each:
    the best plain-PyTorch form on the CPU (zero padding is multiplied,
    which differs from the kernels only for non-finite masks)."""
    n, channels, height, width = x.shape
    radius = (kernel_size - 1) // 2
    padded = F.pad(x, (radius, radius, radius, radius))
    out = x.new_zeros(n, group, channels // group, scale * height, scale * width)
    weights = masks.view(n, group, kernel_size * kernel_size, scale * height, scale * width)
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            window = padded[:, :, dy:dy + height, dx:dx + width]
            window = window.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
            out.addcmul_(window.view_as(out), weights[:, :, dy * kernel_size + dx].unsqueeze(2))
    return out.view(n, channels, scale * height, scale * width)


def _gradient_call(function, *inputs):
    """A callable running the backward of ``function(*inputs)`` once more
    (the graph is kept), for the inputs that are floating point."""
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
    out = function(*leaves)
    grad = torch.randn_like(out)
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    return lambda: torch.autograd.grad(out, tensors, grad, retain_graph=True)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


class Bench:
    """Collects rows; ``device``/``backend`` are "cuda" on a GPU, "cpu" in a dry run."""

    def __init__(self, dry_run, repeat):
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.backend = "cpu" if dry_run else "cuda"
        self.repeat = 1 if dry_run else repeat
        self.gpu = "none (dry run)" if dry_run else torch.cuda.get_device_name()
        self.timer = (lambda f: wall_ms(f, 1, 0)) if dry_run else (lambda f: cuda_event_ms(f, self.repeat))
        self.copy_gbs = copy_bandwidth_gbs(self.device, self.timer, 16 if dry_run else 1024)
        self.rows = []

    def size(self, full, tiny):
        return tiny if self.dry_run else full

    def add(self, case, ours, ours_ms, baseline="", baseline_ms=None, traffic_bytes=None, note=""):
        gbs = traffic_bytes / (ours_ms * 1e-3) / 1e9 if traffic_bytes else None
        row = {"gpu": self.gpu, "case": case, "ours": ours, "ours_ms": f"{ours_ms:.4f}", "baseline": baseline,
               "baseline_ms": "" if baseline_ms is None else f"{baseline_ms:.4f}",
               "ratio": "" if baseline_ms is None else f"{ours_ms / baseline_ms:.3f}",
               "effective_gbs": "" if gbs is None else f"{gbs:.1f}", "copy_gbs": f"{self.copy_gbs:.1f}",
               "fraction_of_copy": "" if gbs is None else f"{gbs / self.copy_gbs:.3f}", "note": note}
        self.rows.append(row)
        ratio = f"ratio {row['ratio']:>6}" if row["ratio"] else ""
        extra = f"  {row['effective_gbs']} GB/s = {row['fraction_of_copy']} of copy" if gbs else ""
        print(f"{case:<46} {ours:<22} {ours_ms:9.4f} ms  {baseline:<18} "
              f"{'' if baseline_ms is None else f'{baseline_ms:9.4f} ms'}  {ratio}{extra}")

    def compare(self, case, variants, baselines, traffic_bytes=None, note=""):
        """Time each of ours (name -> callable) against the first baseline,
        and add the other baselines as rows of their own."""
        timed = {name: self.timer(function) for name, function in baselines.items()}
        first = next(iter(timed))
        for name, function in variants.items():
            self.add(case, name, self.timer(function), first, timed[first], traffic_bytes, note)
        for name in list(timed)[1:]:
            self.add(case, name, timed[name], first, timed[first], traffic_bytes, "baseline")


def bench_launch_overhead(bench):
    """Per-call host cost of a tiny launch, and of a whole tiny op."""
    from upsamplelib.ops.interpolate import nearest_forward_kernel

    x = torch.randn(1, 1, 8, 8, device=bench.device)
    planes, out = x.view(1, 8, 8), torch.empty(1, 16, 16, device=bench.device)
    calls = 50 if bench.dry_run else 2000
    sync = None if bench.dry_run else torch.cuda.synchronize
    scale = np.float32(0.5)  # the kernel's float32 signature

    def launch():
        machinery.run(nearest_forward_kernel, "cuda", out.numel(), planes, out, scale, scale, False, 2)

    if not bench.dry_run:  # a launch needs a GPU (or the simulator, far too slow to time)
        for label, enabled in (("numba launch", False), ("cached launch", True)):
            machinery.FAST_LAUNCH.enabled = enabled
            bench.add("launch: nearest kernel, 8x8 -> 16x16", label, host_us_per_call(launch, calls, 5, sync) / 1e3,
                      note="host ms per call, many calls in a row")
        machinery.FAST_LAUNCH.enabled = True
    ours = host_us_per_call(lambda: ul.interpolate(x, scale_factor=2, backend=bench.backend), calls, 5, sync)
    theirs = host_us_per_call(lambda: F.interpolate(x, scale_factor=2), calls, 5, sync)
    bench.add("op: interpolate nearest 8x8 -> 16x16", f"ul.interpolate {bench.backend}", ours / 1e3,
              "F.interpolate", theirs / 1e3, note="host ms per call, many calls in a row; target <= 0.050")


def bench_carafe(bench):
    channels, size = bench.size((256, 128), (4, 6))
    k, s = 5, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, size, size, generator=g).to(bench.device)
    masks = torch.softmax(torch.randn(1, k * k, s * size, s * size, generator=g), 1).to(bench.device)
    traffic = 4 * (x.numel() + masks.numel() + x.numel() * s * s)
    case = f"carafe forward C={channels} {size}->{s * size} k={k}"
    variants = {}
    for variant in ("fast", "teaching") if not bench.dry_run else ("auto",):
        def ours(variant=variant):
            with machinery.kernel_variant_as(variant):
                return ul.carafe(x, masks, k, s, backend=bench.backend)
        variants[f"ours {variant}"] = ours
    bench.compare(case, variants, {"unfold": lambda: carafe_reference(x, masks, k, s),
                                   "slot-loop addcmul": lambda: carafe_slot_loop(x, masks, k, s)},
                  traffic, note="target: fast >= 0.60 of copy")
    bench.compare(case.replace("forward", "backward (x, masks)"),
                  {"ours": _gradient_call(lambda a, b: ul.carafe(a, b, k, s, backend=bench.backend), x, masks)},
                  {"unfold": _gradient_call(lambda a, b: carafe_reference(a, b, k, s), x, masks)})


def bench_sapa(bench):
    channels, size = bench.size((256, 120), (8, 4))
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, channels, 2 * size, 2 * size, generator=g).to(bench.device)
    x = torch.randn(1, channels, size, size, generator=g).to(bench.device)
    q, key = torch.randn(1, 64, 2 * size, 2 * size).to(bench.device), torch.randn(1, 64, size, size).to(bench.device)
    traffic = 4 * (q.numel() + key.numel() + 25 * q[0, 0].numel())
    bench.compare(f"sapa similarity d=64 {size}->{2 * size} k=5",
                  {"ours": lambda: ul.sapa_similarity(q, key, 5, 2, backend=bench.backend)},
                  {"unfold": lambda: sapa_similarity_reference(q, key, 5, 2)}, traffic)
    bench.compare(f"sapa similarity backward d=64 {size}->{2 * size}",
                  {"ours": _gradient_call(lambda a, b: ul.sapa_similarity(a, b, 5, 2, backend=bench.backend), q, key)},
                  {"unfold": _gradient_call(lambda a, b: sapa_similarity_reference(a, b, 5, 2), q, key)})
    torch.manual_seed(0)
    module = ul.SAPA(channels, channels).to(bench.device)

    def run_module(name, backward):
        module.backend = name
        if backward:  # the graph records the backend's ops now
            return _gradient_call(module, y, x)

        def forward():
            module.backend = name
            return module(y, x)
        return forward

    with torch.no_grad():
        bench.compare(f"SAPA-B module forward C={channels} {size}->{2 * size}",
                      {"ours": run_module(bench.backend, False)},
                      {"unfold (backend=torch)": run_module("torch", False)},
                      note="target: < 0.3 ms")
    bench.compare(f"SAPA-B module backward C={channels} {size}->{2 * size}",
                  {"ours": run_module(bench.backend, True)}, {"unfold (backend=torch)": run_module("torch", True)})


def bench_fade(bench):
    channels, size = bench.size((64, 64), (4, 4))
    g = torch.Generator().manual_seed(0)
    en = torch.randn(1, channels, 2 * size, 2 * size, generator=g).to(bench.device)
    de = torch.randn(1, channels, size, size, generator=g).to(bench.device)
    weight = (0.01 * torch.randn(25, channels, 3, 3, generator=g)).to(bench.device)
    bias = torch.zeros(25, device=bench.device)
    ours = lambda *t: ul.semi_shift_conv(*t, scale=2, backend=bench.backend)  # noqa: E731
    theirs = lambda *t: two_convolutions(*t, 2)  # noqa: E731
    case = f"semi-shift conv C={channels} {size}->{2 * size} 3x3->25"
    bench.compare(f"{case} forward", {"ours": lambda: ours(en, de, weight, bias)},
                  {"two convolutions": lambda: theirs(en, de, weight, bias)})
    bench.compare(f"{case} backward", {"ours": _gradient_call(ours, en, de, weight, bias)},
                  {"two convolutions": _gradient_call(theirs, en, de, weight, bias)})
    for variant in ("fast", "teaching") if not bench.dry_run else ():
        grad = torch.randn(1, 25, 2 * size, 2 * size, device=bench.device)

        def weight_grad(variant=variant):
            with machinery.kernel_variant_as(variant):
                return torch.ops.upsamplelib.semi_shift_conv_weight_grad(grad, en, de, 3, 2, 1, "cuda")
        bench.add(f"{case} weight gradient", f"ours {variant}", bench.timer(weight_grad))
    torch.manual_seed(0)
    module = ul.FADE(channels).to(bench.device)
    en_full, de_full = torch.randn(1, channels, 2 * size, 2 * size), torch.randn(1, channels, size, size)
    en_full, de_full = en_full.to(bench.device), de_full.to(bench.device)

    def step(name):
        def run():
            module.backend = name
            module.zero_grad(set_to_none=True)
            module(en_full, de_full).square().mean().backward()
        return run

    bench.compare(f"FADE module forward+backward C={channels} {size}->{2 * size}", {"ours": step(bench.backend)},
                  {"plain PyTorch (backend=torch)": step("torch")}, note="target: ours faster")


def bench_interpolate(bench):
    channels, size = bench.size((64, 256), (2, 8))
    x = torch.randn(8 if not bench.dry_run else 1, channels, size, size, device=bench.device)
    for mode in ("nearest", "bilinear"):
        options = {"align_corners": False} if mode == "bilinear" else {}
        def ours(t, m=mode, o=options):
            return ul.interpolate(t, scale_factor=2, mode=m, backend=bench.backend, **o)
        theirs = lambda t, m=mode, o=options: F.interpolate(t, scale_factor=2, mode=m, **o)  # noqa: E731
        case = f"interpolate {mode} {tuple(x.shape)} x2"
        bench.compare(f"{case} forward", {"ours": lambda f=ours: f(x)}, {"F.interpolate": lambda f=theirs: f(x)},
                      4 * 5 * x.numel())
        bench.compare(f"{case} backward", {"ours": _gradient_call(ours, x)},
                      {"F.interpolate": _gradient_call(theirs, x)}, 4 * 5 * x.numel())


BENCHES = [bench_launch_overhead, bench_carafe, bench_sapa, bench_fade, bench_interpolate]


def write_csv(rows, path):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: run every case once, tiny, on the CPU")
    parser.add_argument("--csv", default=DEFAULT_CSV, help="where a GPU run writes its rows")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.dry_run and (ul.SIMULATOR or not torch.cuda.is_available()):
        parser.error("no CUDA GPU in this process (kernels run in the simulator): use --dry-run")
    bench = Bench(args.dry_run, args.repeat)
    print(f"GPU: {bench.gpu}; torch {torch.__version__}; measured copy bandwidth {bench.copy_gbs:.0f} GB/s; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    for run in BENCHES:
        run(bench)
    if args.dry_run:
        print(f"dry run: {len(bench.rows)} rows measured on the CPU at tiny sizes; nothing written")
        return 0
    write_csv(bench.rows, args.csv)
    print(f"wrote {len(bench.rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
