"""`lwr report`: run folders grouped by config -> mean ± std over seeds, deltas, paper numbers.

Reads only run folders (config.yaml, run.json, metrics.jsonl, eval/*/summary.json); never
trains or loads a model. Runs are grouped when their resolved configs differ only by seed
(name-only fields `reference` and `description`, and settings that do not act, such as λ with
LWR off, aside) and their prepared datasets have the same fingerprint. Unfinished runs are
listed and left out of every mean.

n counts seeds, not runs: runs of the same config and seed (a torchrun and a single-process
run of one recipe, a run copied twice) are not independent replicates. Each seed is counted
once, with its most recently finished run, and the others are named under the table.

Which checkpoint is scored: the epoch with the best validation top-1 when the run selected
on a validation split (as the engine's `best` checkpoint), else the last epoch. Selection on
the test split is never done here, whatever the run's `data.select_on` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lwrcli.config import migrate, validate_config
from lwrcli.config.slots import methods_of
from lwrcli.errors import UserError
from lwrcli.runtime.runname import run_name, sweep_root
from lwrcli.studies import paper_rows

METRICS = ("top1", "many", "medium", "few", "top5")
HEADERS = {"top1": "All", "many": "Many", "medium": "Medium", "few": "Few", "top5": "Top-5"}
# Keys (a key or a whole section) that do not change what a run trains: its name-only fields,
# where it is logged, how often it saves or logs, and how fast it runs (workers, devices, the
# speed settings). Runs that differ only in these group together, and labels never name them.
NOT_SETTINGS = (
    "seed",
    "reference",
    "description",
    "log",
    "log_every",
    "save_every",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
    "eval_batch_size",
    "device",
    "dist_timeout_minutes",
    "channels_last",
    "compile",
    "compile_mode",
    "data.num_workers",
    "data.gpu_decode",
)
# A label longer than this names the groups by their presets instead of every differing key.
LABEL_MAX = 40
SHORT = {"lwr.theta": "θ", "lwr.lambda_max": "λ_max", "lwr.enabled": "lwr", "loss.name": "loss"}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    fingerprint: str
    complete: bool
    scored: dict[str, float | None] = field(default_factory=dict)
    checkpoint: str = "last"
    scored_epoch: int | None = None  # the epoch whose record was scored

    @property
    def epochs(self) -> int:
        return int(self.config.get("epochs", 0))


@dataclass
class Group:
    key: str
    runs: list[Run]
    label: str = ""
    stats: dict[str, dict[str, float | None]] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    # Runs left out because another run of the same seed finished later: (kept, left out).
    duplicates: list[tuple[Run, Run]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "reference":
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (those holding config.yaml) under each given sweep or run folder."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise UserError(f"{p} is not a folder; give sweep or run folders to report on.")
        runs = sorted({c.parent for c in p.rglob("config.yaml")})
        if not runs:
            raise UserError(f"{p} holds no run folder (no config.yaml below it).")
        found += [r for r in runs if r not in found]
    return found


def read_run(path: Path) -> Run:
    config = as_resolved(yaml.safe_load((path / "config.yaml").read_text()) or {})
    info_path = path / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    metrics = path / "metrics.jsonl"
    records = []
    if metrics.is_file():
        records = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    done = bool(records) and records[-1]["epoch"] >= int(config.get("epochs", 0))
    return Run(path, config, records, info.get("dataset_fingerprint", "unknown"), done)


def as_resolved(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.yaml in today's format, its lr at the run's batch size as today's
    resolve step records it (runs of older versions recorded the recipe's lr and batch), so
    the same recipe groups with itself whichever version ran it."""
    config = migrate(config)
    optim = config.get("optim")
    try:
        lr = validate_config(config).effective_lr
    except UserError:  # a method of a plugin that is not installed: compare as written
        return config
    if isinstance(optim, dict):
        config["optim"] = {**optim, "lr": lr, "base_batch_size": config.get("batch_size")}
    return config


def score(run: Run, split: str) -> None:
    """Fill run.scored/checkpoint: best validation epoch when the run has one, else the last."""
    select_val = run.config.get("data", {}).get("select_on") == "val"
    evaluated = [r for r in run.records if r.get("val_top1") is not None]
    if select_val and evaluated:
        best = evaluated[0]
        for r in evaluated[1:]:
            if r["val_top1"] > best["val_top1"]:  # the first best, as the engine keeps it
                best = r
        record, run.checkpoint = best, f"best on val (epoch {best['epoch']})"
    else:
        record, run.checkpoint = run.records[-1], "last"
    run.scored = {m: record.get(f"{split}_{m}") for m in METRICS}
    run.scored_epoch = record.get("epoch")
    if run.scored["top1"] is None and run.checkpoint == "last":
        # `lwr eval`'s default folder of the last checkpoint on this split (lwrcli.use.evaluate)
        name = "last" if split == "test" else f"last-{split}"
        summary = run.path / "eval" / name / "summary.json"
        if summary.is_file():
            s = json.loads(summary.read_text())
            if s.get("split") == split:
                run.scored = {m: s.get(m) for m in METRICS}


