"""Training and evaluation: one run = one task, one upsampler, one seed.

Every upsampler gets the same budget (``Config``): the same data, steps,
batch size, optimiser (AdamW), learning-rate schedule (linear warm-up over
the first 5% of the steps, then cosine decay to zero) and loss. The seed
sets the network's initialisation and the order of the training batches;
the data sets are the same for every seed (images drawn with
``Config.data_seed``), so the upsamplers are compared on the same images.

Losses: cross-entropy (region); L1 between ``sigmoid(logit)`` and the true
alpha (detail, the alpha-prediction loss of Deep Image Matting).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from .data import REGION_CLASSES, make_dataset
from .metrics import task_metrics
from .model import EncoderDecoder, count_parameters, upsampler_parameters


@dataclass(frozen=True)
class Config:
    """What every run of the experiment shares."""

    width: int = 16  # channels at every level of the network
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the steps
    train_size: int = 96  # a small training set: overfitting can show, as in SAPA's study
    val_size: int = 128
    data_seed: int = 0
    evals: int = 8  # points on the loss curves
    curve_size: int = 64  # images of each set the curves are measured on
    image_size: int = 64

    @property
    def val_start(self):
        return 100_000  # validation images come from a range of indices training never reaches


@lru_cache(maxsize=8)
def datasets(task: str, config: Config = Config()):
    """(train, val) data sets of ``task`` for ``config`` (cached)."""
    train = make_dataset(task, config.train_size, config.data_seed, 0, config.image_size)
    val = make_dataset(task, config.val_size, config.data_seed, config.val_start, config.image_size)
    return train, val


def outputs_of(task: str) -> int:
    return REGION_CLASSES if task == "region" else 1


def loss_of(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task == "region":
        return F.cross_entropy(logits, targets)
    return (torch.sigmoid(logits[:, 0]) - targets).abs().mean()


def predict(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Labels (region) or alpha in [0, 1] (detail) from the network's logits."""
    return logits.argmax(1) if task == "region" else torch.sigmoid(logits[:, 0])


@torch.no_grad()
def evaluate(model, task, data, batch: int = 32):
    """(mean loss, predictions) of ``model`` on ``data``, in eval mode."""
    was_training = model.training
    model.eval()
    losses, predictions = [], []
    for start in range(0, len(data), batch):
        images, targets = data.images[start:start + batch], data.targets[start:start + batch]
        logits = model(images)
        losses.append(loss_of(task, logits, targets).item() * len(images))
        predictions.append(predict(task, logits))
    model.train(was_training)
    return sum(losses) / len(data), torch.cat(predictions)


def schedule(steps: int, warmup: float):
    """Learning-rate factor of each step: linear warm-up, then cosine to 0."""
    warm = max(1, round(warmup * steps))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return factor


def build_model(task: str, upsampler, seed: int, config: Config = Config()) -> EncoderDecoder:
    """The network for ``task`` with ``upsampler`` (a name or a factory),
    initialised from ``seed`` without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EncoderDecoder(upsampler, outputs_of(task), config.width)


def train_model(task: str, upsampler, seed: int = 0, steps: int = 300, config: Config = Config(),
                progress: bool = True, data=None):
    """Train one network; returns ``(model, record)``. ``record`` is what the
    experiment stores: task, upsampler, seed, steps, metrics (on the
    validation set), parameters, seconds, and the loss curves."""
    from tqdm.auto import tqdm  # only here: the checkers and the data need no tqdm

    start = time.perf_counter()
    train, val = data if data is not None else datasets(task, config)
    model = build_model(task, upsampler, seed, config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule(steps, config.warmup))
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    curve_every = max(1, steps // config.evals)
    train_probe, val_probe = train[:config.curve_size], val[:config.curve_size]
    curves = {"step": [], "batch_loss": [], "train_loss": [], "val_loss": []}
    running, count = 0.0, 0
    name = upsampler if isinstance(upsampler, str) else model.upsampler_name
    bar = tqdm(range(steps), desc=f"{task} {name} seed {seed}", disable=not progress, leave=False,
               dynamic_ncols=True)
    model.train()
    for step in bar:
        if len(order) < config.batch:
            order = torch.cat([order, torch.randperm(len(train), generator=generator)])
        index, order = order[:config.batch], order[config.batch:]
        loss = loss_of(task, model(train.images[index]), train.targets[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        running, count = running + loss.item(), count + 1
        if (step + 1) % curve_every == 0 or step + 1 == steps:
            curves["step"].append(step + 1)
            curves["batch_loss"].append(running / count)
            curves["train_loss"].append(evaluate(model, task, train_probe)[0])
            curves["val_loss"].append(evaluate(model, task, val_probe)[0])
            bar.set_postfix(train=f"{curves['train_loss'][-1]:.3f}", val=f"{curves['val_loss'][-1]:.3f}")
            running, count = 0.0, 0
    bar.close()
    val_loss, predictions = evaluate(model, task, val)
    metrics = task_metrics(task, predictions, val.targets)
    metrics["loss"] = val_loss
    record = {
        "task": task,
        "upsampler": name,
        "seed": seed,
        "steps": steps,
        "metrics": metrics,
        "parameters": count_parameters(model),
        "upsampler_parameters": upsampler_parameters(model),
        "seconds": round(time.perf_counter() - start, 2),
        "curves": curves,
    }
    return model, record


def run(task: str, upsampler: str, seed: int = 0, steps: int = 300, config: Config = Config(),
        progress: bool = True) -> dict:
    """One record (see ``train_model``)."""
    return train_model(task, upsampler, seed, steps, config, progress)[1]


def config_dict(config: Config = Config()) -> dict:
    return asdict(config)
