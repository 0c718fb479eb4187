"""Small cpu calls on a machine with a busy core: the library's choice (loops
over fewer than ``backend.SERIAL_ELEMENTS`` elements on one thread) against
every loop on all threads, timed in turns.

    python bench/busy_core.py            # as the machine is
    python bench/busy_core.py --busy     # beside a busy loop on one core, this process at nice 10

With ``--busy`` a parallel loop waits for its second thread while the busy
program holds the core (tens of milliseconds a call on 2 cores); a loop on
one thread does not wait. PyTorch's own small ops take no threads either.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("UPSAMPLELIB_QUIET", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import upsamplelib as ul  # noqa: E402
from upsamplelib import backend  # noqa: E402
from upsamplelib.timing import median_time  # noqa: E402


def calls(channels, side):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, side, side, generator=generator)
    masks = torch.softmax(torch.randn(1, 25, 2 * side, 2 * side, generator=generator), 1)
    return {"carafe": lambda: ul.carafe(x, masks, 5, 2, backend="cpu"),
            "nearest": lambda: ul.interpolate(x, scale_factor=2, mode="nearest", backend="cpu"),
            "bilinear": lambda: ul.interpolate(x, scale_factor=2, mode="bilinear", backend="cpu")}


def median_with_grain(function, grain, repeats):
    backend.SERIAL_ELEMENTS = grain
    return median_time(function, warmup=2, repeats=repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", action="store_true", help="run beside a busy loop, this process at nice 10")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # its Python started and spinning
        os.nice(10)
    chosen = backend.SERIAL_ELEMENTS
    try:
        print(f"{torch.get_num_threads()} threads; {'beside a busy core, nice 10' if busy else 'as the machine is'}; "
              f"one thread below {chosen} elements")
        print(f"{'call':28s} {'library us':>11s} {'all threads us':>15s}")
        for channels, side in ((4, 4), (16, 8), (16, 16), (64, 32)):
            for name, function in calls(channels, side).items():
                best = {"library": float("inf"), "all": float("inf")}
                for _ in range(2):  # in turns
                    best["library"] = min(best["library"], median_with_grain(function, chosen, args.repeats))
                    best["all"] = min(best["all"], median_with_grain(function, 0, args.repeats))
                print(f"{name + f' (1, {channels}, {side}, {side}) x2':28s} {1e6 * best['library']:11.0f} "
                      f"{1e6 * best['all']:15.0f}")
    finally:
        backend.SERIAL_ELEMENTS = chosen
        if busy is not None:
            busy.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
