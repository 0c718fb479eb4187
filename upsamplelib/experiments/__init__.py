"""The capstone experiment: every upsampler of the library trained in the same
small encoder-decoder, on a region task (segmentation) and a detail task
(matting), on the CPU.

From a shell::

    python -m upsamplelib.experiments --task region --upsampler carafe --seeds 3 --steps 300 --json out.json
    python -m upsamplelib.experiments grid --json upsamplelib/experiments/results.json

From Python: ``make_dataset``, ``EncoderDecoder``, ``train_model`` / ``run``,
the metrics in ``metrics``, ``load_results`` / ``summarise`` for the committed
``results.json``, and the figures in ``plots``.
"""

from . import data, metrics, model  # noqa: F401
from .data import REGION_CLASSES, TASKS, Dataset, make_dataset  # noqa: F401
from .model import (  # noqa: F401
    UPSAMPLERS,
    EncoderDecoder,
    count_parameters,
    make_upsampler,
    matched_width,
    upsampler_parameters,
)
from .results import RESULTS, load_results, summarise  # noqa: F401
from .train import Config, build_model, datasets, run, train_model  # noqa: F401
