"""What a kernel checker enforces beyond the values it compares.

The simulator gives the right values for kernels that a GPU would reject or
run badly, so the kernel checkers also ask, through ``KernelCheck``:

* does the kernel compile for a GPU? (``ptx``: compiled to PTX in a second
  process while the simulator runs the cases);
* in one counted case (``upsamplelib.traffic``): is every output element
  written exactly once (one thread per output, no grid-stride loop that
  visits elements twice), or, in a scatter, is every write atomic?
* how many global loads per output did it take? The PASS line says, and
  the "fast" exercises must reach the reduction their lesson computes.
"""

from __future__ import annotations

import inspect

import numpy as np

from .. import traffic
from ..backend import SIMULATOR, launch_config
from . import ptx
from .engine import CheckFailed, launch_checked, unsolved_exercise

__all__ = ["KernelCheck"]


class _CountedLaunch:
    """Looks like a kernel to ``launch_checked`` (same errors, same timeout),
    and runs it with its memory traffic counted."""

    def __init__(self, kernel, sink):
        self.kernel, self.sink = kernel, sink
        self.py_func = getattr(kernel, "py_func", kernel)

    def __getitem__(self, configuration):
        griddim, blockdim = configuration[:2]

        def run(*arrays):
            self.sink.append(traffic.run_counted(self.kernel, griddim, blockdim, arrays))

        return run


class KernelCheck:
    """The rules of one kernel exercise.

    ``writes``: "once" (one thread per output element: each written exactly
    once), "atomic" (a scatter: every write to the output is an atomic), or
    None (no rule). ``output``: the position of the output among the
    kernel's arguments.
    """

    def __init__(self, kernel, what: str, *, output: int, writes: str | None = "once",
                 float_index_note: str = ""):
        self.kernel, self.what = kernel, what
        try:
            names = parameter_names(kernel)
        except (TypeError, ValueError):
            names = []
        self.output = names[output] if output < len(names) else f"argument {output}"
        self.writes, self.float_index_note = writes, float_index_note
        self.compiled = None
        self.report = None
        self.counted_case = None
        self.outputs = None
        self.launches = 0

    def grid_for(self, n_threads: int) -> tuple[int, int]:
        """(blocks, threads per block) of the next one-thread-per-element launch: blocks of 64, then 96, in
        turns, so that a kernel that writes a block size of its own in (``blockIdx.x * 64 + ...``) is wrong in
        some case."""
        return launch_config(n_threads, 96 if self.launches % 2 else 64)

    def launch(self, launch, *arrays, bounds_hint: str, count: bool = False, case: str = "", index_hint: str = "",
               sized_for: int | None = None):
        """``launch_checked``, and on the first call the PTX compile (in the
        background); with ``count`` the launch's traffic is counted."""
        self.launches += 1
        if self.compiled is None:
            # On a GPU the launch itself compiles the kernel; an unsolved stub is reported by the launch.
            solved = unsolved_exercise(self.kernel) is None
            self.compiled = (SIMULATOR and solved and ptx.submit(self.kernel, arrays)) or False
        if not count:
            launch_checked(self.kernel, launch, *arrays, what=self.what, bounds_hint=bounds_hint,
                           float_index_note=self.float_index_note, index_hint=index_hint, sized_for=sized_for)
            return None
        reports = []
        launch_checked(_CountedLaunch(self.kernel, reports), launch, *arrays, what=self.what,
                       bounds_hint=bounds_hint, float_index_note=self.float_index_note, index_hint=index_hint,
                       sized_for=sized_for)
        self.report, self.counted_case = reports[0], case
        self.outputs = int(np.size(self.report.array(self.output).writes))
        return self.report

    def _require_writes(self):
        report = self.report
        if report is None or self.writes is None:
            return
        written = report.array(self.output)
        if self.writes == "atomic":
            plain = int(written.plain_writes.sum())
            if plain:
                index = tuple(int(i) for i in np.argwhere(written.plain_writes)[0])
                raise CheckFailed(
                    f"{self.what}: {plain} of the {plain + written.atomics} writes to {self.output} are plain "
                    f"stores, not atomics (the first at index {index}), for {self.counted_case}. Several threads "
                    f"add into the same element of {self.output}, and a plain `{self.output}[...] += v` loses "
                    "updates on a GPU even where the simulator gets the sum right.\nHint: make every write "
                    f"to {self.output} a cuda.atomic.add (all of them, not only some)")
            return
        counts = written.writes
        twice = np.argwhere(counts > 1)
        if len(twice) and written.shared_writes is not None and not written.shared_writes[counts > 1].any():
            index = tuple(int(i) for i in twice[0])
            raise CheckFailed(
                f"{self.what}: {len(twice)} of the {counts.size} elements of {self.output} were written more than "
                f"once, each only by its own thread (index {index}: {int(counts[index])} times), for "
                f"{self.counted_case}: the kernel sums into {self.output} in global memory. The values are right, "
                "but every `+=` there is a global load and a store, where a register costs nothing.\nHint: sum "
                f"into a local variable (total = 0.0; total += ... in the loop) and write it to {self.output} once, "
                "at the end")
        if len(twice):
            index = tuple(int(i) for i in twice[0])
            raise CheckFailed(
                f"{self.what}: {len(twice)} of the {counts.size} elements of {self.output} were written more than "
                f"once (index {index}: {int(counts[index])} times) for {self.counted_case}. The values are right, "
                "but the kernel does the work several times.\nHint: one thread per output element, each writing "
                "only its own, i = cuda.grid(1) (blockIdx.x * blockDim.x + threadIdx.x: no block size of your "
                "own, this case's blocks may differ); a grid-stride loop starts at cuda.grid(1) and steps by "
                "cuda.gridsize(1), the number of threads in the whole grid (not cuda.blockDim.x)")
        never = np.argwhere(counts == 0)
        if len(never):
            index = tuple(int(i) for i in never[0])
            raise CheckFailed(
                f"{self.what}: {len(never)} of the {counts.size} elements of {self.output} were never written "
                f"(the first at index {index}) for {self.counted_case}; they only hold the right value because "
                "the checker's array already did.\nHint: every element of the output is written by its thread, "
                "also when its value is 0")

    def loads_per_output(self) -> float | None:
        if self.report is None:
            return None
        return self.report.loads_per_output(self.outputs)

    def passed(self, cases: int) -> None:
        """The rules that hold once the values are right; then one PASS line."""
        if self.compiled:
            ptx.require_compiles(self.kernel, (), self.what, self.float_index_note, future=self.compiled)
        self._require_writes()
        line = f"PASS {self.what} ({cases} case{'s' if cases != 1 else ''}"
        loads = self.loads_per_output()
        if loads is not None:
            line += f"; {loads:.2f} global loads per output"
        print(line + ")")


