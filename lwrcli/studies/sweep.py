"""`lwr sweep`: presets x grid values x seeds -> one ordinary run folder per combination.

The sweep is planned in full (every config validated, every name fixed) before anything is
written, recorded in SWEEP_DIR/sweep.json, and then executed run by run. A re-run of the same
command skips finished runs and resumes interrupted ones; a different command is refused, so
one folder never mixes two sweeps. Parallel subprocesses and cluster scripts: sweep_launch.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lwrcli.config import TrainConfig, load_config, read_yaml
from lwrcli.data.loading import check_dataset_matches
from lwrcli.data.manifest import read_manifest
from lwrcli.errors import UserError
from lwrcli.runtime.files import write_atomic
from lwrcli.runtime.runname import SWEEP_FILE
from lwrcli.studies.paper_rows import PaperRow, check_rows, record_rows, same_runs

# Recipe names start with their dataset; a lone preset is named by what follows it.
DATASET_PREFIX = re.compile(r"^(cifar\d+-lt-ir\d+|imagenet-lt|places-lt|inat2018|synthetic-lt)-")


class Entry(BaseModel):
    """One row of a sweep: a preset (or config file) with its own overrides and paper numbers."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = None
    config: str | None = None
    name: str | None = None
    set: list[str] = Field(default_factory=list)
    reference: dict[str, float] = Field(default_factory=dict)
    data: str | None = None  # a key of `--data KEY=PATH` (e.g. the IF table's ir50)
    # The name of an earlier entry: each run starts from that entry's run with the same grid
    # point and seed (`init.checkpoint` = its last checkpoint), so a stage-2 recipe (cRT, weight
    # balancing's MaxNorm stage, MiSLAS) follows its own stage 1 inside one sweep.
    init_from: str | None = None


class Reference(BaseModel):
    """Paper numbers for the grid points whose values match `where` (e.g. lwr.theta: 0.4)."""

    model_config = ConfigDict(extra="forbid")
    where: dict[str, Any]
    reference: dict[str, float]


class SweepSpec(BaseModel):
    """What a sweep file holds (presets/sweeps/*.yaml) and what the command line builds."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    entries: list[Entry]
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    set: list[str] = Field(default_factory=list)
    references: list[Reference] = Field(default_factory=list)
    # Methods lwr does not train, with their published numbers (lwrcli/paper_rows.py).
    paper_only: list[PaperRow] = Field(default_factory=list)


@dataclass
class PlannedRun:
    name: str  # relative folder, e.g. bs-lwr/theta=0.4/seed=1
    preset: str | None
    config: str | None
    overrides: list[str]
    data: Path
    cfg: TrainConfig = field(repr=False)
    data_key: str = ""  # the entry's `data` key ('' for plain --data)
    # The run (folder name) whose last checkpoint this one starts from: it must finish first.
    after: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "preset": self.preset,
            "config": self.config,
            "overrides": self.overrides,
            "data": str(self.data),
        }


# ---------------------------------------------------------------------------------------------
# Parsing


def split_values(raw: str) -> list[str]:
    """'0.1,0.2' -> ['0.1', '0.2']; commas inside [...] or {...} stay (milestones=[1,2],[3,4])."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out if v.strip()]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--grid expects key=v1,v2,... (e.g. lwr.theta=0.2,0.4), got '{item}'.")
        key, raw = item.split("=", 1)
        values = [yaml.safe_load(v) for v in split_values(raw)]
        if not key.strip() or not values:
            raise UserError(f"--grid '{item}' needs a key and at least one value.")
        grid[key.strip()] = values
    return grid


def parse_seeds(raw: str | None) -> list[int] | None:
    if raw is None:
        return None
    try:
        seeds = [int(s) for s in split_values(raw)]
    except ValueError:
        raise UserError(f"--seeds expects integers separated by commas, got '{raw}'.") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs distinct non-negative integers, got '{raw}'.")
    return seeds


