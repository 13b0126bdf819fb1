"""How a step draws its real batch of B packs of m points (B m rows of the data; m = pac, 1 without packing).

"drawn" (DrawnPoints, the default): every step draws its B m points from the N of the data, uniform with
replacement, so the m points of a pack are new together every step.

"fixed" (FixedPacks): the PacGAN authors' code makes N packs once, before training, each slot's point drawn from
the N with replacement (their GaussianPackingMixture), and trains on those packs only; each step here draws B of the
N packs, uniform with replacement (their code shuffles the packs and walks through them an epoch at a time, which
takes each pack once an epoch; the engine's draw stays capturable in a CUDA graph).
"""
import numpy as np

REAL_PACKS = ("drawn", "fixed")


class DrawnPoints:
    """Every step's B m rows drawn from the N points of `data`, uniform with replacement."""

    def __init__(self, backend, data, pac, seed, dtype):
        self.backend = backend
        self.data = backend.asarray(data, dtype)  # (N, F), resident on the backend

    def draw_rows(self, rng, idx, first, out):
        """Fill idx (P B m,) int64 with the rows of the next real batch (of every rank) from the stream rng, and
        out (B m, F) with this rank's, idx[first:first + B m]: one backend call (one launch on a GPU). Returns
        out."""
        return self.backend.draw_rows(rng, self.data, idx, first, out)


class FixedPacks:
    """N packs of m points made once from `data` (N, F) with a NumPy generator seeded with `seed` (every rank makes
    the same), kept as N m rows, pack i in rows i m .. i m + m - 1; each step draws B packs, uniform with
    replacement."""

    def __init__(self, backend, data, pac, seed, dtype):
        n = data.shape[0]
        points = np.random.default_rng(seed).integers(0, n, size=(pac, n)).T  # (N, m): pack i's point in slot j
        self.backend, self.pac, self.packs = backend, pac, n
        self.data = backend.asarray(np.asarray(data)[points.reshape(-1)], dtype)  # (N m, F)
        self._offsets = backend.asarray(np.arange(pac, dtype=np.int64))  # (m,): a pack's rows after its first
        self._drawn = None  # (P B,) int64: the packs a step drew, allocated at the first draw

    def draw(self, rng, idx):
        """Fill idx (P B m,) int64 with the rows of P B packs drawn from the stream rng: m consecutive rows a pack,
        as Trainer.pack lays them side by side."""
        if self._drawn is None:
            self._drawn = self.backend.xp.empty(idx.size // self.pac, dtype=np.int64)
        drawn = self._drawn
        self.backend.batch_indices(rng, self.packs, drawn)
        drawn *= self.pac
        rows = idx.reshape(-1, self.pac)  # (P B, m)
        rows[...] = self._offsets
        rows += drawn.reshape(-1, 1)

    def draw_rows(self, rng, idx, first, out):
        """draw, then out (B m, F) = this rank's rows, idx[first:first + B m]. Returns out."""
        self.draw(rng, idx)
        return self.backend.gather_rows(self.data, idx[first:first + out.shape[0]], out)


REAL_BATCHES = {"drawn": DrawnPoints, "fixed": FixedPacks}
