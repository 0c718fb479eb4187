"""Grading one notebook: run it, then check every exercise of its lesson on
fresh inputs, and say for each one what happened."""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from ..checkers.exercises import EXERCISES, by_checker, for_lesson, requires
from .execute import CellOutcome, CellRunner, GradingAborted
from .in_kernel import check_source, read_result

#: Seconds a cell (of the notebook, or a check) may run. The live training
#: of lesson 06 takes about five minutes on a 2-core machine, and ran past
#: ten when other work shared the machine.
DEFAULT_TIMEOUT = 900

STATUSES = ("passed", "failed", "unsolved", "error", "timeout")


@dataclass
class ExerciseResult:
    exercise: str
    title: str
    status: str
    message: str = ""
    passed: bool = False
    builds_on: list[str] = field(default_factory=list)  # earlier exercises it uses that did not pass
    fresh_inputs: bool = False  # whether its checker drew inputs the notebook did not see
    # [exercise, name] of the library's versions its check used in place of unsolved earlier exercises
    library_versions: list[list[str]] = field(default_factory=list)
    seconds: float = 0.0
    details: str = ""  # the full checker message, or a traceback

    def __post_init__(self):
        self.passed = self.status == "passed"


@dataclass
class CellProblem:
    cell: int  # counted from 1, markdown cells included, as a notebook shows them
    status: str  # "error", "timeout" or "crashed"
    message: str


@dataclass
class NotebookReport:
    notebook: str
    lesson: str | None
    seed: int
    exercises: list[ExerciseResult]
    cells: list[CellProblem] = field(default_factory=list)
    restarts: int = 0
    seconds: float = 0.0
    error: str = ""  # why the notebook could not be graded at all

    @property
    def all_passed(self) -> bool:
        return not self.error and bool(self.exercises) and all(e.passed for e in self.exercises)

    def as_json(self) -> dict:
        data = asdict(self)
        data["passed"] = sum(e.passed for e in self.exercises)
        data["total"] = len(self.exercises)
        return data

    @classmethod
    def from_json(cls, data: dict) -> NotebookReport:
        """The report ``as_json`` wrote."""
        data = {key: value for key, value in data.items() if key not in ("passed", "total")}
        data["exercises"] = [ExerciseResult(**exercise) for exercise in data["exercises"]]
        data["cells"] = [CellProblem(**cell) for cell in data["cells"]]
        return cls(**data)


# -- which lesson ---------------------------------------------------------

_EXERCISE_MENTION = re.compile(r"Exercise (\d\d\.\d+)")
_CHECKER_CALL = re.compile(r"\b(check_\w+)\s*\(")


def identify_lesson(notebook: nbformat.NotebookNode, path: Path) -> str | None:
    """The lesson (``"01_nearest"``) a notebook is a copy of, judged by the
    exercises it mentions, the checkers it calls and the exercises' names
    it defines; its file name only breaks ties, since students rename
    their copies."""
    votes: Counter[str] = Counter()
    lessons_defining: dict[str, list[str]] = {}
    for exercise in EXERCISES.values():
        for name in exercise.defines:
            lessons_defining.setdefault(name, []).append(exercise.lesson)
    for cell in notebook.cells:
        for exercise_id in _EXERCISE_MENTION.findall(cell.source):
            if exercise_id in EXERCISES:
                votes[EXERCISES[exercise_id].lesson] += 1
        if cell.cell_type == "code":
            for name in _CHECKER_CALL.findall(cell.source):
                exercise = by_checker(name)
                if exercise is not None:
                    votes[exercise.lesson] += 1
            for name in _defined_names(cell.source):
                votes.update(lessons_defining.get(name, ()))
    lessons = {exercise.lesson for exercise in EXERCISES.values()}
    if path.stem in lessons:
        votes[path.stem] += 0.5
    if not votes:
        return None
    return votes.most_common(1)[0][0]


# -- where the student's names are defined -----------------------------------

_DEFINITION = re.compile(r"^\s*(?:def|class)\s+(\w+)|^(\w+)\s*=", re.M)


