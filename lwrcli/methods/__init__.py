"""Methods as registered units: each loss, head, model variant and training trick is one
module here that declares its config section, rules, builders and label (lwrcli.methods.base).

The built-in list is written out below, in the order their hooks run (MaxNorm's projection
before the EMA update, mixing before smoothing). Outside packages add theirs through the
`lwr.plugins` entry point (lwrcli.registry.load_plugins, docs/plugins.md), with
`register_method`.
"""

from lwrcli.methods import (
    balanced_softmax,
    balpoe,
    bbn,
    bcl,
    ce,
    dot_regression,
    ema,
    etf,
    experts,
    focal,
    ib,
    label_smoothing,
    ldam,
    logit_adjustment,
    maxnorm,
    mixing,
    paco,
    ride,
    sade,
    seql,
    stage2,
    standard,
)
from lwrcli.methods.base import Method, RunParts, register_method
from lwrcli.methods.losses import CountsLoss, LossMethod

BUILTIN: list[Method] = [
    # slots: the network's variant, its head, the loss
    standard.PLAIN,
    bbn.METHOD,
    experts.METHOD,
    standard.LINEAR,
    standard.COSINE,
    etf.METHOD,
    ce.METHOD,
    focal.METHOD,
    ldam.METHOD,
    balanced_softmax.METHOD,
    logit_adjustment.METHOD,
    ib.METHOD,
    seql.METHOD,
    dot_regression.METHOD,
    ride.METHOD,
    sade.METHOD,
    balpoe.METHOD,
    paco.METHOD,
    paco.GPACO,
    bcl.METHOD,
    # training tricks, in the order their hooks run
    stage2.METHOD,
    maxnorm.METHOD,
    mixing.METHOD,
    label_smoothing.METHOD,
    ema.METHOD,
]


def register_builtin() -> None:
    """Called once by lwrcli.registry.load_plugins, before any plugin."""
    for method in BUILTIN:
        register_method(method)


__all__ = ["BUILTIN", "CountsLoss", "LossMethod", "Method", "RunParts", "register_method"]
