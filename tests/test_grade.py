"""The autograder, ``python -m upsamplelib.grade``.

Grading runs notebooks in the CUDA simulator, which is slow, so the tests
grade the two smallest lessons (00 and 01) and share their runs: one batch
run grades lesson 00 as a student gets it, lesson 01's solution and that
solution with one exercise wrong; one more run grades a notebook whose
cells hang and crash.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from upsamplelib.checkers.exercises import EXERCISES, for_lesson, requires
from upsamplelib.grade import STATUSES
from upsamplelib.grade.__main__ import main
from upsamplelib.grade.fresh_inputs import fresh_inputs, salted_seed
from upsamplelib.grade.grader import NotebookReport
from upsamplelib.grade.in_kernel import check_exercise, read_result
from upsamplelib.grade.report import write_json

ROOT = Path(__file__).resolve().parents[1]
SEED = 1234  # any salt: the solutions pass on every one


def grade(*args):
    """Run the grader's command line (in this process: the notebooks run in
    kernels of their own anyway); (exit status, what it printed)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = main([str(arg) for arg in args])
    return status, output.getvalue()


def replace_solution(notebook, exercise_id: str, body: str):
    """The notebook with the code between exercise_id's solution markers replaced by ``body``."""
    begin = f"# BEGIN SOLUTION {exercise_id}"
    for cell in notebook.cells:
        if begin in cell.source:
            lines = cell.source.split("\n")
            start = next(i for i, line in enumerate(lines) if begin in line)
            end = next(i for i in range(start, len(lines)) if "# END SOLUTION" in lines[i])
            indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
            new = [indent + line for line in body.strip("\n").split("\n")]
            cell.source = "\n".join(lines[:start] + new + lines[end + 1:])
            return notebook
    raise AssertionError(f"no solution of {exercise_id} in the notebook")


# -- fresh inputs -----------------------------------------------------------

def _draws():
    from upsamplelib.checkers.engine import random_sizes

    return (np.random.default_rng(10).standard_normal(3).tolist(),
            torch.Generator().manual_seed(30).initial_seed(),
            torch.manual_seed(40).initial_seed(),
            random_sizes(seed=1, count=5, low=1, high=700))


def test_fresh_inputs_salt_every_seed_the_checkers_use_and_restore_them():
    plain = _draws()
    with fresh_inputs(7) as log:
        salted = _draws()
        assert log.salted == 4
    with fresh_inputs(7):
        assert _draws() == salted  # the same salt gives the same inputs again
    with fresh_inputs(8):
        other = _draws()
    assert _draws() == plain  # restored afterwards
    for a, b, c in zip(plain, salted, other):
        assert a != b and b != c and a != c
    assert salted[1] == salted_seed(30, 7)
    assert isinstance(torch.Generator(), torch.Generator) and random.Random is not None


def test_a_checker_sees_inputs_the_notebook_did_not():
    """The 06.1 checker, run by the grader, hands the student's function
    other label maps than in the notebook: an answer that remembers the
    notebook's inputs cannot pass."""
    from upsamplelib import checkers
    from upsamplelib.experiments import metrics

    seen = []

    def boundary_band(target, width):
        seen.append(target.clone())
        return metrics.boundary_band(target, width)

    checkers.check_boundary_band(boundary_band)  # as the notebook's checker cell does
    in_notebook = len(seen)
    result = check_exercise("06.1", SEED, {"boundary_band": boundary_band})
    assert result["status"] == "passed" and result["fresh_inputs"]
    graded = seen[in_notebook:]
    assert len(graded) == in_notebook
    assert not any(a.shape == b.shape and torch.equal(a, b) for a in seen[:in_notebook] for b in graded)


# -- one exercise, in this process ------------------------------------------------

