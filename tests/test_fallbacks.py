"""A stuck student keeps going: an exercise that builds on an unsolved one is
checked with the library's version of it, and the check says so in one line;
an unsolved exercise is one short line, still an exception.

The code under test is the solution notebooks' own: the definitions of a
lesson up to an exercise's checker cell, with the earlier exercises it
builds on turned back into the lesson's stubs (as tools/make_lessons.py
does), run as a module file (kernels and ``per_element`` need source).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from upsamplelib import checkers
from upsamplelib.checkers import exercises

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("make_lessons", ROOT / "tools" / "make_lessons.py")
make_lessons = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_lessons)


def _definitions_only(source: str, defined: set) -> str:
    """The top-level imports, definitions and constants of a cell: what later
    cells use, without the cell's demonstrations. ``defined`` (updated)
    holds the names kept so far; a constant may only use those."""
    import builtins

    kept = []
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            reads = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            if any(isinstance(n, ast.Call) for n in ast.walk(node.value)) or not reads <= defined | set(dir(builtins)):
                continue
            defined.update(t.id for t in node.targets)  # a constant, e.g. THREADS = 32
        else:
            continue
        kept.append(node)
    lines = source.split("\n")
    return "\n".join("\n".join(lines[(n.decorator_list[0].lineno if getattr(n, "decorator_list", None)
                                      else n.lineno) - 1:n.end_lineno]) for n in kept)


def lesson_code(exercise_id: str, stubbed=()) -> str:
    """The solution notebook's definitions up to ``exercise_id``'s checker
    cell, with the exercises ``stubbed`` as in the lesson."""
    exercise = exercises.EXERCISES[exercise_id]
    notebook = json.loads((ROOT / "solutions" / f"{exercise.lesson}.ipynb").read_text(encoding="utf-8"))
    parts, defined = [], set()
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if source.strip() in exercise.calls or exercise.calls[0] in source:
            break
        first_import = make_lessons.FIRST_IMPORT.search(source)
        if first_import and make_lessons.PROLOGUE_FIRST_LINE in source:
            source = source[first_import.start():]  # not the install prologue
        marked = {m["exercise"] for line in source.split("\n") if (m := make_lessons.BEGIN.match(line))}
        if marked & set(stubbed):
            source = make_lessons.strip_solutions(source, exercise_id)
        parts.append(_definitions_only(source, defined))
    return "\n\n".join(parts) + "\n"


def run_lesson_code(source: str, directory: Path, name: str) -> dict:
    path = directory / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    namespace = {"__name__": name, "__file__": str(path)}
    sys.modules[name] = type(sys)(name)  # a module of its own, for numba's cache locator
    sys.modules[name].__dict__.update(namespace)
    namespace = sys.modules[name].__dict__
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


def check(exercise_id: str, namespace: dict):
    """Run the exercise's checker calls in ``namespace``."""
    namespace["checkers"] = checkers
    for call in exercises.EXERCISES[exercise_id].calls:
        eval(call, namespace)


#: (dependent exercise, exercises stubbed, [(exercise, library version) the check must announce]).
SCENARIOS = [
    ("01.3", ["01.1"], [("01.1", "nearest_index")]),
    ("01.4", ["01.1"], [("01.1", "nearest_index")]),
    ("01.4", ["01.1", "01.2"], [("01.1", "nearest_index"), ("01.2", "nearest_exact_index")]),
    ("02.2", ["02.1"], [("02.1", "linear_index")]),
    ("02.3", ["02.1"], [("02.1", "linear_index")]),
    ("02.4", ["02.1"], [("02.1", "linear_index")]),
    # BilinearFunction's forward launches bilinear_kernel, its backward the gather.
    ("02.5", ["02.1"], [("02.1", "linear_index")]),
    ("02.5", ["02.2"], [("02.2", "bilinear_kernel")]),
    ("02.5", ["02.1", "02.2", "02.3", "02.4"], [("02.2", "bilinear_kernel"), ("02.4", "bilinear_gather_kernel")]),
    ("03.8", ["03.4", "03.6", "03.7"],
     [("03.4", "carafe_group_kernel"), ("03.6", "carafe_grad_x_kernel"), ("03.7", "carafe_grad_masks_kernel")]),
    ("03.8", ["03.6"], [("03.6", "carafe_grad_x_kernel")]),
    ("04.6", ["04.5"], [("04.5", "similarity_block_kernel")]),
    ("05.7", ["05.3", "05.4", "05.5", "05.6"],
     [("05.3", "semi_shift_kernel"), ("05.4", "grad_en_kernel"), ("05.5", "grad_de_kernel"),
      ("05.6", "grad_weight_kernel")]),
    ("05.7", ["05.5"], [("05.5", "grad_de_kernel")]),
]