def sweeps_dir() -> Path:
    from lwrcli.config import presets_dir

    return presets_dir() / "sweeps"


def list_sweeps() -> list[str]:
    folder = sweeps_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_sweep_file(path_or_name: str) -> SweepSpec:
    """A sweep file by path, or a shipped one by name (presets/sweeps/NAME.yaml)."""
    path = Path(path_or_name)
    if not path.is_file():
        shipped = sweeps_dir() / f"{path_or_name.removesuffix('.yaml')}.yaml"
        if not shipped.is_file():
            raise UserError(
                f"Sweep file '{path_or_name}' not found; shipped sweeps: "
                f"{', '.join(list_sweeps())}."
            )
        path = shipped
    try:
        return SweepSpec.model_validate(read_yaml(path))
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UserError(f"Invalid sweep file {path}: {msg}.") from None


def build_spec(
    presets: list[str],
    configs: list[str],
    file: str | None,
    seeds: str | None,
    grid: list[str] | None,
    overrides: list[str] | None,
) -> SweepSpec:
    """The sweep from the command line: a sweep file (--seeds and --set still apply) or
    --preset/--config entries with --grid values."""
    if file is not None:
        if presets or configs or grid:
            raise UserError(
                "--file takes the presets and grid from the sweep file; drop "
                "--preset, --config and --grid (or leave out --file)."
            )
        spec = load_sweep_file(file)
    else:
        entries = [Entry(preset=p) for p in presets] + [Entry(config=c) for c in configs]
        spec = SweepSpec(entries=entries, grid=parse_grid(grid or []))
    chosen = parse_seeds(seeds)
    if chosen is not None:
        spec.seeds = chosen
    spec.set = [*spec.set, *(overrides or [])]
    return spec


def parse_data(items: list[str]) -> dict[str, Path]:
    """--data DIR (every entry) and --data KEY=DIR (entries of a sweep file with `data: KEY`)."""
    out: dict[str, Path] = {}
    for item in items:
        key, _, path = item.partition("=")
        if not path or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            key, path = "", item
        out[key] = Path(path).resolve()
    return out


# ---------------------------------------------------------------------------------------------
# Planning


