"""An lwr plugin as an outside package would write one (tests/test_plugins.py): a loss, a
backbone family, a tuning method and a dataset source, registered from the `lwr.plugins`
entry point declared in its dist-info (here beside it, found through PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from lwrcli.config import LossSection
from lwrcli.methods import CountsLoss, LossMethod, register_method


class PolyLoss(CountsLoss):
    """Poly-1 (Leng et al., ICLR 2022): CE + ε (1 - p_t). ε = 0 is exactly CE."""

    def __init__(self, class_counts: Any, epsilon: float) -> None:
        super().__init__(class_counts)
        self.epsilon = float(epsilon)

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        ce = F.cross_entropy(z, target, weight=weight)
        if self.epsilon == 0.0:
            return ce
        pt = F.softmax(z, dim=1).gather(1, target[:, None]).squeeze(1)
        return ce + self.epsilon * (1.0 - pt).mean()


class PolyConfig(LossSection):
    name: Literal["poly1"] = "poly1"
    epsilon: float = Field(1.0, ge=-1.0, le=100.0)


class PolyMethod(LossMethod):
    name, label, config, loss_class = "poly1", "Poly-1", PolyConfig, PolyLoss

    def describe(self, section: Any) -> str:
        return f"Poly-1 (ε={section.epsilon:g})"

    def make(self, section: Any, class_counts: Tensor) -> CountsLoss:
        return PolyLoss(class_counts, section.epsilon)


class TinyNet(nn.Module):
    """One conv layer, global pooling, a Linear head at `fc`."""

    def __init__(self, width: int = 8, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(x)), 1).flatten(1))


def add_nothing(model: nn.Module, num_classes: int, dim: int | None) -> None:
    """The `frozen_body` tuning method: no new modules, so only the head trains."""


class BlobsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["toy-blobs"]
    num_classes: int = 3
    seed: int = 0


def prepare_blobs(options: BlobsOptions, out: Path, overwrite: bool) -> Any:
    from lwrcli.data.synthetic import prepare_synthetic

    return prepare_synthetic(
        out,
        num_classes=options.num_classes,
        n_max=20,
        test_per_class=2,
        imbalance_factor=4,
        seed=options.seed,
        overwrite=overwrite,
    )


def register() -> None:
    """The entry point: lwr calls it once, after its built-in methods."""
    from lwrcli.data.sources import Source, register_source
    from lwrcli.models.families import Family, register_family
    from lwrcli.models.tuning import register_tuning

    register_method(PolyMethod())
    register_family(
        Family(
            "toy",
            lambda arch: TinyNet(width=int(arch.removeprefix("w"))),
            names=lambda: ["w4", "w8"],
        )
    )
    register_tuning("frozen_body", add_nothing)
    register_source(Source("toy-blobs", BlobsOptions, prepare_blobs))
