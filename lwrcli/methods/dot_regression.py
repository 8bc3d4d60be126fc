"""Dot regression (Yang et al., NeurIPS 2022): the loss of a fixed simplex-ETF head."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from lwrcli.config.sections import LossSection
from lwrcli.methods.losses import CountsLoss, LossMethod


class DotRegression(CountsLoss):
    """Dot regression for a fixed simplex-ETF head (Yang et al., NeurIPS 2022):
    ℓ_i = 1/2 (w_y · h_i - |w_y| |h_i|)^2 / |h_i| on the authors' normalised features.

    The ETF head (`model.head.name: etf`, lwrcli.methods.etf) outputs z_ic = w_c · h_i with
    unit rows and unit features, so ℓ_i = 1/2 (z_iy - 1)^2: it pulls each feature toward its
    class's vertex and, unlike CE, never pushes it from the others (the fixed simplex already
    keeps classes apart). A class weight gives the weighted mean Σ w_y ℓ_i / Σ w_y.

    Soft targets q (N, C) take the expected hard loss, Σ_c q_ic 1/2 (z_ic - 1)^2 (weighted:
    Σ_i Σ_c w_c q_ic ℓ_ic / Σ_i Σ_c w_c q_ic, like soft CE). For mixup's q = λ e_a + (1-λ) e_b
    that is exactly the authors' λ ℓ(y_a) + (1-λ) ℓ(y_b); one-hot q gives the hard loss.
    """

    soft_targets = True

    def loss(self, z: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
        if target.dim() == 2:
            per_class = 0.5 * (z - 1.0).square()
            wq = target if weight is None else target * weight
            if weight is None:
                return (wq * per_class).sum(1).mean()
            return (wq * per_class).sum() / wq.sum()
        per_sample = 0.5 * (z.gather(1, target[:, None]).squeeze(1) - 1.0).square()
        if weight is None:
            return per_sample.mean()
        w = weight[target]
        return (w * per_sample).sum() / w.sum()


class DotRegressionConfig(LossSection):
    name: Literal["dr"] = "dr"


class DotRegressionMethod(LossMethod):
    name, label, config, loss_class = "dr", "DR", DotRegressionConfig, DotRegression

    def check(self, cfg: Any) -> None:
        if cfg.loss.name == "dr" and cfg.model.head.name != "etf":
            raise ValueError(
                "loss.name=dr (dot regression) pulls each sample's target cosine to 1 and never "
                "pushes other classes away, so it needs the fixed ETF head: set "
                "model.head.name=etf (with a learnable classifier every row could simply "
                "align with every feature)"
            )


METHOD = DotRegressionMethod()