def _launch_config(n, threads):
    return ((n + threads - 1) // threads, threads)


@pytest.mark.parametrize("definition, status, message", [
    (_launch_config, "passed", ""),
    (lambda n, threads: (n // threads, threads), "failed", "threads cover only"),
    (lambda n, threads: (_ for _ in ()).throw(NotImplementedError("Exercise 00.2: write this part")),
     "unsolved", "Exercise 00.2"),
    (lambda n, threads: n / 0, "error", "ZeroDivisionError"),
    (None, "error", "`launch_config` is not defined"),
])
def test_check_exercise_says_what_happened(definition, status, message, capsys):
    namespace = {} if definition is None else {"launch_config": definition}
    result = check_exercise("00.2", SEED, namespace)
    assert result["status"] == status
    assert message in result["message"]
    if definition is not None and status == "error":  # where an unexpected exception came from
        assert "Traceback" in result["details"] and "ZeroDivisionError" in result["details"]
    assert read_result(capsys.readouterr().out) == result  # what the grader reads from the kernel


# -- whole notebooks -----------------------------------------------------------

@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One batch run over three submissions: lesson 00 as generated, lesson
    01's solution, and lesson 01's solution with 01.1 wrong (round instead
    of floor, which its dependents 01.3 and 01.4 then use)."""
    folder = tmp_path_factory.mktemp("submissions")
    (folder / "ada").mkdir()
    (folder / "ada" / "gpu_model.ipynb").write_bytes((ROOT / "lessons/00_gpu_model.ipynb").read_bytes())
    (folder / "bob").mkdir()
    (folder / "bob" / "01_nearest.ipynb").write_bytes((ROOT / "solutions/01_nearest.ipynb").read_bytes())
    wrong = replace_solution(nbformat.read(ROOT / "solutions/01_nearest.ipynb", as_version=4), "01.1", """
scale = np.float32(in_size) / np.float32(out_size)
return min(int(round(np.float32(dst) * scale)), in_size - 1)
""")
    (folder / "cy").mkdir()
    nbformat.write(wrong, folder / "cy" / "my copy.ipynb")
    csv_path, json_path = folder.parent / "grades.csv", folder.parent / "grades.json"
    status, stdout = grade("--batch", folder, "--csv", csv_path, "--json", json_path, "--seed", SEED,
                           "--timeout", 300)
    with open(csv_path, newline="") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    reports = {Path(r["notebook"]).parent.name: r for r in json.loads(json_path.read_text())["notebooks"]}
    return status, stdout, rows, reports


def statuses(report):
    return {e["exercise"]: e["status"] for e in report["exercises"]}


def test_the_generated_lesson_is_all_unsolved(batch):
    _, _, _, reports = batch
    report = reports["ada"]
    assert report["lesson"] == "00_gpu_model" and report["error"] == ""
    assert statuses(report) == {e.id: "unsolved" for e in for_lesson("00")}
    assert all("Exercise " + e["exercise"] in e["message"] for e in report["exercises"])
    assert report["cells"] and all(c["status"] == "error" for c in report["cells"])  # its checker cells raise


def test_the_solution_passes_every_exercise(batch):
    _, stdout, _, reports = batch
    report = reports["bob"]
    assert statuses(report) == {e.id: "passed" for e in for_lesson("01")}
    assert report["cells"] == [] and report["restarts"] == 0
    assert all(e["passed"] and e["message"] == "" for e in report["exercises"])
    assert "4 of 4 exercises passed" in stdout


def test_one_wrong_exercise_fails_and_those_built_on_it_say_so(batch):
    _, stdout, _, reports = batch
    report = reports["cy"]
    results = {e["exercise"]: e for e in report["exercises"]}
    assert results["01.1"]["status"] == "failed" and "nearest_index(" in results["01.1"]["message"]
    assert results["01.1"]["builds_on"] == []
    assert results["01.2"]["status"] == "passed"
    for dependent in ("01.3", "01.4"):
        assert "01.1" in requires(dependent)
        assert results[dependent]["status"] == "failed", results[dependent]
        assert results[dependent]["builds_on"] == ["01.1"]
        assert results[dependent]["message"].startswith("builds on 01.1, which failed. ")
    table = stdout[stdout.index("my copy.ipynb"):]
    table_row = next(line for line in table.splitlines() if line.strip().startswith("01.3"))
    assert "builds on 01.1, which failed" in table_row


def test_batch_exit_status_csv_and_json(batch):
    status, _, rows, reports = batch
    assert status == 1  # not every exercise passed
    assert set(rows) == {"ada/gpu_model", "bob/01_nearest", "cy/my copy"}
    assert [k for k in rows["ada/gpu_model"]][:6] == ["student", "lesson", "passed", "total", "seed", "error"]
    assert rows["bob/01_nearest"]["passed"] == rows["bob/01_nearest"]["total"] == "4"
    assert rows["cy/my copy"]["passed"] == "1" and rows["cy/my copy"]["01.1"] == "failed"
    assert rows["ada/gpu_model"]["00.3"] == "unsolved" and rows["ada/gpu_model"]["01.1"] == ""
    for report in reports.values():
        assert report["seed"] == SEED
        for exercise in report["exercises"]:
            assert exercise["exercise"] in EXERCISES
            assert exercise["status"] in STATUSES
            assert exercise["passed"] is (exercise["status"] == "passed")
            assert isinstance(exercise["message"], str)


def test_only_the_solutions_are_needed_and_all_passed_exits_0(tmp_path):
    """Lesson 00 cut down to its import cell and the five solution cells:
    the grader runs the checks itself, whatever checker cells the notebook
    kept, and exits 0 when every exercise passes."""
    lesson = nbformat.read(ROOT / "solutions/00_gpu_model.ipynb", as_version=4)
    notebook = nbformat.v4.new_notebook()
    kept = [next(c for c in lesson.cells if c.cell_type == "code" and "import upsamplelib" in c.source)]
    kept += [c for c in lesson.cells if "# BEGIN SOLUTION" in c.source]
    notebook.cells = [nbformat.v4.new_code_cell(c.source) for c in kept]
    assert len(notebook.cells) == 1 + len(for_lesson("00"))
    path, out = tmp_path / "my solutions.ipynb", tmp_path / "grade.json"  # named by the student
    nbformat.write(notebook, path)
    status, stdout = grade(path, "--json", out, "--seed", SEED + 1)
    report = json.loads(out.read_text())
    assert status == 0, stdout
    assert report["notebook"] == str(path) and report["lesson"] == "00_gpu_model"
    assert [(e["exercise"], e["passed"], e["status"], e["message"]) for e in report["exercises"]] == [
        (e.id, True, "passed", "") for e in for_lesson("00")]


HANGING_NOTEBOOK = [
    "import upsamplelib\nimport math\nimport numpy as np\nfrom numba import cuda\nfrom upsamplelib import checkers",
    # a cell of the student's own that spins in plain Python: interrupting the kernel ends it
    "while True:\n    pass",
    # 00.2 spins in plain Python when checked
    "def launch_config(n, threads_per_block):\n    while True:\n        pass",
    # 00.3 spins inside a simulated CUDA kernel: its threads outlive an interrupt
    "@cuda.jit\ndef grid_stride_kernel(x, out, factor):\n    while True:\n        pass",
    # 00.4: the student's cell kills the kernel
    "import os\nos._exit(3)\n\ndef flip_kernel(image, out):\n    pass",
    "SOLUTION 00.5",  # the lesson's solution, as test_hangs_... reads it
    "checkers.check_to_kernel_array(to_kernel_array)",
]


def solution_cell(lesson: str, exercise_id: str) -> str:
    notebook = nbformat.read(ROOT / "solutions" / f"{lesson}.ipynb", as_version=4)
    return next(c.source for c in notebook.cells if f"# BEGIN SOLUTION {exercise_id}" in c.source)


def test_hangs_and_crashes_are_reported_and_grading_carries_on(tmp_path):
    """Cells and checks that hang (in plain Python, and in a simulated
    kernel whose threads outlive an interrupt) and a cell that kills the
    kernel each cost their own exercise only. (00.1 is missing.)"""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell("A copy of lesson 00 with most of it deleted")]
    notebook.cells += [nbformat.v4.new_code_cell(solution_cell("00_gpu_model", "00.5") if source == "SOLUTION 00.5"
                                                 else source) for source in HANGING_NOTEBOOK]
    path = tmp_path / "hangs.ipynb"
    nbformat.write(notebook, path)
    out = tmp_path / "hangs.json"
    status, stdout = grade(path, "--json", out, "--seed", SEED, "--timeout", 20)
    report = json.loads(out.read_text())
    results = {e["exercise"]: (e["status"], e["message"]) for e in report["exercises"]}
    assert status == 1
    assert results["00.1"] == ("error", "`scale_kernel` is not defined: no cell of the notebook defines it")
    assert results["00.2"] == ("timeout", "the check did not finish within 20 s")
    assert results["00.3"] == ("timeout", "the check did not finish within 20 s")
    assert results["00.4"][0] == "error"
    assert results["00.4"][1].startswith("cell 6, which defines `flip_kernel`, crashed the kernel")
    assert results["00.5"] == ("passed", "")  # checked in the kernel that replaced those that hung or died
    assert {c["cell"]: c["status"] for c in report["cells"]} == {3: "timeout", 6: "crashed"}
    assert report["restarts"] == 2  # after the crash, and after 00.3's threads outlived the interrupt
    assert "cell 3 was interrupted: did not finish within 20 s" in stdout and "cell 6 crashed the kernel" in stdout


def test_a_file_that_is_no_lesson_is_a_row_with_its_reason(tmp_path):
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / "broken.ipynb").write_text('{"cells": [')
    for name in ("other", "-draft"):  # a name like an option is still a notebook
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]),
                       tmp_path / "class" / f"{name}.ipynb")
    status, stdout = grade("--batch", tmp_path / "class", "--csv", tmp_path / "grades.csv")
    with open(tmp_path / "grades.csv", newline="") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    assert status == 1
    assert rows["broken"]["error"].startswith("could not read the notebook: NotJSONError")
    assert rows["other"]["error"].startswith("could not tell which lesson")
    assert rows["-draft"]["error"].startswith("could not tell which lesson")
    assert rows["broken"]["seed"] == rows["other"]["seed"]  # one salt for the whole batch


# -- the command line's usage errors, and a batch that its notebooks attack -----------


@pytest.mark.parametrize("arguments, message", [
    (["--lesson", "99"], "--lesson 99: no such lesson (the lessons are 00_gpu_model, 01_nearest"),
    (["--json", "no such folder/report.json"], "--json no such folder/report.json: cannot write there"),
])
def test_usage_errors_come_before_grading(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "empty.ipynb")
    with pytest.raises(SystemExit) as exit:
        main(["empty.ipynb", *arguments])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_a_report_written_through_a_link_replaces_the_file_it_names(tmp_path):
    (tmp_path / "gradebook").mkdir()
    (tmp_path / "gradebook" / "grades.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "gradebook" / "grades.json")
    report = NotebookReport(notebook="mine.ipynb", lesson="00_gpu_model", seed=1, exercises=[], seconds=0.0)
    write_json([report], str(tmp_path / "link.json"), batch=False)
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads((tmp_path / "gradebook" / "grades.json").read_text())["notebook"] == "mine.ipynb"
    assert sorted(p.name for p in (tmp_path / "gradebook").iterdir()) == ["grades.json"]


def test_a_batch_gradebook_sent_to_stdout_is_one_json_document_after_the_tables(tmp_path, capfd):
    (tmp_path / "class").mkdir()
    for name in ("a", "b"):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]),
                       tmp_path / "class" / f"{name}.ipynb")
    status = main(["--batch", str(tmp_path / "class"), "--json", "/dev/stdout"])
    printed = capfd.readouterr().out
    tables, _, gradebook = printed.partition("\n{\n")
    assert status == 1 and "a.ipynb" in tables and "b.ipynb" in tables
    assert [Path(n["notebook"]).name for n in json.loads("{\n" + gradebook)["notebooks"]] == ["a.ipynb", "b.ipynb"]


def test_a_report_file_written_twice_holds_the_last_report(tmp_path):
    for seed in (1, 2):
        report = NotebookReport(notebook="mine.ipynb", lesson=None, seed=seed, exercises=[])
        write_json([report], str(tmp_path / "grades.json"), batch=False)
    assert json.loads((tmp_path / "grades.json").read_text())["seed"] == 2


def test_the_report_sent_to_stdout_redirected_to_a_file_follows_the_table(tmp_path):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]), tmp_path / "a.ipynb")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the table stays in Python's buffer
    with open(tmp_path / "out.txt", "w") as out:
        subprocess.run([sys.executable, "-m", "upsamplelib.grade", str(tmp_path / "a.ipynb"), "--json", "/dev/stdout",
                        "--seed", "1"], stdout=out, stderr=subprocess.DEVNULL, env=env, timeout=600, check=False)
    table, _, report = (tmp_path / "out.txt").read_text().partition("\n{\n")
    assert "a.ipynb  (lesson ?" in table and json.loads("{\n" + report)["seed"] == 1


def test_batch_folders_without_notebooks_are_usage_errors(tmp_path, capsys):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as exit:
            main(["--batch", str(folder), "--csv", str(tmp_path / "grades.csv")])
        assert exit.value.code == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "grades.csv").exists()


def test_a_lesson_number_may_drop_its_zero(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    nbformat.write(notebook, tmp_path / "mine.ipynb")
    status, stdout = grade(tmp_path / "mine.ipynb", "--lesson", "0", "--seed", SEED, "--timeout", 120)
    assert status == 1 and "(lesson 00_gpu_model," in stdout and "0 of 5 exercises passed" in stdout


def test_a_notebook_cannot_reach_the_others_or_stop_the_batch(tmp_path):
    """One student's notebook overwrites every notebook in its working
    directory, another kills its grader (the kernel's parent): the others
    are graded, their files are untouched, and the gradebook is written."""
    lesson_00 = nbformat.v4.new_markdown_cell("Exercise 00.1: a copy of lesson 00 with its code deleted")
    attacks = {
        "a_vandal": "import glob, os\nfor path in glob.glob(os.path.join(os.getcwd(), '*.ipynb')):\n"
                    "    open(path, 'w').write('vandalised')",
        "b_killer": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "c_student": "print('my work')",
    }
    folder = tmp_path / "class"
    folder.mkdir()
    for name, source in attacks.items():
        nbformat.write(nbformat.v4.new_notebook(cells=[lesson_00, nbformat.v4.new_code_cell(source)]),
                       folder / f"{name}.ipynb")
    before = (folder / "c_student.ipynb").read_bytes()
    status, stdout = grade("--batch", folder, "--csv", tmp_path / "grades.csv", "--seed", SEED, "--timeout", 120)
    with open(tmp_path / "grades.csv", newline="") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    assert status == 1
    assert (folder / "c_student.ipynb").read_bytes() == before
    assert rows["b_killer"]["error"].startswith("the grader's process for this notebook was killed by signal 9")
    for name in ("a_vandal", "c_student"):
        assert rows[name]["error"] == "" and rows[name]["lesson"] == "00_gpu_model"
        assert rows[name]["total"] == "5"
