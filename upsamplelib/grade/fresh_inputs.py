"""Fresh random inputs for the checkers, without touching them.

The checkers seed every random source with a fixed number
(``np.random.default_rng(10)``, ``torch.manual_seed(40)``,
``torch.Generator().manual_seed(30)``, ``random.Random(0)`` through
``random_sizes``), so a notebook's checker cell always sees the same
inputs. While grading, ``fresh_inputs(salt)`` mixes a salt into every seed
those four entry points receive: each checker then draws other values (and
other random sizes) than the notebook saw, and the same salt gives the same
inputs again, so a grade can be reproduced. Checkers added later are covered
as long as they seed one of these four, which is how they draw inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch

_MASK_63 = (1 << 63) - 1


def salted_seed(seed: int, salt: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``salt``: another stream for
    every salt, and for salt 0 as well (the notebook's own seed is never
    reused)."""
    digest = hashlib.blake2b(f"upsamplelib-grade:{salt}:{int(seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK_63


def _is_integer_seed(seed) -> bool:
    return isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)


class SeedLog:
    """How many seeds were salted while the context was active."""

    def __init__(self):
        self.salted = 0


@contextlib.contextmanager
def fresh_inputs(salt: int):
    """Within the block, every integer seed given to NumPy's ``default_rng``,
    ``torch.manual_seed``, ``torch.Generator.manual_seed`` or
    ``random.Random`` is replaced by ``salted_seed(seed, salt)``. Yields a
    ``SeedLog`` counting the seeds replaced (0: the code drew nothing at
    random, its inputs are fixed)."""
    log = SeedLog()

    def salt_seed(seed):
        if _is_integer_seed(seed):
            log.salted += 1
            return salted_seed(seed, salt)
        return seed

    original_default_rng = np.random.default_rng
    original_manual_seed = torch.manual_seed
    original_generator = torch.Generator
    original_random = random.Random

    def default_rng(seed=None):
        return original_default_rng(salt_seed(seed))

    def manual_seed(seed):
        return original_manual_seed(salt_seed(seed))

    class SaltedGenerator(original_generator):
        def manual_seed(self, seed):
            return super().manual_seed(salt_seed(seed))

    class SaltedRandom(original_random):
        def seed(self, a=None, version=2):
            super().seed(salt_seed(a), version)

    np.random.default_rng = default_rng
    torch.manual_seed = manual_seed
    torch.Generator = SaltedGenerator
    random.Random = SaltedRandom
    try:
        yield log
    finally:
        np.random.default_rng = original_default_rng
        torch.manual_seed = original_manual_seed
        torch.Generator = original_generator
        random.Random = original_random
