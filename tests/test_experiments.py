"""The capstone experiment: seeded data, metrics against hand-computed
cases, the network, a tiny training run, the CLI, and the committed results."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from upsamplelib.experiments import (
    RESULTS,
    TASKS,
    UPSAMPLERS,
    Config,
    EncoderDecoder,
    count_parameters,
    load_results,
    make_dataset,
    metrics,
    run,
    summarise,
    upsampler_parameters,
)
from upsamplelib.experiments.grid import decode, encode, example_pixel
from upsamplelib.experiments.results import claims, compare_cells, mean_std, table

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_data_is_seeded_and_each_image_depends_only_on_its_index(task):
    a, b = make_dataset(task, 3, seed=4), make_dataset(task, 3, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    other = make_dataset(task, 3, seed=5)
    assert not torch.equal(a.images, other.images)
    third = make_dataset(task, 1, seed=4, start=2)
    assert torch.equal(third.images[0], a.images[2]) and torch.equal(third.targets[0], a.targets[2])


def test_region_data_has_five_classes_and_textured_noisy_shapes():
    data = make_dataset("region", 16)
    assert data.images.shape == (16, 3, 64, 64) and data.images.dtype == torch.float32
    assert data.targets.shape == (16, 64, 64) and data.targets.dtype == torch.int64
    counts = torch.bincount(data.targets.flatten(), minlength=5)
    assert len(counts) == 5 and (counts > 0).all()  # background and four textures
    assert 0.3 < counts[0] / counts.sum() < 0.9
    # noise: no two neighbouring pixels of the background are equal
    assert (data.images[:, :, :, 1:] != data.images[:, :, :, :-1]).float().mean() > 0.99


def test_detail_data_is_a_composite_with_thin_partial_structures():
    data = make_dataset("detail", 8)
    alpha = data.targets
    assert alpha.shape == (8, 64, 64) and alpha.dtype == torch.float32
    assert alpha.min() >= 0 and alpha.max() <= 1
    partial = ((alpha > 0.05) & (alpha < 0.95)).float().mean()
    assert partial > 0.1  # strands are mostly partial coverage
    assert (alpha == 1).any() and (alpha == 0).any()


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        make_dataset("depth", 1)


# --------------------------------------------------------------------------
# Metrics, against hand-computed cases
# --------------------------------------------------------------------------


def test_boundary_pixels_and_band_of_a_vertical_edge():
    target = torch.zeros(1, 5, 7, dtype=torch.long)
    target[:, :, 4:] = 1  # edge between columns 3 and 4
    edges = metrics.boundary_pixels(target)
    assert edges[0].any(0).nonzero().flatten().tolist() == [3, 4]
    assert edges[0, :, 3].all() and edges[0, :, 4].all()
    band = metrics.boundary_band(target, 2)
    assert band[0].all(0).nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert not band[0, :, 0].any()
    assert torch.equal(metrics.boundary_band(target, 0), edges)


def test_band_is_a_square_around_a_single_pixel():
    target = torch.zeros(1, 7, 7, dtype=torch.long)
    target[0, 3, 3] = 2
    band = metrics.boundary_band(target, 1)
    # boundary pixels: the centre and its 4 neighbours (a plus); the band is the plus dilated by a 3x3 square
    assert band[0].sum().item() == 21
    assert band[0, 1:6, 2:5].all() and band[0, 2:5, 1:6].all() and not band[0, 1, 1]


def test_miou_and_boundary_iou_by_hand():
    target = torch.tensor([[[0, 0, 1, 1],
                            [0, 0, 1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1],
                          [0, 0, 1, 2]]])
    # class 0: inter 3, union 4; class 1: inter 3, union 5; class 2: inter 0, union 1
    assert math.isclose(metrics.miou(pred, target, 3), (3 / 4 + 3 / 5 + 0) / 3)
    # band of width 0: columns 1 and 2 only -> class 0: inter 1 (pixel (1,1)), union 2; class 1: inter 2, union 3
    assert math.isclose(metrics.boundary_iou(pred, target, 3, width=0), (1 / 2 + 2 / 3) / 2)
    # a class absent from both is left out of the mean (not counted as 0)
    assert math.isclose(metrics.miou(pred, target, 7), metrics.miou(pred, target, 3))


def test_miou_sums_counts_over_the_images():
    target = torch.tensor([[[0, 1]], [[0, 0]]])
    pred = torch.tensor([[[0, 0]], [[0, 0]]])
    # class 0: inter 3, union 4; class 1: inter 0, union 1
    assert math.isclose(metrics.miou(pred, target, 2), (3 / 4 + 0) / 2)


def test_gaussian_derivative_filters_are_those_of_the_matting_code():
    hx, hy = metrics.gaussian_derivative_filters(1.4)
    assert hx.shape == (9, 9)  # half size ceil(1.4 * sqrt(-2 log(sqrt(2 pi) 1.4 0.01))) = 4
    assert math.isclose(float(hx.pow(2).sum()), 1.0)
    assert torch.allclose(hx, -hx.flip(1)) and torch.allclose(hy, hx.T)
    assert float(hx[4, 3]) > 0  # dG(j) = -j G(j): positive left of the centre, as in gaussgradient


def test_sad_mse_and_grad_of_an_impulse_by_hand():
    target = torch.zeros(2, 9, 9)
    pred = torch.zeros(2, 9, 9)
    pred[0, 4, 4] = 1.0  # image 0: one wrong pixel; image 1: perfect
    assert math.isclose(metrics.sad(pred, target), 0.5)
    assert math.isclose(metrics.mse(pred, target), 1000 / 81 / 2)
    # the impulse's gradient field is the two filters themselves (all inside the 9 x 9 image), so
    # sum |grad|^2 = |hx|^2 + |hy|^2 = 2 for image 0, and 0 for image 1
    assert math.isclose(metrics.grad_error(pred, target), 1.0, rel_tol=1e-9)
    assert metrics.grad_error(target, target) == 0.0


def test_task_metrics_names():
    assert set(metrics.task_metrics("region", torch.zeros(1, 4, 4, dtype=torch.long),
                                    torch.zeros(1, 4, 4, dtype=torch.long))) == {"miou", "boundary_iou"}
    assert set(metrics.task_metrics("detail", torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))) == {"sad", "mse", "grad"}


# --------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------


def test_every_upsampler_fits_the_network_and_counts_its_parameters():
    x = torch.randn(1, 3, 32, 32)
    counts = {}
    for name in UPSAMPLERS:
        model = EncoderDecoder(name, outputs=5, width=8)
        assert model(x).shape == (1, 5, 32, 32)
        counts[name] = (count_parameters(model), upsampler_parameters(model))
    assert counts["nearest"] == counts["bilinear"] and counts["nearest"][1] == 0
    base = counts["nearest"][0]
    for name in ("carafe", "sapa-b", "sapa-g", "fade", "fade-lite"):
        assert counts[name][0] == base + counts[name][1] and counts[name][1] > 0
    with pytest.raises(ValueError, match="unknown upsampler"):
        EncoderDecoder("bicubic")


def test_the_upsamplers_run_on_the_numba_cpu_backend():
    model = EncoderDecoder("fade", outputs=1, width=8)
    # backend None means "cpu" (the Numba CPU kernels) for CPU tensors, "cuda" for CUDA tensors
    assert all(up.module.backend is None for up in model.ups)


# --------------------------------------------------------------------------
# Training, the CLI, the results
# --------------------------------------------------------------------------

TINY = Config(train_size=8, val_size=4, curve_size=4, evals=2)


@pytest.mark.parametrize("task, upsampler", [("region", "carafe"), ("detail", "sapa-g")])
def test_a_tiny_run_is_a_complete_deterministic_record(task, upsampler):
    a = run(task, upsampler, seed=1, steps=2, config=TINY, progress=False)
    b = run(task, upsampler, seed=1, steps=2, config=TINY, progress=False)
    assert set(a) >= {"task", "upsampler", "seed", "steps", "metrics", "parameters", "seconds", "curves"}
    assert (a["task"], a["upsampler"], a["seed"], a["steps"]) == (task, upsampler, 1, 2)
    assert a["metrics"] == b["metrics"] and a["curves"] == b["curves"]
    assert a["curves"]["step"] == [1, 2] and len(a["curves"]["val_loss"]) == 2
    assert all(math.isfinite(v) for v in a["metrics"].values())


def test_encode_decode_round_trip():
    labels = torch.randint(0, 5, (2, 3, 4))
    assert torch.equal(decode("region", encode("region", labels)), labels)
    alpha = torch.rand(1, 3, 4)
    assert torch.allclose(decode("detail", encode("detail", alpha)), alpha, atol=0.5 / 255 + 1e-6)


def test_example_pixel_is_on_a_true_boundary():
    target = torch.zeros(8, 8, dtype=torch.long)
    target[:, 5:] = 1
    assert example_pixel("region", target) == (3, 4)


def _cli(*args, cwd):
    env = dict(os.environ, UPSAMPLELIB_QUIET="1")
    return subprocess.run([sys.executable, "-m", "upsamplelib.experiments", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_writes_a_json_list_of_records_and_shows_progress(tmp_path):
    out = tmp_path / "cell.json"
    result = _cli("--task", "region", "--upsampler", "bilinear", "--seeds", "2", "--steps", "2",
                  "--train-size", "8", "--val-size", "4", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert isinstance(records, list) and [r["seed"] for r in records] == [0, 1]
    for record in records:
        assert {"task", "upsampler", "seed", "steps", "metrics", "parameters", "seconds"} <= set(record)
        assert record["task"] == "region" and record["upsampler"] == "bilinear" and record["steps"] == 2
        assert set(record["metrics"]) >= {"miou", "boundary_iou"}
        assert isinstance(record["parameters"], int) and record["seconds"] > 0
    assert "bilinear" in result.stdout and "±" in result.stdout
    assert "it/s" in result.stderr or "s/it" in result.stderr  # tqdm's bars, on stderr


def test_cli_grid_writes_metadata_and_refuses_unknown_names(tmp_path):
    out = tmp_path / "grid.json"
    result = _cli("grid", "--tasks", "detail", "--upsamplers", "nearest,fade-lite", "--seeds", "1", "--steps", "1",
                  "--train-size", "4", "--val-size", "2", "--jobs", "1", "--quiet", "--json", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    metadata = results["metadata"]
    for key in ("command", "machine", "commit", "library_version", "wall_seconds", "config"):
        assert key in metadata
    assert metadata["command"].startswith("python -m upsamplelib.experiments grid")
    assert [r["upsampler"] for r in results["records"]] == ["nearest", "fade-lite"]
    assert results["examples"]["detail"]["fade-lite"]["kernel"]["gate"] is not None
    assert results["examples"]["detail"]["nearest"]["kernel"] is None
    assert result.stderr.strip() == ""  # --quiet
    bad = _cli("grid", "--upsamplers", "bicubic", "--json", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and "unknown upsampler 'bicubic'" in bad.stderr


def test_mean_std_and_summary_by_hand():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std (ddof=1)
    assert mean_std([5.0]) == (5.0, 0.0)
    records = [{"task": "region", "upsampler": u, "seed": s, "steps": 1, "parameters": 10,
                "metrics": {"miou": m, "boundary_iou": m / 2}, "curves": {"train_loss": [0.1], "val_loss": [0.2]}}
               for u, s, m in [("bilinear", 0, 0.4), ("bilinear", 1, 0.8), ("carafe", 0, 0.8), ("carafe", 1, 0.82)]]
    summary = summarise(records)
    assert summary["region"]["bilinear"]["miou"][:2] == pytest.approx((0.6, math.sqrt(0.08)))
    assert "carafe" in table(records, "region").splitlines()[2]
    difference, error, verdict = compare_cells(summary, "region", "miou", "carafe", "bilinear")
    assert difference == pytest.approx(0.21) and verdict == "not resolved"  # 0.21 < 2 * 0.2003
    records[1]["metrics"]["miou"] = 0.51
    assert compare_cells(summarise(records), "region", "miou", "carafe", "bilinear")[2] == "supported"
    assert compare_cells(summarise(records), "region", "miou", "bilinear", "carafe")[2] == "contradicted"


def test_committed_results_cover_the_grid_and_say_how_they_were_made():
    results = load_results(RESULTS)
    metadata = results["metadata"]
    for key in ("command", "machine", "commit", "library_version", "wall_seconds", "steps", "seeds", "config"):
        assert metadata.get(key) is not None, key
    assert metadata["command"].startswith("python -m upsamplelib.experiments grid")
    assert metadata["seeds"] >= 3 and metadata["wall_seconds"] <= 3600
    cells = {}
    for record in results["records"]:
        cells.setdefault((record["task"], record["upsampler"]), set()).add(record["seed"])
        assert record["steps"] == metadata["steps"]
        assert {"train_loss", "val_loss", "step"} <= set(record["curves"])
    assert set(cells) == {(t, u) for t in TASKS for u in UPSAMPLERS}
    assert all(len(seeds) >= 3 for seeds in cells.values())
    for task in TASKS:
        for upsampler in UPSAMPLERS:
            assert results["examples"][task][upsampler]["predictions"]
    verdicts = {item["verdict"] for item in claims(results)}
    assert verdicts <= {"supported", "partly supported", "contradicted", "not resolved"}
    assert np.isfinite([v for r in results["records"] for v in r["metrics"].values()]).all()