#: Every other case of a one-thread-per-element checker runs blocks of this many threads instead of its usual
#: size: a kernel that writes a block size of its own in (``cuda.blockIdx.x * 128 + cuda.threadIdx.x``, the
#: lesson's launch size) is wrong there.
OTHER_BLOCK_SIZE = 32


def block_size_of_case(index: int, usual: int) -> int:
    """The threads per block of case ``index``: ``usual``, and ``OTHER_BLOCK_SIZE`` for every odd case."""
    return OTHER_BLOCK_SIZE if index % 2 else usual


def blocks_in_case(per_block: int, usual: int) -> str:
    """What to add to a case's description when it runs blocks of ``per_block`` threads, not ``usual``."""
    return "" if per_block == usual else f", blocks of {per_block} threads"


def blocks_note(per_block: int, usual: int) -> str:
    """What to add to the description and hint of a case launched in blocks of ``per_block`` threads."""
    if per_block == usual:
        return ""
    return (f"; this case runs blocks of {per_block} threads, the others {usual}: i = cuda.grid(1) "
            "(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x) holds for any block size, a size written in "
            "does not")


def parameter_names(kernel) -> list[str]:
    return list(inspect.signature(getattr(kernel, "py_func", kernel)).parameters)


def first_index_hint(bad, what: str) -> str | None:
    """When every element at index 0 of the first axis (batch element 0, or
    plane 0) is right and the others are not, the kernel ignores that index:
    say so. ``bad``: the mismatch mask of a compare."""
    if bad.ndim not in (3, 4) or bad.shape[0] < 2 or bad[0].any() or not bad[1:].any() or "weight" in what:
        return None
    if bad.ndim == 4:
        return ("batch element 0 is right and the others are wrong: the kernel ignores the batch index n (it "
                "reads an array at [0, ...], or unravels i without n). Unravel i into (n, c, Y, X) and index "
                "every array with n")
    return ("plane 0 is right and the others are wrong: the kernel ignores the plane index (it reads x[0, ...], "
            "or unravels i without it). Unravel i into (plane, row, col) and read x[plane, ...]")