def test_every_dependency_of_the_registry_has_a_scenario_and_a_library_version():
    for exercise in exercises.EXERCISES.values():
        for earlier in exercise.depends_on:
            if earlier.split(".")[0] not in ("00", "01", "02", "03", "04", "05", "06"):
                continue
            assert earlier in checkers.fallbacks.LIBRARY_VERSIONS, earlier
        if exercise.depends_on and exercise.lesson[:2] <= "06":
            assert any(s[0] == exercise.id for s in SCENARIOS), exercise.id
    stubbed_alone = {(e, s[0]) for e, s, _ in SCENARIOS if len(s) == 1}
    # Every dependency that the solutions reach is tried alone once, 02.3 aside
    # (the lesson's BilinearFunction uses the gather), and 05.x's and 03.x's
    # alone in one representative each (every one of them is in the all-stubbed case).
    assert {("01.3", "01.1"), ("02.2", "02.1"), ("02.3", "02.1"), ("02.4", "02.1"), ("02.5", "02.1"),
            ("02.5", "02.2"), ("04.6", "04.5")} <= stubbed_alone


@pytest.mark.parametrize("exercise_id, stubbed, announced", SCENARIOS,
                         ids=[f"{e}-without-{'+'.join(s)}" for e, s, _ in SCENARIOS])
def test_a_dependent_exercise_falls_back_to_the_library(exercise_id, stubbed, announced, tmp_path, capsys):
    name = f"lesson_{exercise_id.replace('.', '_')}_without_{'_'.join(s.replace('.', '_') for s in stubbed)}"
    namespace = run_lesson_code(lesson_code(exercise_id, stubbed), tmp_path, name)
    for earlier in stubbed:  # the earlier exercises are really unsolved
        with pytest.raises(NotImplementedError, match=f"Exercise {earlier}"):
            check(earlier, namespace)
    capsys.readouterr()
    check(exercise_id, namespace)
    lines = capsys.readouterr().out.splitlines()
    note = checkers.fallbacks.fallback_note(exercise_id, announced)
    calls = len(exercises.EXERCISES[exercise_id].calls)
    assert lines[0] == note
    assert len(lines) == 2 * calls and all(line.startswith("PASS ") for line in lines[1::2]), lines
    assert checkers.graded.last_fallbacks == sorted(announced)


def test_the_note_names_the_earlier_exercise_and_the_library_version():
    assert (checkers.fallbacks.fallback_note("01.3", [("01.1", "nearest_index")])
            == "01.1 is not solved yet: checking 01.3 with the library's nearest_index")
    assert (checkers.fallbacks.fallback_note("02.5", [("02.4", "bilinear_gather_kernel"), ("02.2", "bilinear_kernel")])
            == "02.2 and 02.4 are not solved yet: checking 02.5 with the library's bilinear_kernel and "
               "bilinear_gather_kernel")


def test_an_unsolved_exercise_is_unsolved_even_when_what_it_builds_on_is_too(tmp_path):
    namespace = run_lesson_code(lesson_code("01.3", ["01.1", "01.3"]), tmp_path, "lesson_01_3_all_stubs")
    with pytest.raises(checkers.ExerciseUnsolved, match=r"^Exercise 01\.3 is not solved yet: write "
                                                        r"`nearest_plane_kernel` in the cell above"):
        check("01.3", namespace)