def _defined_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell that does not parse, or uses IPython magics: what it seems to define
        return {function or variable for function, variable in _DEFINITION.findall(source)}
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _why_undefined(name: str, notebook, outcomes: dict[int, CellOutcome]) -> tuple[str, str]:
    """(status, message) for an exercise whose ``name`` the notebook never
    defined, from the outcome of the cell meant to define it."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or name not in _defined_names(cell.source):
            continue
        outcome = outcomes.get(index)
        where = f"cell {index + 1}, which defines `{name}`,"
        if outcome is None:
            continue
        if outcome.status == "timeout":
            return "timeout", f"{where} {outcome.error} (it was interrupted)"
        if outcome.status == "crashed":
            return "error", f"{where} crashed the kernel: {outcome.error}"
        if outcome.status == "error":
            return "error", f"{where} raised {outcome.error}"
    return "error", f"`{name}` is not defined: no cell of the notebook defines it"


# -- grading --------------------------------------------------------------

def grade_notebook(path, *, timeout: float = DEFAULT_TIMEOUT, seed: int | None = None,
                   lesson: str | None = None) -> NotebookReport:
    """Run the notebook at ``path`` with ``timeout`` seconds per cell, then
    check each exercise of its lesson on inputs salted with ``seed`` (random
    when None). The kernel's working directory is an empty temporary folder,
    deleted afterwards: a relative path in the student's code reaches
    neither the notebook's folder nor the other students' files."""
    path = Path(path)
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    started = time.monotonic()
    report = NotebookReport(notebook=str(path), lesson=lesson, seed=seed, exercises=[])
    try:
        with warnings.catch_warnings():  # e.g. cells without ids: the student's file, not the grader, is old
            warnings.simplefilter("ignore")
            notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # noqa: BLE001  (a damaged file is a grade, not a crash of the grader)
        report.error = f"could not read the notebook: {type(error).__name__}: {error}"
        return report
    if report.lesson is None:
        report.lesson = identify_lesson(notebook, path)
    if report.lesson is None or not for_lesson(report.lesson):
        report.error = ("could not tell which lesson this notebook is a copy of: it mentions no "
                        "registered exercise (name the lesson with --lesson)")
        return report
    exercises = for_lesson(report.lesson)
    report.lesson = exercises[0].lesson

    results: dict[str, ExerciseResult] = {}
    with tempfile.TemporaryDirectory(prefix="upsamplelib-grade-") as workdir:
        runner = CellRunner(notebook, workdir, timeout)
        try:
            outcomes = runner.run_notebook()
            for exercise in exercises:
                results[exercise.id] = _grade_exercise(runner, notebook, outcomes, exercise, seed)
        except Exception as error:  # noqa: BLE001  (one notebook that breaks the grader must not stop a batch)
            report.error = str(error) if isinstance(error, GradingAborted) else f"{type(error).__name__}: {error}"
            for exercise in exercises:
                results.setdefault(exercise.id, ExerciseResult(exercise.id, exercise.title, "error", report.error))
            outcomes = runner.outcomes
        finally:
            runner.stop()

    _note_dependencies(results)
    report.exercises = [results[exercise.id] for exercise in exercises]
    report.cells = [CellProblem(index + 1, outcome.status, outcome.error)
                    for index, outcome in sorted(outcomes.items()) if outcome.status != "ok"]
    report.restarts = runner.restarts
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _grade_exercise(runner: CellRunner, notebook, outcomes, exercise, seed: int) -> ExerciseResult:
    outcome = runner.run_source(check_source(exercise.id, seed))
    result = read_result(outcome.stdout)
    if outcome.status == "timeout":
        return ExerciseResult(exercise.id, exercise.title, "timeout",
                              f"the check {outcome.error}", seconds=round(outcome.seconds, 3))
    if outcome.status == "crashed":
        return ExerciseResult(exercise.id, exercise.title, "error",
                              f"the check crashed the kernel: {outcome.error}", seconds=round(outcome.seconds, 3))
    if result is None:
        return ExerciseResult(exercise.id, exercise.title, "error",
                              f"the grader could not run the check: {outcome.error or 'it printed no result'}")
    status, message = result["status"], result["message"]
    if result["undefined"]:
        status, message = _why_undefined(result["undefined"][0], notebook, outcomes)
    return ExerciseResult(exercise.id, exercise.title, status, message, builds_on=[],
                          fresh_inputs=result["fresh_inputs"],
                          library_versions=[list(used) for used in result.get("library_versions", [])],
                          seconds=result["seconds"],
                          details=result["details"] or (result["message"] if result["status"] != "passed" else ""))


_WHAT_HAPPENED = {"failed": "failed", "unsolved": "is unsolved", "error": "raised an error",
                  "timeout": "timed out"}


def _note_dependencies(results: dict[str, ExerciseResult]) -> None:
    """Say, on an exercise whose code failed, which earlier exercises it
    builds on did not pass either: its own code may be right."""
    for exercise_id, result in results.items():
        if result.status in ("passed", "unsolved"):  # an unsolved one has no code of its own to excuse
            continue
        earlier = [e for e in requires(exercise_id) if e in results and not results[e].passed]
        if earlier:
            result.builds_on = earlier
            named = "; ".join(f"{e}, which {_WHAT_HAPPENED[results[e].status]}" for e in earlier)
            result.message = f"builds on {named}. {result.message}"


def notebooks_in(folder) -> list[Path]:
    """The notebooks under ``folder``, Jupyter's checkpoints left out, in
    the order of their paths."""
    return sorted(p for p in Path(folder).rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def grade_in_own_process(path, *, timeout: float = DEFAULT_TIMEOUT, seed: int | None = None,
                         lesson: str | None = None) -> NotebookReport:
    """``grade_notebook`` in a grader process of its own, so that a
    notebook whose code kills its grader (the kernel's parent) costs its own
    report only."""
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    with tempfile.TemporaryDirectory(prefix="upsamplelib-grade-report-") as folder:
        out = Path(folder) / "report.json"
        command = [sys.executable, "-m", "upsamplelib.grade", "--json", str(out), "--timeout", repr(float(timeout)),
                   "--seed", str(seed), *(["--lesson", lesson] if lesson else []),
                   "--", str(path)]  # a name that starts with "-" is still the notebook
        started = time.monotonic()
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, check=False)
        try:
            return NotebookReport.from_json(json.loads(out.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):
            status = finished.returncode
            how = f"exited with status {status}"
            if status < 0:
                name = signal.Signals(-status).name if -status in signal.valid_signals() else "?"
                how = f"was killed by signal {-status} ({name})"
            return NotebookReport(
                notebook=str(path), lesson=lesson, seed=seed, exercises=[],
                seconds=round(time.monotonic() - started, 1),
                error=f"the grader's process for this notebook {how} before it wrote a report (a cell of the "
                      "notebook may have ended it)")


def grade_folder(folder, **options):
    """Grade every notebook under ``folder``, each in a grader process of
    its own; yields each report as it is done."""
    for path in notebooks_in(folder):
        yield grade_in_own_process(path, **options)


def student_name(report: NotebookReport, folder) -> str:
    """The notebook's path inside the batch folder, without ``.ipynb``."""
    return os.path.splitext(os.path.relpath(report.notebook, folder))[0]
