"""Checkers for the lesson exercises.

Each ``check_*`` function runs a student's code on random inputs (odd
sizes, sizes that do not divide the block size, several scales), compares
with the library's reference, and either prints one ``PASS`` line or raises
``CheckFailed`` naming the first mismatching index, the expected and the
actual value, and a hint. Student kernels run under a timeout, so a kernel
that never finishes is reported instead of waited on forever.

The checkers of each lesson live in a module named after it
(``gpu_model``, ``nearest``, ``bilinear``, ``carafe``, ...); all are importable from here.
"""

from .engine import (  # noqa: F401
    CheckFailed,
    ExerciseUnsolved,
    KernelTimeout,
    compare,
    launch_student_kernel,
    passed,
    random_sizes,
    run_with_timeout,
)
from .gpu_model import *  # noqa: F401,F403
from .nearest import *  # noqa: F401,F403
from .bilinear import *  # noqa: F401,F403
from .carafe import *  # noqa: F401,F403
from .sapa import *  # noqa: F401,F403
from .fade import *  # noqa: F401,F403
from .capstone import *  # noqa: F401,F403
from .performance import *  # noqa: F401,F403

# Keep last: the checkers a lesson calls, with the one-line message for an
# unsolved exercise and the library's versions of unsolved earlier ones.
from .graded import runnable  # noqa: E402,F401
from .graded import wrap_checkers as _wrap_checkers  # noqa: E402

_wrap_checkers(globals())