def test_solved_code_is_checked_as_it_is(tmp_path, capsys):
    namespace = run_lesson_code(lesson_code("01.3"), tmp_path, "lesson_01_3_solved")
    check("01.3", namespace)
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("PASS nearest_plane_kernel")
    assert checkers.graded.last_fallbacks == []


def _run_in_jupyter(cells):
    """Execute code cells in a real Jupyter kernel (nbclient); the notebook
    with its outputs."""
    import nbclient
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True).execute()
    return notebook


def _errors(cell):
    return [output for output in cell.outputs if output.output_type == "error"]


def _displayed_lines(error):
    return "\n".join(error.traceback).splitlines()


def test_in_jupyter_an_unsolved_exercise_is_one_line_and_a_wrong_one_its_message():
    notebook = _run_in_jupyter([
        "import os\nos.environ['UPSAMPLELIB_QUIET'] = '1'\nimport upsamplelib\n"
        "import numpy as np\nfrom numba import cuda\nfrom upsamplelib import checkers\nfrom upsamplelib.backend import per_element",
        # exactly what tools/make_lessons.py makes of exercises 00.1, 00.2 and 01.1
        '@cuda.jit\ndef scale_kernel(x, out, factor):\n    raise NotImplementedError("Exercise 00.1: write this part")',
        "checkers.check_scale_kernel(scale_kernel)",
        'def launch_config(n, threads_per_block):\n    raise NotImplementedError("Exercise 00.2: write this part")',
        "checkers.check_launch_config(launch_config)",
        "checkers.check_launch_config(lambda n, threads: (n // threads, threads))",
        '@per_element\ndef nearest_index(dst, in_size, out_size):\n'
        '    raise NotImplementedError("Exercise 01.1: write this part")',
        "@cuda.jit\ndef nearest_plane_kernel(x, out):\n    col, row = cuda.grid(2)\n"
        "    if row < out.shape[0] and col < out.shape[1]:\n"
        "        out[row, col] = x[nearest_index(row, x.shape[0], out.shape[0]), "
        "nearest_index(col, x.shape[1], out.shape[1])]",
        "checkers.check_nearest_plane_kernel(nearest_plane_kernel)",
    ])
    setup, _, unsolved_kernel, _, unsolved_function, wrong, _, _, fallback = notebook.cells
    assert _errors(setup) == []
    for cell, exercise, name in ((unsolved_kernel, "00.1", "scale_kernel"), (unsolved_function, "00.2", "launch_config")):
        (error,) = _errors(cell)
        lines = _displayed_lines(error)
        assert error.ename == "ExerciseUnsolved" and len(lines) <= 3, lines
        assert f"Exercise {exercise} is not solved yet" in lines[0] and f"`{name}`" in lines[0], lines
    (error,) = _errors(wrong)
    lines = _displayed_lines(error)
    assert error.ename == "CheckFailed" and "round up" in error.evalue
    assert len(lines) == len(error.evalue.splitlines()) and not any("File " in line for line in lines), lines
    assert _errors(fallback) == []
    printed = "".join(output.text for output in fallback.outputs if output.output_type == "stream").splitlines()
    assert printed[0] == "01.1 is not solved yet: checking 01.3 with the library's nearest_index"
    assert printed[1].startswith("PASS nearest_plane_kernel")


def test_a_picture_runs_the_students_code_or_the_librarys(tmp_path):
    stubbed = run_lesson_code(lesson_code("01.3", ["01.3"]), tmp_path, "picture_01_3_stub")
    assert checkers.runnable("01.3", stubbed["nearest_plane_kernel"]) is None
    solved = run_lesson_code(lesson_code("01.3"), tmp_path, "picture_01_3_solved")
    assert checkers.runnable("01.3", solved["nearest_plane_kernel"]) is solved["nearest_plane_kernel"]
    leaning = run_lesson_code(lesson_code("01.3", ["01.1"]), tmp_path, "picture_01_3_without_01_1")
    kernel = checkers.runnable("01.3", leaning["nearest_plane_kernel"])
    import numpy as np

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = np.full((6, 8), np.nan, np.float32)
    kernel[(1, 1), (8, 8)](x, out)
    assert np.array_equal(out, x.repeat(2, 0).repeat(2, 1))
