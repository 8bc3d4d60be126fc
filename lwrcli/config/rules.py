"""Cross-field rules of the config for the fixed simplex-ETF head, its dot-regression loss and
MaxNorm (weight balancing): what cannot be combined, and why.

Kept beside config.py (which calls these from its validators) so the rules of the two methods
read in one place. Each raises ValueError; pydantic turns it into the config error that names
the field, and the CLI into exit status 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports this module: only the types, never at run time
    from lwrcli.config.schema import ModelConfig, TrainConfig


def check_model_heads(model: ModelConfig) -> None:
    """The ETF head against the other head options."""
    if not model.etf_classifier:
        return
    if model.cosine_classifier:
        raise ValueError(
            "model.etf_classifier and model.cosine_classifier are two different heads: the ETF "
            "head already outputs cosines (of normalised features with fixed unit rows); keep one"
        )
    if model.head_init != "random":
        raise ValueError(
            f"model.head_init={model.head_init} initialises a learnable head, but the ETF head "
            "is fixed at a random simplex: set model.head_init=random or model.etf_classifier=false"
        )


def check_fixed_head(cfg: TrainConfig) -> None:
    """An ETF head is never trained: LWR, cRT/LWS and MaxNorm have nothing to act on; the dr
    loss needs it (and its unscaled cosines)."""
    etf = cfg.model.etf_classifier
    if cfg.loss.name == "dr" and not etf:
        raise ValueError(
            "loss.name=dr (dot regression) pulls each sample's target cosine to 1 and never "
            "pushes other classes away, so it needs the fixed ETF head: set "
            "model.etf_classifier=true (with a learnable classifier every row could simply "
            "align with every feature)"
        )
    if cfg.loss.name == "dr" and cfg.model.cosine_scale != 1.0:
        raise ValueError(
            f"loss.name=dr regresses cosines onto 1, but model.cosine_scale="
            f"{cfg.model.cosine_scale} scales the ETF head's logits: set model.cosine_scale=1"
        )
    if etf and cfg.lwr.enabled:
        raise ValueError(
            "lwr.enabled=true with model.etf_classifier=true: LWR repels the classifier's rows, "
            "but the ETF head is fixed (its rows never move) and already sits at the geometry "
            "LWR pushes toward (every pairwise cosine -1/(C-1)). Turn one off: "
            "--set lwr.enabled=false, or model.etf_classifier=false"
        )
    if etf and (cfg.stage2.mode != "none" or cfg.init.reset_classifier):
        raise ValueError(
            f"stage2.mode={cfg.stage2.mode} / init.reset_classifier="
            f"{str(cfg.init.reset_classifier).lower()} re-learn the classifier, but the ETF head "
            "is fixed: use model.etf_classifier=false for a stage-2 recipe"
        )
    if cfg.optim.max_norm is None:
        return
    if etf:
        raise ValueError(
            "optim.max_norm caps the classifier's row norms, but the ETF head's rows are fixed "
            "at unit norm: unset optim.max_norm (--set optim.max_norm=null)"
        )
    if cfg.model.cosine_classifier:
        raise ValueError(
            "optim.max_norm caps the classifier's row norms, but a cosine classifier normalises "
            "its rows, so the norms never reach the logits: unset optim.max_norm or use a "
            "linear head (model.cosine_classifier=false)"
        )
    if cfg.stage2.mode == "lws":
        raise ValueError(
            "optim.max_norm with stage2.mode=lws: LWS trains only per-class scales and keeps "
            "the classifier rows frozen, so MaxNorm would change frozen weights; unset one"
        )
