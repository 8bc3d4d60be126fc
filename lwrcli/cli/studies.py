"""The study commands of `lwr`: sweeps over presets, grids and seeds, reports over runs, and
the listings of presets and backbones. Plain typed functions, registered by lwrcli.cli.main."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lwrcli.cli.console import err_console, out_console
from lwrcli.cli.console import fail as _fail
from lwrcli.errors import UserError


def sweep(
    data: Annotated[
        list[str], typer.Option("--data", help="Prepared dataset, or KEY=DIR for sweep files.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Sweep folder (one run folder per run).")],
    preset: Annotated[list[str] | None, typer.Option("--preset", help="A shipped recipe.")] = None,
    config: Annotated[list[Path] | None, typer.Option("--config", help="A YAML config.")] = None,
    file: Annotated[
        str | None, typer.Option("--file", help="A sweep file (or a shipped sweep's name).")
    ] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="e.g. 0,1,2 (default 0).")] = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help="key=v1,v2,... e.g. lwr.theta=0.2,0.4.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key in every run.")
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", min=1, help="Runs at a time, as subprocesses.")
    ] = 1,
    plan: Annotated[bool, typer.Option("--plan", help="Only write plan.sh.")] = False,
    slurm: Annotated[bool, typer.Option("--slurm", help="Only write sweep.sbatch.")] = False,
    gpus_per_run: Annotated[
        int, typer.Option("--gpus-per-run", min=1, help="--plan/--slurm: torchrun ranks.")
    ] = 1,
) -> None:
    """Presets x grid values x seeds into SWEEP_DIR; re-run to continue; --plan/--slurm."""
    from lwrcli.studies import sweep_launch
    from lwrcli.studies.sweep import build_spec, parse_data, plan_sweep
    from lwrcli.studies.sweep_run import run_sweep
    from lwrcli.train.engine import Interrupted
    from lwrcli.train.live_log import sweep_group

    spec = build_spec(preset or [], [str(c) for c in config or []], file, seeds, grid, overrides)
    runs = plan_sweep(spec, parse_data(data), out)
    if spec.paper_only:  # recorded in sweep.json for `lwr report`; nothing to train
        names = ", ".join(r.name for r in spec.paper_only)
        err_console.print(f"Paper-only rows (not trained here): {names}.", highlight=False)
    if plan or slurm:
        for flag, writer in (
            ("plan", sweep_launch.write_plan),
            ("slurm", sweep_launch.write_slurm),
        ):
            if (plan, slurm)[flag == "slurm"]:
                path = writer(out, spec, runs, gpus_per_run)
                err_console.print(f"Wrote {path} ({len(runs)} runs).", highlight=False)
        return
    try:
        # Live logging groups the runs (MLflow parent run, W&B group), subprocesses included.
        warn = functools.partial(err_console.print, highlight=False)
        with sweep_group(out, [r.cfg for r in runs], warn=warn):
            if parallel > 1:
                counts = sweep_launch.run_parallel(out, spec, runs, parallel)
            else:
                counts = run_sweep(out, spec, runs)
    except Interrupted as exc:  # lwrcli.cli.main says it (not as an error) with the command
        if exc.sweep is None:
            exc.sweep = "Sweep stopped; each run was saved where it stood."
        raise
    done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    err_console.print(f"Sweep of {len(runs)} runs in {out}: {done}.", highlight=False)
    if counts.get("failed"):
        _fail(f"{counts['failed']} runs failed; see {out / 'logs'}.", 1)


def report(
    dirs: Annotated[list[Path], typer.Argument(help="Sweep or run folders.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the table, JSON and plots.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="Group (label, preset or run) for deltas.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="test or val.")] = "test",
    fmt: Annotated[str, typer.Option("--format", help="md, csv, latex or json.")] = "md",
    svg: Annotated[bool, typer.Option("--svg", help="Also write SVG plots.")] = False,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="One self-contained page: table, curves, per-class accuracy, geometry.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what --out holds, or the --html file.")
    ] = False,
) -> None:
    """Runs grouped by config: mean ± std over seeds, deltas, paper numbers, curves;
    --html: the whole study as one page that opens offline."""
    from lwrcli.runtime.results import check_results_folder
    from lwrcli.studies.report import build_report
    from lwrcli.studies.report_render import render, write_outputs
    from lwrcli.use.html_page import check_html_path

    if out is not None:  # before the runs are read: a folder with results is refused now
        check_results_folder(out, overwrite, dirs)
    if html is not None:
        check_html_path(html, overwrite, dirs)
    result = build_report(list(dirs), split, baseline)
    if not result["groups"]:
        raise UserError(
            f"No finished run to report in {', '.join(map(str, dirs))} "
            f"({len(result['incomplete'])} unfinished)."
        )
    out_console.file.write(render(result, fmt))
    if fmt != "md":
        from lwrcli.studies.report_render import notes

        err_console.print(notes(result), highlight=False)
    if out is not None:
        written = write_outputs(result, out, fmt, svg, overwrite, dirs)
        err_console.print(f"Wrote {', '.join(p.name for p in written)} in {out}", highlight=False)
    if html is not None:
        from lwrcli.studies.report_html import write_report_html

        write_report_html(result, html, overwrite, dirs)
        err_console.print(f"Wrote {html}", highlight=False)


def presets_list(
    pattern: Annotated[
        str | None,
        typer.Argument(help="Glob (cifar100-*-bs*) or substring (ldam) of the name."),
    ] = None,
) -> None:
    """Shipped presets (dataset, model, loss, LWR, epochs) and sweep files, all or those
    whose name matches PATTERN."""
    from lwrcli.studies.presets import presets_table, sweeps_table

    # Off a terminal (pipes, CI) rich assumes 80 columns; give the table room instead.
    console = out_console if out_console.is_terminal else Console(width=160)
    presets, sweeps = presets_table(pattern), sweeps_table(pattern)
    if not presets.row_count and not sweeps.row_count:
        from lwrcli.config import list_presets
        from lwrcli.errors import did_you_mean
        from lwrcli.studies.sweep import list_sweeps

        guess = did_you_mean(str(pattern), [*list_presets(), *list_sweeps()])
        raise UserError(
            f"No preset or sweep file name matches '{pattern}'.{guess} PATTERN is a glob "
            "(cifar100-*-bs*) or a substring (ldam); 'lwr presets list' shows them all."
        )
    for table in (presets, sweeps):
        if table.row_count:
            console.print(table)


def presets_show(
    name: Annotated[str | None, typer.Argument(help="Preset (or sweep file) name.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A YAML config or recipe instead of a preset.")
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set loss.name=la.")
    ] = None,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff",
            help="Only the recipe's keys (along its _base_ chain): what differs from the defaults.",
        ),
    ] = False,
) -> None:
    """The full, validated config of a preset or config file (YAML), with any --set applied;
    --diff: only what the recipe (and --set) sets. A sweep file's NAME: the file itself."""
    from lwrcli.config import (
        apply_override,
        config_to_yaml,
        list_presets,
        load_config,
        parse_override,
        preset_path,
        read_recipe,
    )
    from lwrcli.config.files import recipe_to_yaml
    from lwrcli.errors import did_you_mean
    from lwrcli.studies.sweep import list_sweeps, load_sweep_file, sweeps_dir

    if (name is None) == (config is None):
        raise UserError("Give a preset NAME or --config FILE (one of them).")
    if name is not None and name not in list_presets():
        sweeps = list_sweeps()
        if name.removesuffix(".yaml") not in sweeps:
            names = [*list_presets(), *sweeps]
            raise UserError(
                f"Unknown preset or sweep file '{name}'.{did_you_mean(name, names)} "
                "Run 'lwr presets list PATTERN' to find one."
            )
        if sets or diff:
            raise UserError(
                f"'{name}' is a sweep file: --set and --diff apply to presets. Its runs take "
                f"--set through 'lwr sweep --file {name} --set KEY=VALUE'."
            )
        load_sweep_file(name)  # validated, as a preset is
        out_console.file.write((sweeps_dir() / f"{name.removesuffix('.yaml')}.yaml").read_text())
        return
    cfg = load_config(preset=name, config_file=config, overrides=sets)  # validated either way
    if not diff:
        out_console.file.write(config_to_yaml(cfg))
        return
    recipe = read_recipe(preset_path(name) if name is not None else config)  # type: ignore[arg-type]
    for item in sets or []:
        apply_override(recipe, *parse_override(item), log=lambda _: None)
    out_console.file.write(recipe_to_yaml(recipe))


def models_list(
    pattern: Annotated[
        str | None, typer.Argument(help="Glob (convnext_*) or substring (vit) of the name.")
    ] = None,
) -> None:
    """Model names for model.name, with parameter counts (for a 1000-class head)."""
    from lwrcli.models import list_models, models_table

    console = out_console if out_console.is_terminal else Console(width=160)
    console.print(models_table(list_models(pattern), pattern))
