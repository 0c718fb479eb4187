"""The student notebooks are generated from the solutions, never edited by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import make_lessons  # noqa: E402


def test_lessons_are_up_to_date():
    result = subprocess.run([sys.executable, "tools/make_lessons.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_solution_has_a_lesson_and_at_least_four_exercises():
    solutions = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    assert solutions
    for path in solutions:
        assert (ROOT / "lessons" / path.name).exists()
        cells = json.loads(path.read_text())["cells"]
        source = "".join("".join(c["source"]) + "\n" for c in cells)
        exercises = {m.group("exercise") for m in map(make_lessons.BEGIN.match, source.split("\n")) if m}
        assert len(exercises) >= 4, f"{path.name}: {sorted(exercises)}"


def test_solution_notebooks_are_nbval_ready():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"
        assert "widgets" not in notebook["metadata"], f"{path.name}: stored widget state (random ids)"
        for index, cell in enumerate(notebook["cells"]):
            if cell["cell_type"] != "code":
                continue
            assert cell["execution_count"] is not None, f"{path.name} cell {index} was not executed"
            for output in cell["outputs"]:
                assert output.get("name") != "stderr", f"{path.name} cell {index} writes to stderr"
                assert output["output_type"] != "error", f"{path.name} cell {index} raised"


def test_stub_replaces_the_solution_at_its_indentation():
    source = "def f(x):\n    # BEGIN SOLUTION 07.3\n    return x + 1\n    # END SOLUTION\n\nprint(f)"
    assert make_lessons.strip_solutions(source, "test") == (
        'def f(x):\n    raise NotImplementedError("Exercise 07.3: write this part")\n\nprint(f)'
    )


@pytest.mark.parametrize("source", ["# BEGIN SOLUTION 01.1\nx = 1",
                                    "x = 1\n# END SOLUTION",
                                    "# BEGIN SOLUTION 01.1\n# BEGIN SOLUTION 01.2\n# END SOLUTION"])
def test_unbalanced_markers_are_errors(source):
    with pytest.raises(make_lessons.MarkerError):
        make_lessons.strip_solutions(source, "test")


def test_lesson_cells_are_cleared_and_checks_may_raise():
    solution = {"cells": [
        {"cell_type": "code", "metadata": {"tags": ["uses-exercise"]}, "source": "check(f)",
         "outputs": [{"output_type": "stream", "name": "stdout", "text": "PASS"}], "execution_count": 3},
        {"cell_type": "code", "metadata": {"tags": ["solution-only"]}, "source": "secret()",
         "outputs": [], "execution_count": 4},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 4}
    lesson = make_lessons.make_lesson(solution, "test")
    assert len(lesson["cells"]) == 1
    cell = lesson["cells"][0]
    assert cell["outputs"] == [] and cell["execution_count"] is None
    assert cell["metadata"]["tags"] == ["raises-exception"]


def test_lesson_07_times_only_the_function_that_passed_its_check():
    """Redefining carafe_rows_cpu after a pass leaves it out of the timing
    table until its check runs again (the table once timed any redefinition)."""
    import contextlib
    import io

    cells = ["".join(c["source"]) for c in json.loads((ROOT / "solutions" / "07_performance.ipynb").read_text())["cells"]
             if c["cell_type"] == "code"]

    def cell(text):
        (found,) = [source for source in cells if text in source]
        return found

    namespace = {}

    def run(text):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(cell(text), namespace)
        return printed.getvalue()

    run("import upsamplelib as ul")
    run("def carafe_cpu_slow(")
    define, check, table = "def carafe_rows_cpu(", "check_carafe_rows_cpu(", "checked = passed and"
    run(define)
    assert "PASS" in run(check)
    assert "the checker measured" in run(table) and "rows (07.5), 1 core" in namespace["times"]
    run(define)
    printed = run(table)
    assert "defined again after the checker passed" in printed
    assert not any(name.startswith("rows (07.5)") for name in namespace["times"])
    run(check)
    assert "the checker measured" in run(table) and "rows (07.5), 1 core" in namespace["times"]
