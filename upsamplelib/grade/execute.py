"""Running a student's notebook cell by cell in a Jupyter kernel, so that a
cell that hangs or kills the kernel costs that cell and no more.

A cell that runs past its timeout is interrupted. If the kernel then
answers and no thread the cell started is still running, execution carries
on in the same kernel (a ``while True:`` in plain Python ends this way). If
not (a simulated CUDA kernel whose threads still spin, a loop that swallows
``KeyboardInterrupt``) or if the kernel died, a fresh kernel is started and
the notebook's earlier cells are run again in it, without the cells that
hung or crashed, before the next cell runs.
"""

from __future__ import annotations

import signal
import tempfile
import time
from dataclasses import dataclass, field

import nbformat
from ipykernel.kernelspec import get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

#: Seconds an interrupted kernel has to answer before it is restarted.
INTERRUPT_PATIENCE = 15
#: Fresh kernels one notebook may need before grading gives up on it.
MAX_RESTARTS = 8
#: Seconds a kernel may take to start.
STARTUP_TIMEOUT = 120

_TIMEOUT_ENAME = "upsamplelib.grade: cell timeout"
_THREADS_PROBE = "print(__import__('threading').active_count())"


class GradingAborted(RuntimeError):
    """The notebook could not be run at all (no kernel, or one that keeps dying)."""


@dataclass
class CellOutcome:
    """What happened when a cell ran last.

    ``status`` is ``"ok"``, ``"error"`` (it raised; ``error`` is
    ``"Name: message"``), ``"timeout"`` or ``"crashed"`` (the kernel died).
    """

    status: str
    error: str = ""
    seconds: float = 0.0
    stdout: str = ""
    restarted: bool = False  # a fresh kernel had to be started after it


@dataclass
class _Cell:
    source: str
    index: int | None  # position in the notebook; None for the grader's own cells
    node: nbformat.NotebookNode = field(repr=False, default=None)


class _ThisInterpreter(KernelSpecManager):
    """Every kernel name means an IPython kernel of the Python running the
    grader, whatever kernels the notebook's metadata or the user's Jupyter
    configuration name: the student's code meets the course's packages."""

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(resource_dir="", **get_kernel_dict())


def _error_of(outputs) -> str:
    for output in outputs:
        if output.get("output_type") == "error":
            return f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"
    return ""


def _stdout_of(outputs) -> str:
    return "".join(output.get("text", "") for output in outputs
                   if output.get("output_type") == "stream" and output.get("name") == "stdout")


