"""bench/run.py (`make bench`) in its smallest mode: it runs every section
and writes the CSV and the plot with the report's columns. Timings are not
checked here (they are the benchmark's business, never a test's)."""

import csv
import importlib.util
import os
import subprocess
import sys

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(REPOSITORY, "bench", "run.py"))
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
    targets = [r for r in ops if r["target"]]
    assert targets and all(r["target_met"] in ("True", "False") for r in targets)
    for row in (r for r in rows if r["section"] == "scaling"):
        assert float(row["value"]) > 0 and row["parameter"] in ("H x W", "C", "k")
        float(row["exponent"])
    compile_rows = [r for r in rows if r["section"] == "compile"]
    assert compile_rows and all(float(r["cold_s"]) >= 0 and float(r["warm_s"]) >= 0 for r in compile_rows)
    assert "ratio" in done.stdout and "empty Numba cache" in done.stdout


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
