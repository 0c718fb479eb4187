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

import contextlib
import functools
import io

from .engine import CheckFailed, ExerciseUnsolved
from .exercises import EXERCISES, by_checker
from .fallbacks import (_STUB, counting_launches, fallback_note, prepared_for_check, stub_of,
                        with_library_versions)

#: (exercise id, name) of the library versions the last checker call used:
#: the grader reports a pass that needed them.
last_fallbacks: list[tuple[str, str]] = []

#: The exercises whose host code is to run the student's kernels: for each,
#: the kernels it must launch, each as a tuple of the names any one of which
#: will do. Right values computed some other way (the library's op, plain
#: PyTorch) do not pass them.
MUST_LAUNCH: dict[str, tuple[tuple[str, ...], ...]] = {
    "02.5": (("bilinear_kernel",), ("bilinear_gather_kernel", "bilinear_scatter_kernel")),
    "03.8": (("carafe_group_kernel", "carafe_tiled_kernel"), ("carafe_grad_x_kernel",),
             ("carafe_grad_masks_kernel",)),
    "04.6": (("similarity_block_kernel",),),
    "05.7": (("semi_shift_kernel",), ("grad_en_kernel",), ("grad_de_kernel",), ("grad_weight_kernel",)),
}

#: Kernels of earlier exercises that give the same values by another road: counted too, so that the
#: message can say the values did come from the student's kernels, just not the ones the exercise asks for.
OTHER_ROADS: dict[str, tuple[str, ...]] = {
    "04.6": ("similarity_kernel", "softmax_kernel"),
}


def _require_launches(exercise_id: str, counters: dict) -> None:
    """CheckFailed unless every kernel ``MUST_LAUNCH`` names for the
    exercise (or an alternative to it) was launched during its check."""
    for names in MUST_LAUNCH.get(exercise_id, ()):
        if not any(counters[name].launches for name in names if name in counters):
            which = " or ".join(f"`{name}`" for name in names)
            what = EXERCISES[exercise_id].defines[0]
            other = [name for name in OTHER_ROADS.get(exercise_id, ()) if name in counters and counters[name].launches]
            if other:
                raise CheckFailed(
                    f"{what}: the values are right, computed with {' and '.join(f'`{n}`' for n in other)}, "
                    f"but exercise {exercise_id} is to run {which}, which does that work in one launch.\nHint: "
                    f"launch {names[0]}[blocks, threads](...) as the exercise says")
            raise CheckFailed(
                f"{what}: the values are right, but {which} was never launched during the check: exercise "
                f"{exercise_id} is to run your kernels, and the values came from somewhere else (the library's "
                f"op, or PyTorch).\nHint: launch {names[0]}[blocks, threads](...) on .numpy() views of the "
                "tensors, as the exercise says (an unsolved earlier kernel is replaced by the library's version "
                "for the check, and that is said)")


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
        counters = {}
        checked = args[0] if args else None
        if exercise_id is not None and args:
            own = stub_of(args[0])
            if own is not None:
                raise _unsolved(own, exercise_id)
            counted = {name for names in MUST_LAUNCH.get(exercise_id, ()) for name in names}
            counted |= set(OTHER_ROADS.get(exercise_id, ()))
            patched, used, counters = prepared_for_check(exercise_id, args[0], counted)
            if used:
                print(fallback_note(exercise_id, used))
                last_fallbacks.extend(used)
            args = (patched, *args[1:])
        try:
            if exercise_id not in MUST_LAUNCH:
                return checker(*args, **kwargs)
            # Its PASS line waits for the launches to be counted.
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed), counting_launches(checked, counters):
                    result = checker(*args, **kwargs)
                _require_launches(exercise_id, counters)
            except BaseException:
                print("".join(line for line in printed.getvalue().splitlines(keepends=True)
                              if not line.startswith("PASS")), end="")
                raise
            print(printed.getvalue(), end="")
            return result
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
