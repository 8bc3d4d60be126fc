"""`lwr presets`: the shipped recipes and sweep files as tables, filtered by a pattern."""

from __future__ import annotations

import fnmatch

from rich.table import Table

from lwrcli.config import TrainConfig, list_presets, load_config
from lwrcli.config.slots import slot_method


def loss_label(cfg: TrainConfig) -> str:
    """The loss with its settings and re-weighting, then the head and every trick that acts:
    each method says its own part (Method.describe)."""
    label = slot_method("loss", cfg.loss.name).describe(cfg.loss)
    if cfg.loss.reweight == "drw":
        label += f"-DRW@{cfg.loss.drw_epoch}"
    elif cfg.loss.reweight == "cb":
        label += "-CB"
    head = cfg.model.head
    # A linear or cosine head shows in the model column; another head is a method here.
    extras = (
        [] if head.name in ("linear", "cosine") else [slot_method("head", head.name).describe(head)]
    )
    extras += [m.describe(cfg.section(m.key)) for m in cfg.methods() if m.slot == "trick"]
    return ", ".join([label, *extras])


def model_label(cfg: TrainConfig) -> str:
    """The network, a cosine head, a structural variant: 'resnet32 (cosine)', 'resnet32 X'."""
    label = cfg.model.name + (" (cosine)" if cfg.model.cosine else "")
    if cfg.model.variant.name != "plain":
        label += " " + slot_method("variant", cfg.model.variant.name).describe(cfg.model.variant)
    return label


def lwr_label(cfg: TrainConfig) -> str:
    if not cfg.lwr.enabled:
        return "-"
    lw = cfg.lwr
    proj = ", proj" if lw.proj else ""
    lam = lw.lambda_max if lw.lambda_max == "auto" else f"{lw.lambda_max:g}"
    theta = lw.theta if isinstance(lw.theta, str) else f"{lw.theta:g}"
    return f"λ={lam} θ={theta}{proj}, {lw.schedule.kind}"


def matches(name: str, pattern: str | None) -> bool:
    """`lwr presets list PATTERN` (as `lwr models list`): a glob (cifar100-*-bs*) or a
    substring (ldam), case-insensitive."""
    if not pattern:
        return True
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatch(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def _title(what: str, n: int, pattern: str | None, hint: str) -> str:
    found = f"{n} {what}" + (f" matching '{pattern}'" if pattern else "")
    return f"{found} ({hint})"


def presets_table(pattern: str | None = None) -> Table:
    names = [n for n in list_presets() if matches(n, pattern)]
    hint = "lwr presets show NAME for the full config"
    table = Table(title=_title("presets", len(names), pattern, hint))
    table.add_column("preset", no_wrap=True)  # names are what users copy: never truncate
    for col in ("dataset", "model", "loss", "LWR", "epochs", "paper top-1"):
        table.add_column(col, overflow="fold")
    for name in names:
        cfg = load_config(preset=name)
        paper = cfg.reference.get("all")
        table.add_row(
            name,
            cfg.dataset,
            model_label(cfg),
            loss_label(cfg),
            lwr_label(cfg),
            str(cfg.epochs),
            f"{paper:.1f}" if paper is not None else "",
        )
    return table


def sweeps_table(pattern: str | None = None) -> Table:
    """The shipped sweep files (presets/sweeps/): runs = entries x grid points x seeds."""
    from lwrcli.studies.sweep import list_sweeps, load_sweep_file

    names = [n for n in list_sweeps() if matches(n, pattern)]
    hint = "lwr presets show NAME; lwr sweep --file NAME --data DIR --out DIR"
    table = Table(title=_title("sweeps", len(names), pattern, hint))
    table.add_column("sweep", no_wrap=True)
    for col in ("runs", "description"):
        table.add_column(col, overflow="fold")
    for name in names:
        spec = load_sweep_file(name)
        points = 1
        for values in spec.grid.values():
            points *= len(values)
        runs = len(spec.entries) * points * len(spec.seeds)
        paper = f" + {len(spec.paper_only)} paper only" if spec.paper_only else ""
        table.add_row(name, f"{runs}{paper}", spec.description)
    return table
