"""bench/run.py (`make bench`) in its smallest mode: it runs every section
and writes the CSV and the plot with the report's columns. Timings are not
checked here (they are the benchmark's business, never a test's)."""

import csv
import importlib.util
import os
import subprocess
import sys

import pytest

from upsamplelib import backend as ul_backend

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_module(name="run"):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPOSITORY, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_bench_writes_the_report(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPOSITORY, "bench", "run.py"), "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    bench = _bench_module()
    with open(tmp_path / "bench.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == bench.COLUMNS
        rows = list(reader)
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert {r["section"] for r in rows} == {"bandwidth", "ops", "scaling", "compile"}
    ops = [r for r in rows if r["section"] == "ops"]
    names = {(r["op"], r["pass"]) for r in ops}
    for op in ("interpolate nearest", "interpolate bilinear"):
        assert {(op, "forward"), (op, "backward")} <= names
    assert {("carafe", "forward"), ("carafe", "backward (x, masks)"), ("sapa similarity", "forward"),
            ("SAPA-B module", "forward"), ("semi_shift_conv", "forward"), ("semi_shift_conv", "forward+backward"),
            ("FADE module", "forward+backward")} <= names
    for row in ops:
        assert float(row["ours_ms"]) > 0 and float(row["baseline_ms"]) > 0
        assert abs(float(row["ratio"]) - float(row["ours_ms"]) / float(row["baseline_ms"])) < 1e-6
        assert row["device"] == "cpu" and float(row["copy_gbs"]) > 0
        assert row["device_name"] == bench.device_name("cpu")
    targets = [r for r in ops if r["target"]]
    assert targets and all(r["target_met"] in ("True", "False") for r in targets)
    for row in (r for r in rows if r["section"] == "scaling"):
        assert float(row["value"]) > 0 and row["parameter"] in ("H x W", "C", "k")
        float(row["exponent"])
        assert row["verdict"].startswith(("linear in the work", "fits a part linear", "NOT linear in the work"))
    compile_rows = [r for r in rows if r["section"] == "compile"]
    assert compile_rows and all(float(r["cold_s"]) >= 0 and float(r["warm_s"]) >= 0 for r in compile_rows)
    assert "ratio" in done.stdout and "empty Numba cache" in done.stdout


def test_the_report_names_the_processor_and_numbas_target():
    """The same code's ratios differ from one CPU to another (the register
    loops' vector width, the convolutions' kernels): the report says which
    CPU, and which LLVM target Numba compiled for, it measured."""
    import llvmlite.binding
    import numba

    name = _bench_module().device_name("cpu")
    assert name.startswith("CPU, ") and " threads: " in name
    target = numba.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()
    assert name.endswith(f", LLVM target {target}") and len(name.split(": ", 1)[1]) > len(f", LLVM target {target}")


def test_memory_is_measured_in_a_child_process():
    """The peak-memory columns come from another process: measuring fixes
    glibc's mmap threshold, which would change the page faults of every
    timing after it."""
    bench = _bench_module()
    peaks = bench.measure_memory("cpu", quick=True, only=("carafe",))
    assert set(peaks) == {("carafe", "forward"), ("carafe", "backward (x, masks)")}
    assert set(peaks["carafe", "forward"]) == {"ours", "unfold", "slot loop (addcmul)"}
    # the unfold form holds k*k copies of x: far more than our output alone
    assert peaks["carafe", "forward"]["unfold"] > peaks["carafe", "forward"]["ours"] >= 0


def test_scaling_verdict_linear():
    bench = _bench_module()
    assert bench.scaling_verdict("C", [16, 32, 64], [1.0e-3, 2.1e-3, 3.9e-3], 1) == "linear in the work"


def test_scaling_verdict_separates_a_part_that_does_not_grow():
    """0.5 ms + 0.01 ms per channel, each point within 10 % of it: the
    exponent is far from 1, but the fit of a fixed plus a linear part holds."""
    bench = _bench_module()
    times = [(0.5 + 0.01 * c) * 1e-3 * noise for c, noise in ((16, 1.0), (32, 1.08), (64, 0.97))]
    assert bench.fit_exponent([16, 32, 64], times) < 0.75
    fixed, per_unit, miss = bench.fit_fixed_plus_per_unit([16, 32, 64], times)
    assert 0 < miss <= bench.FIT_TOLERANCE
    verdict = bench.scaling_verdict("C", [16, 32, 64], times, 1)
    assert verdict == ("fits a part linear in the work plus 0.55 ms that does not grow with C (83% of the smallest "
                       "run's time)")


def test_scaling_verdict_does_not_average_a_jump_away():
    """CARAFE against k as one run measured it: the exponent over the run
    (2.15) is within 0.25 of the work's, but 5 -> 7 takes 5x the time for 2x
    the work."""
    bench = _bench_module()
    values, times = [3, 5, 7], [0.10e-3, 0.14e-3, 0.70e-3]
    assert abs(bench.fit_exponent(values, times) - 2) <= 0.25
    verdict = bench.scaling_verdict("k", values, times, 2, [0, 0, 0], bench.known_cause("carafe", "k", "cpu"))
    assert verdict.startswith("NOT linear in the work: k 5 -> 7 takes 5.0x the time for 2.0x the work; k = 7 sums its window in 3 passes (k = 5: 1)")


def test_scaling_verdict_does_not_call_a_bend_a_fixed_part():
    """Time growing as the square root of the work: three points the line
    misses by more than the tolerance; two points, which any line fits."""
    bench = _bench_module()
    values = [16, 64, 256]
    times = [1e-3 * (v / 16) ** 0.5 for v in values]
    miss = bench.fit_fixed_plus_per_unit(values, times)[2]
    assert miss > bench.FIT_TOLERANCE
    verdict = bench.scaling_verdict("C", values, times, 1)
    assert verdict.startswith("NOT linear in the work: C ")
    # Slower than the work at every step: said, with the fit's miss.
    assert verdict.endswith("no step grows faster than the work (beyond 15%): a cost that does not grow with C "
                            f"weighs at these sizes (a fixed part plus a linear one misses a point by {miss:.0%})")
    two = bench.scaling_verdict("C", [8, 16], [1.0e-3, 1.05e-3], 1)
    assert two.startswith("NOT linear in the work: C 8 -> 16") and two.endswith("weighs at these sizes")
    # A step faster than the work is named as such.
    assert "no step grows faster" not in bench.scaling_verdict("C", values, [1e-3, 2e-3, 40e-3], 1)
    # CARAFE against k as this machine measured it: 5 -> 7 grows with the work, 3 -> 5 far more slowly; the
    # step named is the slow one, and the passes of k = 7 are not blamed.
    k_verdict = bench.scaling_verdict("k", [3, 5, 7], [0.17e-3, 0.20e-3, 0.41e-3], 2, [0, 0, 0],
                                      bench.known_cause("carafe", "k", "cpu"))
    assert k_verdict.startswith("NOT linear in the work: k 3 -> 5 takes 1.2x the time for 2.8x the work; no step ")
    assert "passes" not in k_verdict


def test_scaling_verdict_names_the_step_and_the_known_cause():
    """CARAFE's CPU forward against k: 3 and 5 on the line, 7 far above it;
    and a run whose worst step is the first, where the passes of k > 5 do not
    apply."""
    bench = _bench_module()
    cause = bench.known_cause("carafe", "k", "cpu")
    assert "REGISTER_SUMS_MOST_SLOTS" in cause(5, 7) and cause(3, 5) == ""
    verdict = bench.scaling_verdict("k", [3, 5, 7], [0.15e-3, 0.20e-3, 1.49e-3], 2, [0, 0, 0], cause)
    assert verdict.startswith("NOT linear in the work: k 5 -> 7 takes 7.4x the time for 2.0x the work; k = 7 sums its window in 3 passes ")
    verdict = bench.scaling_verdict("k", [3, 5, 7], [0.15e-3, 2.0e-3, 4.0e-3], 2, [0, 0, 0], cause)
    assert verdict == "NOT linear in the work: k 3 -> 5 takes 13.3x the time for 2.8x the work"


def test_scaling_verdict_names_a_jump_in_page_faults():
    """Bilinear at 256x256 -> 512x512, C=32: a 32 MiB output, mapped afresh on
    every call."""
    bench = _bench_module()
    values, times = [4096, 16384, 65536], [0.14e-3, 0.39e-3, 9.78e-3]
    verdict = bench.scaling_verdict("H x W", values, times, 1, [0, 0, 8193])
    assert verdict == ("NOT linear in the work: H x W 16384 -> 65536 takes 25.1x the time for 4.0x the work; "
                       "8193 page faults per call there against 0: fresh memory faulted in on every call "
                       "(glibc maps each block of 32 MiB or more anew)")
    assert "page faults" not in bench.scaling_verdict("H x W", values, times, 1, [float("nan")] * 3)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # PyTorch's own jvp decompositions load
def test_host_overhead_runs_every_cpu_backend_row(monkeypatch, capsys):
    # The rows' calls run (once each here, untimed); their figures are the script's business.
    module = _bench_module("host_overhead")
    called = []
    monkeypatch.setattr(module, "us_per_call", lambda function, **options: called.append(function()) or 1.0)
    module.cpu_backend_calls()
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 8 and all(" us" in row for row in rows), rows
    assert len(called) == 14  # ours on every row, PyTorch's (or backend="torch") beside the six interpolate rows


def test_nearest_channels_last_times_the_calls_and_each_loop_alone(monkeypatch, capsys):
    # Every call runs (untimed here: one call each, 1 ms); the figures are the script's business.
    module = _bench_module("nearest_channels_last")
    called = []
    monkeypatch.setattr(module, "median_ms_and_faults", lambda function: called.append(function()) or (1.0, 0.0))
    module.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in lines[1:5]] == [
        "ul.interpolate (fresh output)", "F.interpolate (fresh output)", "our loop (kept output)",
        "PyTorch's kernel (kept output)"]
    assert lines[5] == "  whole calls: ours / PyTorch = 1.000; loops alone: 1.000"
    assert len(called) == 5 * 4


