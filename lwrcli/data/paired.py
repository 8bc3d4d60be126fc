"""BBN's paired training batches (Zhou et al., CVPR 2020): each step one batch from the
instance sampler (the conventional branch) and one from the reversed sampler (the re-balancing
branch, class c with probability (1 / n_c) / sum_j (1 / n_j)), on either pipeline.

`PairedLoader` wraps two training loaders of the same split and length (device-resident arrays
or worker DataLoaders) and yields

    x (B, 2, 3, H, W): [:, 0] the conventional images, [:, 1] the reversed ones,
    y (B, C) float32:  α e_{y_c} + (1 - α) e_{y_r},

with α BBN's cumulative-learning weight for the epoch (`cumulative_alpha`). The soft target
makes any soft-target loss L(z, y) equal α L(z, y_c) + (1 - α) L(z, y_r) for cross-entropy,
BBN's loss (linearity in the target), so the engine's ordinary loss call is BBN's objective.
Each loader keeps its own generator and position; the pair's state is theirs under two
prefixes, so a run resumes between any two batches exactly as the single loaders do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

# The reversed loader's seed is the run's seed plus this: its own stream of draws and
# augmentations, independent of the conventional loader's (which is the plain run's).
REVERSED_SEED_OFFSET = 1_000_003


def alpha_divisor(epochs: int) -> int:
    """T_max of α's parabola: the number of epochs, except that BBN's code (its Combiner)
    divides by 100 * (epochs // 100 + 1) for 90 and 180 epochs, i.e. by 100 and 200."""
    return 100 * (epochs // 100 + 1) if epochs in (90, 180) else epochs


def cumulative_alpha(epoch: int, epochs: int) -> float:
    """BBN's parabolic decay α = 1 - (T / T_max)^2 for the 0-based `epoch` T of `epochs`
    (BBN writes 1 - ((epoch - 1) / div_epoch)^2 with 1-based epochs). Constant within an
    epoch; 1 at the first epoch, decreasing towards 0 at the last."""
    return max(0.0, 1.0 - (epoch / alpha_divisor(epochs)) ** 2)


class PairedLoader:
    """A training loader yielding BBN's (pair images, soft target) batches; see the module."""

    def __init__(self, conventional: Any, reversed_: Any, num_classes: int, epochs: int) -> None:
        self.conventional = conventional
        self.reversed = reversed_
        self.num_classes = num_classes
        self.epochs = epochs
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.conventional)

    @property
    def position(self) -> int:
        return int(self.conventional.position)

    @property
    def last_global_batch(self) -> int | None:
        return getattr(self.conventional, "last_global_batch", None)

    @property
    def alpha(self) -> float:
        """α of the current epoch."""
        return cumulative_alpha(self._epoch, self.epochs)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self.conventional.set_epoch(epoch)
        self.reversed.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        a = self.alpha
        rev = iter(self.reversed)
        for xc, yc in self.conventional:
            xr, yr = next(rev)
            target = a * F.one_hot(yc, self.num_classes).float()
            target += (1.0 - a) * F.one_hot(yr, self.num_classes).float()
            yield torch.stack([xc, xr], dim=1), target
        for _ in rev:  # the same length: this only lets the reversed loader close its epoch
            pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"conventional.{k}": v for k, v in self.conventional.state_dict().items()}
        state.update({f"reversed.{k}": v for k, v in self.reversed.state_dict().items()})
        state["epoch"] = torch.tensor([self._epoch])
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, loader in (("conventional.", self.conventional), ("reversed.", self.reversed)):
            loader.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )
        self._epoch = int(state["epoch"][0]) if "epoch" in state else 0
