"""The committed results of the full experiment, and what they say.

``results.json`` (beside this file) holds ``{"metadata": {...}, "records":
[...], "examples": {...}}``: ``metadata`` says how it was made (command,
machine, commit, library version, wall time, the shared configuration);
every record is one training run (``task``, ``upsampler``, ``seed``,
``steps``, ``metrics``, ``parameters``, ``upsampler_parameters``,
``seconds``, ``curves``); ``examples`` holds, for seed 0 of every cell,
predictions on the first validation images and the learned kernels at one
boundary pixel (see ``grid.examples_of``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .metrics import METRICS
from .model import UPSAMPLERS

#: The committed results of ``make experiments``.
RESULTS = Path(__file__).resolve().parent / "results.json"


def load_results(path=RESULTS) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def records_of(results) -> list:
    """The records of a results dict, or the list itself (the CLI's output)."""
    return results["records"] if isinstance(results, dict) else list(results)


def mean_std(values):
    """(mean, sample standard deviation with ddof=1; 0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise(results) -> dict:
    """``{task: {upsampler: {metric: (mean, std, n)}}}`` over the seeds, with
    the parameter count under ``"parameters"`` (mean, 0, n)."""
    groups = {}
    for record in records_of(results):
        groups.setdefault(record["task"], {}).setdefault(record["upsampler"], []).append(record)
    summary = {}
    for task, by_upsampler in groups.items():
        order = [u for u in UPSAMPLERS if u in by_upsampler] + sorted(set(by_upsampler) - set(UPSAMPLERS))
        summary[task] = {}
        for upsampler in order:
            records = by_upsampler[upsampler]
            cell = {}
            for metric in records[0]["metrics"]:
                mean, std = mean_std([r["metrics"][metric] for r in records])
                cell[metric] = (mean, std, len(records))
            cell["parameters"] = (float(records[0]["parameters"]), 0.0, len(records))
            cell["gap"] = mean_std([r["curves"]["val_loss"][-1] - r["curves"]["train_loss"][-1] for r in records]
                                   ) + (len(records),)
            summary[task][upsampler] = cell
    return summary


#: How each metric is shown: (column title, scale, decimals).
DISPLAY = {
    "miou": ("mIoU %", 100, 2),
    "boundary_iou": ("boundary IoU %", 100, 2),
    "sad": ("SAD", 1, 1),
    "mse": ("MSE x1e3", 1, 2),
    "grad": ("Grad", 1, 1),
    "loss": ("val loss", 1, 4),
    "gap": ("val - train loss", 1, 4),
}


def table(results, task: str) -> str:
    """The mean ± std table of one task, as text (one line per upsampler)."""
    summary = summarise(results)[task]
    metrics = list(METRICS[task])
    header = f"{'upsampler':10s} {'params':>7s} " + " ".join(f"{DISPLAY[m][0]:>15s}" for m in metrics)
    lines = [header]
    for upsampler, cell in summary.items():
        parts = []
        for metric in metrics:
            _, scale, decimals = DISPLAY[metric]
            mean, std, _ = cell[metric]
            parts.append(f"{mean * scale:.{decimals}f} ± {std * scale:.{decimals}f}".rjust(15))
        lines.append(f"{upsampler:10s} {int(cell['parameters'][0]):7d} " + " ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------
# The papers' claims, tested on the numbers
# --------------------------------------------------------------------------


def compare_cells(summary, task, metric, better, worse):
    """Difference ``better - worse`` of the means of ``metric`` (sign flipped
    for lower-is-better metrics, so positive means "as claimed"), its
    standard error (Welch), and the verdict: ``"supported"`` when the
    difference is positive by more than two standard errors,
    ``"contradicted"`` when it is negative by more than two, else
    ``"not resolved"`` (the seeds cannot tell them apart)."""
    higher = METRICS[task].get(metric, True) if metric != "gap" else False
    a_mean, a_std, a_n = summary[task][better][metric]
    b_mean, b_std, b_n = summary[task][worse][metric]
    difference = (a_mean - b_mean) if higher else (b_mean - a_mean)
    error = math.sqrt(a_std ** 2 / a_n + b_std ** 2 / b_n)
    if difference > 2 * error and difference > 0:
        verdict = "supported"
    elif difference < -2 * error and difference < 0:
        verdict = "contradicted"
    else:
        verdict = "not resolved"
    return difference, error, verdict


#: The qualitative claims of the papers, each as comparisons of two cells:
#: (claim, source, figure, [(task, metric, should-be-better, should-be-worse), ...]); ``figure`` names the
#: figure of the lesson that shows the numbers.
BARS = "the metric bars of the full experiment"
CURVES = "the training curves of the full experiment"

CLAIMS = [
    ("Dynamic upsamplers beat bilinear on the region task",
     "ADE20K mIoU, SegFormer-B1: bilinear 41.68; CARAFE 42.82, SAPA-B 43.20, SAPA-G 44.39, FADE 44.41", BARS,
     [("region", "miou", name, "bilinear") for name in ("carafe", "sapa-b", "sapa-g", "fade")]),
    ("Dynamic upsamplers place region boundaries better than bilinear",
     "the qualitative figures of all three papers: sharper, better-placed boundaries", BARS,
     [("region", "boundary_iou", name, "bilinear") for name in ("carafe", "sapa-b", "sapa-g", "fade")]),
    ("The published region ranking: SAPA-B above CARAFE, SAPA-G and FADE above SAPA-B",
     "ADE20K mIoU: CARAFE 42.82 < SAPA-B 43.20 < SAPA-G 44.39, FADE 44.41", BARS,
     [("region", "miou", "sapa-b", "carafe"), ("region", "miou", "sapa-g", "sapa-b"),
      ("region", "miou", "fade", "sapa-b")]),
    ("CARAFE (decoder-only kernels) is worse than bilinear on the detail task",
     "FADE: matting SAD, CARAFE 41.01 vs bilinear 37.31", BARS,
     [("detail", "sad", "bilinear", "carafe"), ("detail", "grad", "bilinear", "carafe")]),
    ("Encoder-aware kernels (FADE, SAPA-B) beat CARAFE on the detail task",
     "FADE and SAPA: matting SAD, FADE 31.10 and SAPA-B 31.19 vs CARAFE 41.01", BARS,
     [("detail", "sad", "fade", "carafe"), ("detail", "sad", "sapa-b", "carafe"),
      ("detail", "grad", "fade", "carafe"), ("detail", "grad", "sapa-b", "carafe")]),
    ("FADE beats bilinear on both tasks (task-agnostic)",
     "FADE: mIoU 44.41 vs 41.68; SAD 31.10 vs 37.31", BARS,
     [("region", "miou", "fade", "bilinear"), ("region", "boundary_iou", "fade", "bilinear"),
      ("detail", "sad", "fade", "bilinear"), ("detail", "grad", "fade", "bilinear")]),
    ("SAPA overfits less than nearest and bilinear (a smaller gap between validation and training loss)",
     "SAPA: SegNet on a small two-class set, mIoU 94.9 vs nearest 89.5, bilinear 90.1", CURVES,
     [("region", "gap", "sapa-b", "nearest"), ("region", "gap", "sapa-b", "bilinear"),
      ("detail", "gap", "sapa-b", "nearest"), ("detail", "gap", "sapa-b", "bilinear")]),
]


def claims(results) -> list:
    """Every claim of ``CLAIMS`` with its comparisons and an overall verdict:
    ``supported`` if every comparison is, ``contradicted`` if any is, else
    ``partly supported`` (some comparisons) or ``not resolved`` (none)."""
    summary = summarise(results)
    verdicts = []
    for claim, source, figure, comparisons in CLAIMS:
        rows = []
        for task, metric, better, worse in comparisons:
            if task not in summary or better not in summary[task] or worse not in summary[task]:
                continue
            difference, error, verdict = compare_cells(summary, task, metric, better, worse)
            rows.append({"task": task, "metric": metric, "better": better, "worse": worse,
                         "difference": difference, "error": error, "verdict": verdict})
        outcomes = {row["verdict"] for row in rows}
        if not rows:
            overall = "not tested"
        elif "contradicted" in outcomes:
            overall = "contradicted"
        elif outcomes == {"supported"}:
            overall = "supported"
        elif "supported" in outcomes:
            overall = "partly supported"
        else:
            overall = "not resolved"
        verdicts.append({"claim": claim, "source": source, "figure": figure, "comparisons": rows,
                         "verdict": overall})
    return verdicts


def claims_report(results) -> str:
    """The claims as text: one block per claim, its verdict and the numbers."""
    lines = []
    for item in claims(results):
        lines.append(f"[{item['verdict'].upper()}] {item['claim']}")
        lines.append(f"    paper: {item['source']}; here: {item['figure']}")
        for row in item["comparisons"]:
            _, scale, decimals = DISPLAY.get(row["metric"], (row["metric"], 1, 4))
            lines.append(f"    {row['task']:6s} {row['metric']:12s} {row['better']:>9s} vs {row['worse']:9s}: "
                         f"{row['difference'] * scale:+.{decimals}f} ± {row['error'] * scale:.{decimals}f} "
                         f"-> {row['verdict']}")
    return "\n".join(lines)
