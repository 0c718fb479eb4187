"""What a checker call from a lesson does around the checker itself.

``graded(check_x)`` wraps a checker of ``exercises.EXERCISES``:

* when the student's object is still the lesson's stub, it raises
  ``ExerciseUnsolved`` at once: one line, which exercise and what to do;
* when an earlier exercise it builds on is the stub, it checks a copy of the
  student's code that calls the library's version instead, and prints one
  line saying so (``fallbacks``);
* a NotImplementedError of a stub raised while checking (one the source did
  not show) becomes ``ExerciseUnsolved`` too.

The package ``upsamplelib.checkers`` exports its ``check_*`` functions
wrapped; the modules of each lesson keep the plain ones.
"""

from __future__ import annotations

import functools

from .engine import ExerciseUnsolved
from .exercises import EXERCISES, by_checker
from .fallbacks import _STUB, fallback_note, stub_of, with_library_versions

#: (exercise id, name) of the library versions the last checker call used:
#: the grader reports a pass that needed them.
last_fallbacks: list[tuple[str, str]] = []


def _unsolved(exercise_id: str, used_by: str | None) -> ExerciseUnsolved:
    names = EXERCISES[exercise_id].defines if exercise_id in EXERCISES else ()
    return ExerciseUnsolved(exercise_id, names, used_by=used_by)


def graded(checker):
    """``checker`` with the stub, fallback and short-message handling above."""
    exercise = by_checker(checker.__name__)
    exercise_id = exercise.id if exercise is not None else None

    @functools.wraps(checker)
    def check(*args, **kwargs):
        last_fallbacks.clear()
        if exercise_id is not None and args:
            own = stub_of(args[0])
            if own is not None:
                raise _unsolved(own, exercise_id)
            patched, used = with_library_versions(exercise_id, args[0])
            if used:
                print(fallback_note(exercise_id, used))
                last_fallbacks.extend(used)
                args = (patched, *args[1:])
        try:
            return checker(*args, **kwargs)
        except ExerciseUnsolved:
            raise
        except NotImplementedError as error:
            found = _STUB.search(str(error))
            if found is None:  # not a lesson's stub: the student's own error
                raise
            raise _unsolved(found.group(1), exercise_id) from None

    check.exercise = exercise_id
    return check


def wrap_checkers(namespace: dict) -> None:
    """Replace every ``check_*`` function of ``namespace`` by ``graded(...)``."""
    for name, value in list(namespace.items()):
        if name.startswith("check_") and callable(value) and not hasattr(value, "exercise"):
            namespace[name] = graded(value)


def runnable(exercise_id: str, obj):
    """``obj`` ready to run outside its checker (a lesson's picture): None
    while it is the lesson's stub; when it builds on an unsolved earlier
    exercise, a copy that calls the library's version of that one."""
    if stub_of(obj) is not None:
        return None
    patched, _ = with_library_versions(exercise_id, obj)
    return patched
