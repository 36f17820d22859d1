"""Batches by step, so a resumed run draws exactly the samples (and augmentation seeds) the
uninterrupted run would have: every training loop that resumes bit for bit uses it."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler


class StepBatchSampler(Sampler):
    """Batches of (index, augmentation seed) for steps start_step .. total_steps - 1.

    Sample k of the run (k = step * batch_size + i) is item perm_e[k mod n] of epoch e = k // n, with
    perm_e a permutation seeded by (seed, e): epochs cover the data without repeats."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, total_steps: int):
        self.n, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self._perms: dict[int, np.ndarray] = {}

    def _item(self, k: int) -> int:
        epoch = k // self.n
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perms[epoch][k % self.n])

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            ks = range(step * self.batch_size, (step + 1) * self.batch_size)
            yield [(self._item(k), (self.seed * 1_000_003 + k) % 2**63) for k in ks]
