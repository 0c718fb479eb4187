"""The autograder: ``python -m upsamplelib.grade NOTEBOOK`` (see ``__main__``).

It runs a student's copy of a lesson cell by cell in a Jupyter kernel
(``execute``: a cell that hangs is interrupted, one that kills the kernel is
skipped after a restart), then runs the checker of every exercise of the
lesson in that kernel, on random inputs the notebook never saw
(``fresh_inputs``, ``in_kernel``), and reports each exercise as passed,
failed, unsolved, error or timeout (``grader``) in a table, JSON or CSV
(``report``). The exercises come from ``upsamplelib.checkers.exercises``.
"""

from .grader import DEFAULT_TIMEOUT, STATUSES, ExerciseResult, NotebookReport, grade_folder, grade_notebook

__all__ = ["grade_notebook", "grade_folder", "NotebookReport", "ExerciseResult", "STATUSES", "DEFAULT_TIMEOUT"]