class CellRunner:
    """Runs the cells of one notebook, and then the grader's cells, in a
    kernel whose working directory is ``workdir``."""

    def __init__(self, notebook: nbformat.NotebookNode, workdir: str, timeout: float,
                 interrupt_patience: float = INTERRUPT_PATIENCE, max_restarts: int = MAX_RESTARTS):
        self.timeout = timeout
        self.interrupt_patience = interrupt_patience
        self.max_restarts = max_restarts
        self.restarts = 0
        self.client = NotebookClient(
            notebook, timeout=timeout, allow_errors=True, startup_timeout=STARTUP_TIMEOUT,
            # On a timeout nbclient interrupts the kernel and files this reply
            # (it also stops listening for the cell's output, which a raised
            # CellTimeoutError would leave listening, eating later output).
            interrupt_on_timeout=True, error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": ""},
            on_cell_executed=self._note_reply,
            shutdown_kernel="immediate", record_timing=False, resources={"metadata": {"path": workdir}},
        )
        self._last_reply: dict | None = None
        self._running = False
        self._kernel_log = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        #: Notebook cells that ran to the end (with or without an error): what
        #: a fresh kernel runs again. Cells that hung or crashed are left out.
        self._replay: list[_Cell] = []
        #: The latest outcome of every notebook cell, by index.
        self.outcomes: dict[int, CellOutcome] = {}

    # -- the kernel -------------------------------------------------------

    def _start(self) -> None:
        if self.restarts > self.max_restarts:
            raise GradingAborted(f"the kernel had to be restarted {self.max_restarts} times; giving up")
        self._kernel_log.seek(0)
        self._kernel_log.truncate()
        self.client.km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
        try:
            # The kernel's own stdout and stderr (not the cells' output, which
            # comes as messages) go to a log: its last line tells why a kernel died.
            self.client.start_new_kernel(stdout=self._kernel_log, stderr=self._kernel_log)
            self.client.start_new_kernel_client()
        except Exception as error:  # noqa: BLE001  (any failure to start means no grade)
            self.stop()
            raise GradingAborted(f"could not start a kernel: {type(error).__name__}: {error}") from error
        self._running = True

    def stop(self) -> None:
        if self.client.km is not None:
            try:
                self.client._cleanup_kernel()
            except Exception:  # noqa: BLE001  (a dead kernel cannot be shut down twice)
                pass
        self.client.km = None
        self.client.kc = None
        self._running = False

    def _restart(self) -> None:
        self.stop()
        self.restarts += 1

    def _ensure_kernel(self) -> None:
        """A running kernel that has run every cell of ``_replay``."""
        while not self._running:
            self._start()
            for cell in list(self._replay):
                outcome = self._execute(cell)
                if cell.index is not None:
                    self.outcomes[cell.index] = outcome
                if outcome.status in ("timeout", "crashed"):
                    self._replay.remove(cell)
                if not self._running:
                    break

    # -- running one cell -------------------------------------------------

    def _note_reply(self, cell, cell_index, execute_reply) -> None:
        self._last_reply = execute_reply

    def _run(self, node, index: int | None, timeout: float, store_history: bool = True) -> bool:
        """Run ``node``; whether it finished within ``timeout`` (if not, the
        kernel has been sent an interrupt). DeadKernelError propagates."""
        self._last_reply = None
        self.client.timeout = timeout
        try:
            self._execute_node(node, index, store_history)
        finally:
            self.client.timeout = self.timeout
        content = (self._last_reply or {}).get("content", {})
        return content.get("ename") != _TIMEOUT_ENAME

    def _probe_threads(self, timeout: float) -> int | None:
        """The kernel's count of live threads, or None if it does not answer."""
        probe = nbformat.v4.new_code_cell(_THREADS_PROBE)
        try:
            if not self._run(probe, None, timeout, store_history=False):
                return None
        except DeadKernelError:
            return None
        try:
            return int(_stdout_of(probe.outputs).split()[-1])
        except (ValueError, IndexError):
            return None

    def _execute(self, cell: _Cell) -> CellOutcome:
        """Run one cell in the running kernel. On a timeout, keep the
        interrupted kernel only if it answers with no thread of the cell
        left; otherwise (or if the kernel died) stop it, so ``_running`` is
        False."""
        threads_before = self._probe_threads(self.timeout)
        if threads_before is None:  # a kernel that cannot even count its threads
            self._restart()
            return CellOutcome("crashed", "the kernel stopped answering before this cell", restarted=True)
        node = cell.node if cell.node is not None else nbformat.v4.new_code_cell(cell.source)
        start = time.monotonic()
        try:
            finished = self._run(node, cell.index, self.timeout)
        except DeadKernelError:
            seconds = time.monotonic() - start
            how = self._how_the_kernel_ended()
            self._restart()
            last_words = self.kernel_log_tail()
            return CellOutcome("crashed", f"the kernel died while running it ({how}"
                               + (f"; its last message: {last_words})" if last_words else ")"), seconds,
                               _stdout_of(node.get("outputs", [])), restarted=True)
        seconds = time.monotonic() - start
        if not finished:
            threads_after = self._probe_threads(self.interrupt_patience)
            survived = threads_after is not None and threads_after <= threads_before
            if not survived:
                self._restart()
            return CellOutcome("timeout", f"did not finish within {self.timeout:g} s", seconds,
                               _stdout_of(node.outputs), restarted=not survived)
        error = _error_of(node.outputs)
        return CellOutcome("error" if error else "ok", error, seconds, _stdout_of(node.outputs))

    def _execute_node(self, node, index: int | None, store_history: bool = True) -> None:
        """nbclient's execute_cell; a cell of the grader's own is appended to
        the notebook while it runs (nbclient files outputs by position)."""
        if index is not None:
            self.client.execute_cell(node, index, store_history=store_history)
            return
        self.client.nb.cells.append(node)
        try:
            self.client.execute_cell(node, len(self.client.nb.cells) - 1, store_history=store_history)
        finally:
            self.client.nb.cells.pop()

    def _how_the_kernel_ended(self) -> str:
        """"exit status 3", "killed by SIGKILL" (e.g. out of memory), ..."""
        process = getattr(getattr(self.client.km, "provisioner", None), "process", None)
        code = process.poll() if process is not None else None
        if code is None:
            return "it stopped answering"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def kernel_log_tail(self) -> str:
        """The last line the kernel process wrote to its stdout or stderr,
        leaving out Jupyter's own notices."""
        self._kernel_log.seek(0)
        lines = [line.strip() for line in self._kernel_log.read().splitlines()
                 if line.strip() and not line.startswith("[IPKernelApp]")]
        self._kernel_log.seek(0, 2)
        return lines[-1] if lines else ""

    # -- what the grader calls --------------------------------------------

    def run_notebook(self) -> dict[int, CellOutcome]:
        """Run every code cell of the notebook, in order; return their outcomes."""
        for index, node in enumerate(self.client.nb.cells):
            if node.cell_type != "code" or not node.source.strip():
                continue
            cell = _Cell(node.source, index, node)
            self._ensure_kernel()
            outcome = self._execute(cell)
            self.outcomes[index] = outcome
            if outcome.status in ("ok", "error"):
                self._replay.append(cell)
        return self.outcomes

    def run_source(self, source: str) -> CellOutcome:
        """Run the grader's own code after the notebook (never run again
        after a restart)."""
        self._ensure_kernel()
        return self._execute(_Cell(source, None))
