"""The part of the grader that runs inside the student's kernel, after the
notebook: one exercise's checker calls, on fresh inputs, with the student's
objects from the notebook's namespace. The outcome is printed as one JSON
line after ``RESULT_MARKER``; the grader reads it from the cell's output.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import traceback

from .. import checkers
from ..checkers.engine import CheckFailed, KernelTimeout
from ..checkers.exercises import EXERCISES
from .fresh_inputs import fresh_inputs

RESULT_MARKER = "upsamplelib.grade result: "

#: Characters of a traceback or of the checker's output kept in a result.
_KEPT = 4000


def classify(error: BaseException | None) -> str:
    """The status an exercise gets when its check ends with ``error``."""
    if error is None:
        return "passed"
    if isinstance(error, KernelTimeout):
        return "timeout"
    if isinstance(error, CheckFailed):
        return "failed"
    if isinstance(error, NotImplementedError):  # the stub of an unsolved exercise, or its short form
        return "unsolved"
    return "error"


def _message(error: BaseException) -> str:
    if isinstance(error, NotImplementedError):
        # The checkers' ExerciseUnsolved has a short head ("Exercise 01.3 is
        # not solved yet"); the rest tells a student in the notebook what to do.
        return getattr(error, "head", None) or str(error)
    if isinstance(error, CheckFailed):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _library_versions_used() -> list:
    """(exercise id, name) of the library versions the last checker call
    used in place of unsolved earlier exercises (none with checkers that
    do not fall back)."""
    try:
        from ..checkers.graded import last_fallbacks
    except ImportError:
        return []
    return list(last_fallbacks)


def check_exercise(exercise_id: str, salt: int, namespace: dict | None = None) -> dict:
    """Run the checker calls of ``exercise_id`` in ``namespace`` (the
    notebook's, by default) with every random seed salted by ``salt``,
    print the outcome after ``RESULT_MARKER`` and return it."""
    exercise = EXERCISES[exercise_id]
    if namespace is None:
        from IPython import get_ipython

        namespace = get_ipython().user_ns
    result = {"exercise": exercise_id, "status": "", "message": "", "details": "", "output": "",
              "undefined": [], "fresh_inputs": False, "library_versions": [], "seconds": 0.0}
    missing = [name for name in exercise.defines if name not in namespace]
    if missing:
        result.update(status="error", undefined=missing, message=f"`{missing[0]}` is not defined")
    else:
        # The calls name the library's checkers as ``checkers``: bind that
        # name over whatever the student's notebook calls ``checkers``.
        scope = dict(namespace, checkers=checkers)
        output = io.StringIO()
        error = None
        fallbacks: set[tuple[str, str]] = set()
        start = time.monotonic()
        with fresh_inputs(salt) as seeds, contextlib.redirect_stdout(output):
            try:
                for call in exercise.calls:
                    eval(compile(call, f"<check of exercise {exercise_id}>", "eval"), scope)
                    fallbacks.update(tuple(used) for used in _library_versions_used())
            except (Exception, SystemExit) as raised:  # noqa: BLE001  (the student's code may raise anything)
                error = raised
        result["seconds"] = round(time.monotonic() - start, 3)
        result["status"] = classify(error)
        result["fresh_inputs"] = seeds.salted > 0
        result["output"] = output.getvalue()[-_KEPT:]
        result["library_versions"] = sorted(fallbacks)
        if error is not None:
            result["message"] = _message(error)
            if result["status"] == "error":  # an unexpected exception: where it came from helps
                result["details"] = "".join(traceback.format_exception(error))[-_KEPT:]
        elif fallbacks:
            result["message"] = ("checked with the library's " + " and ".join(name for _, name in sorted(fallbacks))
                                 + " in place of the unsolved " + ", ".join(sorted({e for e, _ in fallbacks})))
    print(RESULT_MARKER + json.dumps(result))
    return result


def read_result(stdout: str) -> dict | None:
    """The result ``check_exercise`` printed into ``stdout``, if any."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return None


def check_source(exercise_id: str, salt: int) -> str:
    """The code of the cell the grader runs in the kernel for one exercise."""
    return (f"from upsamplelib.grade.in_kernel import check_exercise as _upsamplelib_grade_check\n"
            f"_upsamplelib_grade_check({exercise_id!r}, {int(salt)})\n"
            f"del _upsamplelib_grade_check")