# Core settings that act only when another setting has a value: prefix -> (switch, values).
# A method's own settings: the method says which act (Method.acting).
CONDITIONAL = {
    "lwr.": ("lwr.enabled", (True,)),
    "loss.drw_epoch": ("loss.reweight", ("drw",)),
    "loss.beta": ("loss.reweight", ("cb", "drw")),
}


def acting(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened settings that change what a run trains: name-only fields and settings
    switched off by another (λ and θ without LWR, a trick's settings while it is off) left
    out. `config` is a run's config.yaml in the current format (lwrcli.config.migrate)."""
    config = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    config = _without_inert(config)
    for key, method in trick_methods().items():
        section = config.get(key)
        if isinstance(section, dict):
            keep = method.acting(section)
            config[key] = {k: v for k, v in section.items() if k in keep}
    flat = flatten(config)
    out = {}
    for key, value in flat.items():
        rule = next((r for p, r in CONDITIONAL.items() if key.startswith(p)), None)
        if rule is not None and key != rule[0] and flat.get(rule[0]) not in rule[1]:
            continue
        out[key] = value
    return out


def _without_inert(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without the dotted NOT_SETTINGS inside its sections (data.num_workers)."""
    out = dict(config)
    for dotted in (k for k in NOT_SETTINGS if "." in k):
        section, key = dotted.split(".", 1)
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def trick_methods() -> dict[str, Any]:
    """Top-level config key -> the registered trick that owns the section."""
    return {m.key: m for m in methods_of("trick").values()}


def _seedless(settings: dict[str, Any]) -> dict[str, Any]:
    """A stage-2 run of a sweep starts from its own seed's stage 1 (`init_from`): its
    `init.checkpoint` differs by seed only, in the `seed=N` folder, which is not a setting."""
    path = settings.get("init.checkpoint")
    if isinstance(path, str):
        parts = ["seed=*" if part.startswith("seed=") else part for part in Path(path).parts]
        settings = {**settings, "init.checkpoint": str(Path(*parts))}
    return settings


def _group_key(run: Run) -> str:
    settings = _seedless({k: v for k, v in acting(run.config).items() if k != "name"})
    return run.fingerprint + "|" + json.dumps(settings, sort_keys=True)


def _finished_at(run: Run) -> float:
    """When the run wrote its last epoch (metrics.jsonl's modification time)."""
    path = run.path / "metrics.jsonl"
    return path.stat().st_mtime if path.is_file() else 0.0


def one_run_per_seed(group: Group) -> None:
    """Keep each seed's most recently finished run; the others become `group.duplicates`."""
    by_seed: dict[Any, list[Run]] = {}
    for run in group.runs:
        by_seed.setdefault(run.config.get("seed"), []).append(run)
    kept = []
    for same in by_seed.values():
        same.sort(key=_finished_at, reverse=True)
        kept.append(same[0])
        group.duplicates += [(same[0], other) for other in same[1:]]
    group.runs = sorted(kept, key=lambda r: str(r.path))


def _value(key: str, v: Any) -> str:
    if key == "lwr.enabled":
        return "on" if v else "off"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _sweep_label(group: Group) -> str | None:
    """The group's name in its sweep (`wb+lwr`, `bs-lwr/theta=0.4`): its runs' names there
    without the seed, when they all share one."""
    names = {run_name(r.path) for r in group.runs}
    stems = {n.rsplit("/seed=", 1)[0] for n in names if "/seed=" in n}
    return stems.pop() if len(stems) == 1 and len(names) == len(group.runs) else None


def label_groups(groups: list[Group]) -> None:
    """Name each group by its entry name when every group is a sweep entry (`wb+lwr`), else by
    the settings in which the groups differ (θ=0.4, loss=bs, lwr=on)."""
    named = [_sweep_label(g) for g in groups]
    if all(named):
        for g, name in zip(groups, named):
            g.label = str(name)
            if named.count(name) > 1:  # one entry of two sweeps, e.g. from other stage-1 runs
                roots = {str(sweep_root(r.path).name) for r in g.runs}  # type: ignore[union-attr]
                g.label += f" ({', '.join(sorted(roots))})"
        return
    labels = _setting_labels(groups)
    names = [str(g.config.get("name", g.runs[0].path.name)) for g in groups]
    if max(map(len, labels)) > LABEL_MAX and len(set(names)) > 1:
        # Runs of different recipes: their names, then what differs among runs of one recipe.
        short = dict(zip(names, _shared_prefix_dropped(names)))
        for name in set(names):
            same = [g for g, n in zip(groups, names) if n == name]
            extra = _setting_labels(same, named=False) if len(same) > 1 else [""]
            for g, more in zip(same, extra):
                g.label = ", ".join(p for p in (short[name], more) if p)
    else:
        for g, label in zip(groups, labels):
            g.label = label
    labels = [g.label for g in groups]
    for g in groups:
        if labels.count(g.label) > 1:
            g.label += f" [{g.config.get('name')}, data {g.runs[0].fingerprint[:8]}]"


def _setting_labels(groups: list[Group], named: bool = True) -> list[str]:
    """Each group named by the acting settings in which the groups differ (θ=0.4, loss=bs);
    a group with none of them by its config name (`named`) or ''."""
    flat = [_seedless(acting(g.config)) for g in groups]
    keys = sorted({k for f in flat for k in f})
    # Compared only among the groups where the setting acts.
    differ = [
        k for k in keys if len({json.dumps(f[k]) for f in flat if k in f}) > 1 and k != "name"
    ]
    labels = []
    for g, f in zip(groups, flat):
        # A setting that does not act in this group (λ with LWR off) is not named.
        parts = [f"{SHORT.get(k, k.split('.')[-1])}={_value(k, f[k])}" for k in differ if k in f]
        name = str(g.config.get("name", g.runs[0].path.name)) if named else ""
        labels.append(", ".join(parts) or name)
    return labels


def _shared_prefix_dropped(names: list[str]) -> list[str]:
    """Preset names without the dash-separated words they all start with (the dataset):
    cifar100-lt-ir100-bs, cifar100-lt-ir100-ldam-drw -> bs, ldam-drw."""
    tokens = [n.split("-") for n in set(names)]
    k = 0
    while k < min(len(t) for t in tokens) - 1 and len({t[k] for t in tokens}) == 1:
        k += 1
    return ["-".join(n.split("-")[k:]) for n in names]


def summarize_group(group: Group) -> None:
    for m in METRICS:
        vals = np.array([r.scored[m] for r in group.runs if r.scored.get(m) is not None], float)
        n = len(vals)
        group.stats[m] = {
            "mean": float(vals.mean()) if n else None,
            "std": float(vals.std(ddof=1)) if n > 1 else None,
            "n": n,
        }


def build_report(paths: list[Path], split: str = "test", baseline: str | None = None) -> dict:
    """Everything `lwr report` prints and writes, as one JSON-ready dict (+ the groups)."""
    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'.")
    run_dirs = find_runs(paths)
    runs = [read_run(p) for p in run_dirs]
    incomplete = [r for r in runs if not r.complete]
    complete = [r for r in runs if r.complete]
    by_key: dict[str, Group] = {}
    for r in complete:
        score(r, split)
        by_key.setdefault(_group_key(r), Group(_group_key(r), [])).runs.append(r)
    groups = list(by_key.values())
    for g in groups:
        one_run_per_seed(g)
    if groups:
        label_groups(groups)
    for g in groups:
        summarize_group(g)
    paper = paper_rows.find_rows(paths, run_dirs)  # never groups: no baseline, no runs
    base = _pick_baseline(groups, baseline, paper)
    for g in groups:
        same_data = base is not None and g.runs[0].fingerprint == base.runs[0].fingerprint
        for m in METRICS:
            a, b = g.stats[m]["mean"], base.stats[m]["mean"] if base else None
            g.delta[m] = a - b if (same_data and a is not None and b is not None) else None
    return {
        "split": split,
        "baseline": base.label if base else None,
        "groups": groups,
        "incomplete": [
            {
                "path": str(r.path),
                "epochs_done": r.records[-1]["epoch"] if r.records else 0,
                "epochs": r.epochs,
            }
            for r in incomplete
        ],
        "paper_only": paper,
    }


def _pick_baseline(groups: list[Group], name: str | None, paper: list[dict]) -> Group | None:
    """--baseline matches a group label, a config name or a run folder; by default the first
    group without LWR (None when every group has it). Never a paper-only row."""
    if name is not None and name in {r["name"] for r in paper} | set(map(paper_rows.label, paper)):
        raise UserError(
            f"--baseline '{name}' is a paper-only row ({paper_rows.MARK}): it has no runs to "
            f"compare against; choose a trained group: {'; '.join(g.label for g in groups)}."
        )
    if name is None:
        return next((g for g in groups if not g.config.get("lwr", {}).get("enabled")), None)
    for g in groups:
        if name in (g.label, g.config.get("name")) or any(
            name in (r.path.name, str(r.path)) or f"/{name}/" in f"{r.path}/" for r in g.runs
        ):
            return g
    raise UserError(
        f"--baseline '{name}' matches no group; groups: {'; '.join(g.label for g in groups)}."
    )


# ---------------------------------------------------------------------------------------------
# Output