def test_conv_layouts_times_each_convolution_in_both_layouts_both_orders_and_both_heap_states(capsys):
    module = _bench_module("conv_layouts")
    assert module.main(["--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    states = [i for i, line in enumerate(lines) if line.startswith("== ")]
    assert len(states) == (2 if sys.platform.startswith("linux") else 1), lines
    for start in states:
        convolutions, orders = lines[start + 2:start + 6], lines[start + 7:start + 10]
        assert [line.split()[0] for line in convolutions] == ["forward", "d/d", "d/d", "d/d"]
        for line in convolutions:
            *_, nchw, channels_last, faults = line.split()
            assert float(nchw) >= 0 and float(channels_last) >= 0 and len(faults.split("/")) == 2, line
        for line in orders:
            assert all(float(word) >= 0 for word in line.split()[-2:]), line
        assert [line.split(" (")[0].split("  ")[0] for line in orders] == [
            "weight gradient first", "weight gradient last", "each map's convolution_backward, NCHW"]
        assert lines[start + 10].startswith("d/d weight of channels-last maps")
        assert lines[start + 10].endswith("NCHW)" if module.fade._cpu_capability() == "AVX2" else "channels-last)")
        ways = lines[start + 11:start + 13]
        assert [line.split("  ")[0] for line in ways] == ["in channels-last", "NCHW, copies included"]
        assert all(float(word) >= 0 for line in ways for word in line.split()[-2:]), ways
        assert lines[start + 13].startswith("filters padded to 32, channels-last")
        assert lines[start + 13].endswith("used)")
        padded = lines[start + 14:start + 18]
        assert [line.split(",")[0] for line in padded] == ["forward conv2d(en)", "d/d weight"] * 2, padded
        assert all(float(word) >= 0 for line in padded for word in line.split()[-2:]), padded


def test_busy_core_times_each_small_call_both_ways_and_puts_the_grain_back(capsys):
    module = _bench_module("busy_core")
    grain = ul_backend.SERIAL_ELEMENTS
    assert module.main(["--repeats", "1"]) == 0
    assert ul_backend.SERIAL_ELEMENTS == grain
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 12 and [row.split()[0] for row in rows[:3]] == ["carafe", "nearest", "bilinear"]
    assert all(float(word) > 0 for row in rows for word in row.split()[-2:]), rows
