"""The full grid: every task x upsampler x seed, written to one JSON file
with how it was made (``make experiments`` runs this)."""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .data import TASKS
from .metrics import boundary_pixels
from .model import UPSAMPLERS
from .train import Config, config_dict, datasets, predict, train_model

#: Validation images whose predictions the results keep (for the close-ups).
EXAMPLE_IMAGES = 2
#: The decoder stage whose kernels the results keep: the last, 32 -> 64.
KERNEL_STAGE = 2


def set_threads(threads: int) -> None:
    """Threads of PyTorch, which the library's Numba CPU loops follow
    (``backend.follow_torch_threads``)."""
    torch.set_num_threads(threads)


def example_pixel(task: str, target: torch.Tensor):
    """The pixel whose kernels the figures show: for ``region`` the true
    boundary pixel nearest the image centre, for ``detail`` the nearest pixel
    of partial opacity (0.2 < alpha < 0.8); ``(row, col)``."""
    if task == "region":
        candidates = boundary_pixels(target[None])[0]
    else:
        candidates = (target > 0.2) & (target < 0.8)
    rows, cols = torch.nonzero(candidates, as_tuple=True)
    h, w = target.shape
    distance = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
    best = int(torch.argmin(distance))  # argmin takes the first of equals: raster order
    return int(rows[best]), int(cols[best])


def encode(task: str, maps: torch.Tensor) -> list:
    """Compact text of ``(N, H, W)`` predictions: one string per row, a digit
    per label (region) or two hex digits per alpha quantised to 0..255 (detail)."""
    if task == "region":
        return [["".join(str(int(v)) for v in row) for row in image] for image in maps]
    quantised = (maps.clamp(0, 1) * 255).round().to(torch.uint8)
    return [["".join(f"{int(v):02x}" for v in row) for row in image] for image in quantised]


def decode(task: str, rows_of_images: list) -> torch.Tensor:
    """The inverse of ``encode``: int64 labels or float32 alpha."""
    if task == "region":
        return torch.tensor([[[int(c) for c in row] for row in image] for image in rows_of_images])
    return torch.tensor([[[int(row[i:i + 2], 16) / 255 for i in range(0, len(row), 2)] for row in image]
                         for image in rows_of_images], dtype=torch.float32)


def learned_kernel(model, upsampler: str, en, de, pixel):
    """The 5 x 5 kernel (and FADE's gate) of the dynamic upsampler of one
    stage at ``pixel`` of image 0, or None for nearest and bilinear."""
    up = model.ups[KERNEL_STAGE]
    module = getattr(up, "module", None)
    if module is None:
        return None
    row, col = pixel
    if upsampler == "carafe":
        kernels = module.kernels(de)
    else:
        kernels = module.kernels(en, de)
    size = int(round(kernels.shape[1] ** 0.5))
    entry = {"pixel": [row, col],
             "kernel": [[round(float(v), 5) for v in line] for line in kernels[0, :, row, col].view(size, size)]}
    if upsampler.startswith("fade"):
        entry["gate"] = round(float(module.gate(de)[0, 0, row, col]), 5)
    return entry


@torch.no_grad()
def examples_of(model, task: str, upsampler: str, val) -> dict:
    """Predictions on the first validation images and the learned kernel at
    ``example_pixel`` of image 0 (stored with seed 0 of every cell)."""
    was_training = model.training
    model.eval()
    images = val.images[:EXAMPLE_IMAGES]
    keep = []
    logits = model.decode(model.features(images), keep)
    en, de = keep[KERNEL_STAGE]
    entry = {"images": list(range(EXAMPLE_IMAGES)), "predictions": encode(task, predict(task, logits)),
             "kernel": learned_kernel(model, upsampler, en, de, example_pixel(task, val.targets[0]))}
    model.train(was_training)
    return entry


def run_cell(task, upsampler, seed, steps, config=Config(), progress=False, threads=None):
    """One training run; returns ``(record, examples or None)``."""
    if threads:
        set_threads(threads)
    model, record = train_model(task, upsampler, seed, steps, config, progress)
    examples = examples_of(model, task, upsampler, datasets(task, config)[1]) if seed == 0 else None
    return record, examples


def _worker_init(threads):
    os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
    set_threads(threads)


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status) if commit else None}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba
    import numpy

    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "numba": numba.__version__, "numpy": numpy.__version__}


def run_grid(tasks=TASKS, upsamplers=UPSAMPLERS, seeds=3, steps=300, config=Config(), jobs=2, threads=1,
             progress=True, command=None) -> dict:
    """Every ``task x upsampler x seed`` (``seeds`` = 0 .. seeds - 1); ``jobs``
    runs at a time in separate processes, each with ``threads`` threads.
    Returns ``{"metadata", "records", "examples"}``."""
    from tqdm.auto import tqdm

    from .. import __version__

    cells = [(task, upsampler, seed) for task in tasks for upsampler in upsamplers for seed in range(seeds)]
    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    results = {}
    bar = tqdm(total=len(cells), desc="grid", disable=not progress, dynamic_ncols=True)
    if jobs <= 1:
        set_threads(threads)
        for cell in cells:
            results[cell] = run_cell(*cell, steps, config, progress)
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init,
                                                    initargs=(threads,)) as pool:
            # the slowest upsamplers first, so the two workers finish together
            slow = {u: i for i, u in enumerate(("fade", "sapa-g", "sapa-b", "fade-lite", "carafe", "bilinear",
                                                 "nearest"))}
            ordered = sorted(cells, key=lambda c: (slow.get(c[1], -1), c[2]))
            futures = {pool.submit(run_cell, *cell, steps, config, False): cell for cell in ordered}
            for future in concurrent.futures.as_completed(futures):
                cell = futures[future]
                results[cell] = future.result()
                bar.update()
                bar.set_postfix_str(f"done {cell[0]} {cell[1]} seed {cell[2]}")
    bar.close()
    records = [results[cell][0] for cell in cells]
    examples = {}
    for cell in cells:
        if results[cell][1] is not None:
            examples.setdefault(cell[0], {})[cell[1]] = results[cell][1]
    metadata = {
        "command": command or "python -m upsamplelib.experiments " + " ".join(sys.argv[1:]),
        "machine": machine(),
        **git_commit(),
        "library_version": __version__,
        "started": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - clock, 1),
        "jobs": jobs,
        "threads_per_job": threads,
        "tasks": list(tasks),
        "upsamplers": list(upsamplers),
        "seeds": seeds,
        "steps": steps,
        "config": config_dict(config),
    }
    return {"metadata": metadata, "records": records, "examples": examples}