def _value_text(value: Any) -> str:
    """A value as it appears in a --set item and a folder name (JSON is valid YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def _entry_labels(entries: list[Entry]) -> list[str]:
    """Short readable names: drop the dash-separated prefix that all presets share."""
    stems = [e.name or e.preset or Path(e.config or "config").stem for e in entries]
    if len(entries) == 1:
        return [e.name or DATASET_PREFIX.sub("", stems[0]) for e in entries]
    tokens = [s.split("-") for s in stems]
    k = 0
    while k < min(len(t) for t in tokens) - 1 and len({t[k] for t in tokens}) == 1:
        k += 1
    return [e.name or "-".join(t[k:]) for e, t in zip(entries, tokens)]


def _grid_labels(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _grid_points(grid: dict[str, list[Any]]) -> list[list[tuple[str, Any]]]:
    points: list[list[tuple[str, Any]]] = [[]]
    for key, values in grid.items():
        points = [p + [(key, v)] for p in points for v in values]
    return points


def _init_source(entry: Entry, label: str, earlier: list[str]) -> str | None:
    """The label of the entry whose runs `entry` starts from (checked: an earlier entry)."""
    if entry.init_from is None:
        return None
    if entry.init_from not in earlier:
        raise UserError(
            f"Sweep entry '{label}' starts from '{entry.init_from}' (init_from), which is not an "
            f"earlier entry of the sweep; earlier entries: {', '.join(earlier) or 'none'}."
        )
    return entry.init_from


def plan_sweep(spec: SweepSpec, data: dict[str, Path], out: Path | None = None) -> list[PlannedRun]:
    """Every run of the sweep, validated; raises UserError before anything is written.
    `out` (the sweep folder) locates the stage-1 checkpoints of `init_from` entries."""
    if not spec.entries:
        raise UserError("A sweep needs at least one --preset, --config or sweep-file entry.")
    labels = _entry_labels(spec.entries)
    root = out.resolve() if out is not None else Path("SWEEP_DIR")
    grid_names = _grid_labels(list(spec.grid))
    manifests: dict[Path, Any] = {}
    runs: list[PlannedRun] = []
    for i, (entry, label) in enumerate(zip(spec.entries, labels)):
        source = _init_source(entry, label, labels[:i])
        if (entry.preset is None) == (entry.config is None):
            raise UserError(f"Sweep entry '{label}' needs exactly one of preset or config.")
        key = entry.data or ""
        if key not in data:
            given = ", ".join(k or "(plain --data)" for k in data) or "none"
            raise UserError(
                f"Sweep entry '{label}' needs --data {key + '=' if key else ''}PATH; "
                f"given: {given}."
            )
        data_dir = data[key]
        for point in _grid_points(spec.grid):
            ref = next(
                (r.reference for r in spec.references if all(p in point for p in r.where.items())),
                entry.reference,
            )
            for seed in spec.seeds:
                name, after = _run_name(label, point, grid_names, seed), None
                overrides = [*spec.set, *entry.set, *(f"{k}={_value_text(v)}" for k, v in point)]
                if source is not None:
                    after = _run_name(source, point, grid_names, seed)
                    init = root / after / "checkpoints" / "last.safetensors"
                    overrides.append(f"init.checkpoint={init}")
                if ref:
                    overrides.append(f"reference={json.dumps(ref)}")
                overrides.append(f"seed={seed}")
                path = Path(entry.config) if entry.config else None
                cfg = load_config(entry.preset, path, overrides)
                if data_dir not in manifests:
                    manifests[data_dir] = read_manifest(data_dir)
                check_dataset_matches(cfg, manifests[data_dir], data_dir)
                runs.append(
                    PlannedRun(
                        name, entry.preset, entry.config, overrides, data_dir, cfg, key, after
                    )
                )
    names = [r.name for r in runs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise UserError(
            f"Two runs of the sweep would share the folder '{dup}'; give entries names."
        )
    check_rows(spec.paper_only, [e.data or "" for e in spec.entries])
    return runs


def _run_name(
    label: str, point: list[tuple[str, Any]], grid_names: dict[str, str], seed: int
) -> str:
    """A run's folder inside the sweep, e.g. bs-lwr/theta=0.4/seed=1."""
    parts = [label, *(f"{grid_names[k]}={_value_text(v)}" for k, v in point)]
    return "/".join(p.replace("/", "_") for p in parts) + f"/seed={seed}"


def sweep_record(spec: SweepSpec, runs: list[PlannedRun]) -> dict[str, Any]:
    # Paper-only rows sit beside the command, and only when there are some, so that records
    # written before they existed still match the same command.
    command = spec.model_dump(mode="json", exclude={"paper_only"})
    for entry in command["entries"]:  # likewise `init_from`, where no entry uses it
        if entry.get("init_from") is None:
            entry.pop("init_from", None)
    record = {"command": command, "runs": [r.record() for r in runs]}
    if spec.paper_only:
        record["paper_only"] = record_rows(spec.paper_only, runs)
    return record


def check_or_write_record(out: Path, record: dict[str, Any]) -> None:
    """First use: write sweep.json. Later: refuse (nothing changed) unless the command matches;
    changed paper-only rows alone (they train nothing) are taken into the record."""
    path = out / SWEEP_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if not same_runs(old, record):
            diff = [
                k
                for k in record["command"]
                if old.get("command", {}).get(k) != record["command"][k]
            ]
            what = ", ".join(diff) or "the runs (data folders or presets)"
            raise UserError(
                f"{out} holds a different sweep ({SWEEP_FILE} differs in: {what}); nothing was "
                "changed. Re-run the original command to continue it, or choose a new --out."
            )
        if old == record:
            return
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists, is not empty and has no {SWEEP_FILE}; choose a new --out.")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# State of a run folder
