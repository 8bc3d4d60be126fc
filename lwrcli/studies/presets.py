"""`lwr presets`: the shipped recipes as a table."""

from __future__ import annotations

from rich.table import Table

from lwrcli.config.schema import TrainConfig, list_presets, load_config

LOSS_NAMES = {
    "ce": "CE",
    "focal": "Focal",
    "ldam": "LDAM",
    "bs": "BalancedSoftmax",
    "la": "LA",
    "ib": "IB",
    "seql": "SEQL",
    "dr": "DR",
}


def loss_label(cfg: TrainConfig) -> str:
    label = LOSS_NAMES[cfg.loss.name]
    if cfg.loss.name == "focal":
        label += f" (γ={cfg.loss.focal_gamma:g})"
    if cfg.loss.name == "la":
        label += f" (τ={cfg.loss.la_tau:g})"
    if cfg.loss.name == "ib":
        label += f" (α={cfg.loss.ib_alpha:g} from {cfg.loss.ib_start_epoch})"
    if cfg.loss.name == "seql":
        label += f" (γ={cfg.loss.seql_gamma:g}, λ={cfg.loss.seql_lambda:g})"
    if cfg.loss.reweight == "drw":
        label += f"-DRW@{cfg.loss.drw_epoch}"
    elif cfg.loss.reweight == "cb":
        label += "-CB"
    if cfg.model.etf_classifier:
        label += ", fixed ETF head"
    if cfg.optim.max_norm is not None:
        label += f", MaxNorm {cfg.optim.max_norm:g}" + (
            " (relative)" if cfg.optim.max_norm_mode == "relative" else ""
        )
    return label


def lwr_label(cfg: TrainConfig) -> str:
    if not cfg.lwr.enabled:
        return "-"
    lw = cfg.lwr
    proj = ", proj" if lw.proj else ""
    lam = lw.lambda_max if lw.lambda_max == "auto" else f"{lw.lambda_max:g}"
    theta = lw.theta if isinstance(lw.theta, str) else f"{lw.theta:g}"
    return f"λ={lam} θ={theta}{proj}, {lw.schedule.kind}"


def presets_table() -> Table:
    table = Table(title="lwr presets (lwr presets show NAME for the full config)")
    table.add_column("preset", no_wrap=True)  # names are what users copy: never truncate
    for col in ("dataset", "model", "loss", "LWR", "epochs", "paper top-1"):
        table.add_column(col, overflow="fold")
    for name in list_presets():
        cfg = load_config(preset=name)
        paper = cfg.reference.get("all")
        table.add_row(
            name,
            cfg.dataset,
            cfg.model.name
            + (" (cosine)" if cfg.model.cosine_classifier else "")
            + (" BBN" if cfg.model.bbn else ""),
            loss_label(cfg),
            lwr_label(cfg),
            str(cfg.epochs),
            f"{paper:.1f}" if paper is not None else "",
        )
    return table


def sweeps_table() -> Table:
    """The shipped sweep files (presets/sweeps/): runs = entries x grid points x seeds."""
    from lwrcli.studies.sweep import list_sweeps, load_sweep_file

    table = Table(title="lwr sweeps (lwr sweep --file NAME --data DIR --out DIR)")
    table.add_column("sweep", no_wrap=True)
    for col in ("runs", "description"):
        table.add_column(col, overflow="fold")
    for name in list_sweeps():
        spec = load_sweep_file(name)
        points = 1
        for values in spec.grid.values():
            points *= len(values)
        runs = len(spec.entries) * points * len(spec.seeds)
        paper = f" + {len(spec.paper_only)} paper only" if spec.paper_only else ""
        table.add_row(name, f"{runs}{paper}", spec.description)
    return table
