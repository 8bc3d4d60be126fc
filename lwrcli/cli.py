"""The `lwr` command line: thin commands that parse, call one library function, print a summary.

User errors (lwrcli.errors.UserError and click usage errors) end as one paragraph on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lwrcli import __version__
from lwrcli.data.sources import SOURCES
from lwrcli.distributed import DistInfo
from lwrcli.errors import UserError

app = typer.Typer(
    name="lwr",
    help="Long-tailed image classification with the Logit Weight Repulsion regularizer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
presets_app = typer.Typer(help="The shipped training recipes.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")
models_app = typer.Typer(help="Backbones: built-in, torchvision, timm.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out_console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def _version(value: bool) -> None:
    if value:
        out_console.print(f"lwr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    """Long-tailed image classification with the Logit Weight Repulsion regularizer."""


@app.command("prepare-data")
def prepare_data(
    source: Annotated[str, typer.Argument(help=f"One of: {', '.join(SOURCES)}.")],
    out: Annotated[Path, typer.Option("--out", help="Prepared dataset folder to create.")],
    root: Annotated[
        Path | None, typer.Option("--root", help="Raw dataset folder (images or archives).")
    ] = None,
    imbalance_factor: Annotated[
        float | None,
        typer.Option("--imbalance-factor", help="n_max / n_min (cifar, synthetic: 100)."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Long-tail profile: exp (default), step or pareto.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the long-tailed selection (default 0).")
    ] = None,
    download: Annotated[
        bool | None, typer.Option("--download", help="cifar: fetch the archive if missing.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out folder.")
    ] = False,
    split_dir: Annotated[
        Path | None,
        typer.Option("--split-dir", help="Folder with standard list files (else lwr's own)."),
    ] = None,
    train_list: Annotated[Path | None, typer.Option("--train-list")] = None,
    val_list: Annotated[Path | None, typer.Option("--val-list")] = None,
    test_list: Annotated[Path | None, typer.Option("--test-list")] = None,
    verify: Annotated[
        bool | None,
        typer.Option("--verify/--no-verify", help="Check every image exists and decodes."),
    ] = None,
    skip_bad: Annotated[
        bool | None,
        typer.Option("--skip-bad", help="Leave corrupt images out (named in the manifest)."),
    ] = None,
    val_per_class: Annotated[
        int | None,
        typer.Option("--val-per-class", help="folder: images per class held out for val."),
    ] = None,
    test_per_class: Annotated[
        int | None,
        typer.Option("--test-per-class", help="folder: images per class held out for test."),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", help="synthetic: number of classes.")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="folder: store N x N uint8 arrays (centre crop, then resize) for the fast "
            "device-resident pipeline.",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="folder: auto (arrays when all images are one square size <= 64 px), "
            "arrays or lists.",
        ),
    ] = None,
    benchmark: Annotated[
        bool, typer.Option("--benchmark", help="lists/folder: report loader images/s after.")
    ] = False,
) -> None:
    """Build a long-tailed dataset once: CIFAR archives, split lists, folders, or synthetic."""
    from lwrcli.data.sources import source_options
    from lwrcli.prepare import prepare

    options = source_options(
        source,
        root=root,
        imbalance_factor=imbalance_factor,
        profile=profile,
        seed=seed,
        download=download,
        split_dir=split_dir,
        train_list=train_list,
        val_list=val_list,
        test_list=test_list,
        verify=verify,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        num_classes=num_classes,
        skip_bad=skip_bad,
        image_size=image_size,
        storage=storage,
    )
    manifest = prepare(options, out, overwrite=overwrite)
    groups = {k: len(v) for k, v in manifest.shot_groups.items()}
    sizes = ", ".join(f"{k} {v:,}" for k, v in manifest.splits.items())
    err_console.print(
        f"Prepared {manifest.name} in {out}: {manifest.num_classes} classes; {sizes} images; "
        f"train counts max {max(manifest.class_counts):,} min {min(manifest.class_counts):,}; "
        f"many/medium/few classes {groups['many']}/{groups['medium']}/{groups['few']}."
        + (" (synthetic data)" if manifest.synthetic else "")
        + (
            f" Images stored as {manifest.image_size}x{manifest.image_size} uint8 arrays: "
            "training uses the device-resident pipeline."
            if manifest.source == "folder" and manifest.storage == "arrays"
            else ""
        ),
        highlight=False,
    )
    if benchmark:
        from lwrcli.prepare import benchmark_loader

        result = benchmark_loader(out)
        err_console.print(f"Loader benchmark: {json.dumps(result)}", highlight=False)


@app.command()
def train(
    data: Annotated[Path | None, typer.Option("--data", help="Prepared dataset folder.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run folder to create.")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A shipped recipe.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A YAML config.")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set lwr.theta=0.6."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue this run folder.")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Stage 2: start from this checkpoint (init.checkpoint)."),
    ] = None,
) -> None:
    """Train a model (CPU, one GPU, or many via torchrun) into a run folder."""
    from lwrcli.config import load_config
    from lwrcli.training import train_run

    if resume is not None:
        if preset or config or overrides or out or init:
            raise UserError(
                "--resume RUN_DIR continues a run with its saved config; do not combine it "
                "with --preset, --config, --set, --init or --out."
            )
        result = train_run(None, data, resume=resume)  # type: ignore[arg-type]
    else:
        if data is None or out is None:
            raise UserError("lwr train needs --data DATA_DIR and --out RUN_DIR.")
        sets = list(overrides or [])
        if init is not None:  # a shortcut for --set init.checkpoint=PATH
            sets.append(f"init.checkpoint={json.dumps(str(init))}")
        cfg = load_config(preset, config, sets)
        result = train_run(cfg, data, out)
    if not result.is_main:
        return
    last = result.history[-1] if result.history else {}
    tops = {k: v for k, v in last.items() if k.endswith("_top1") and v is not None}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in tops.items())
    err_console.print(
        f"Done: {result.epochs} epochs; {shown or 'no evaluation'}. "
        f"Checkpoints in {result.run_dir / 'checkpoints'}.",
        highlight=False,
    )


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help="Prepared dataset folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for summary.json and per_class.csv.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    split: Annotated[str | None, typer.Option(help="Split (default: the test split).")] = None,
    posthoc_tau: Annotated[
        float | None, typer.Option("--posthoc-tau", help="Post-hoc logit adjustment tau.")
    ] = None,
    tau_norm: Annotated[
        float | None,
        typer.Option("--tau-norm", help="tau-normalise classifier weights (bias dropped)."),
    ] = None,
    keep_bias: Annotated[
        bool, typer.Option("--keep-bias", help="tau-norm: keep the classifier bias.")
    ] = False,
    tau_norm_search: Annotated[
        bool,
        typer.Option("--tau-norm-search", help="Pick tau-norm's tau in 0..2 on the val split."),
    ] = False,
    posthoc_tau_search: Annotated[
        bool,
        typer.Option("--posthoc-tau-search", help="Pick post-hoc tau in 0..2 on the val split."),
    ] = False,
    confusion: Annotated[bool, typer.Option("--confusion", help="Write confusion.csv.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Top-1/top-5, many/medium/few and per-class accuracy of a checkpoint."""
    from lwrcli.evaluate import default_eval_dir, evaluate_checkpoint
    from lwrcli.metrics import format_table

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got '{device}'.")
    target = out or default_eval_dir(checkpoint, split)
    summary = evaluate_checkpoint(
        checkpoint,
        data,
        target,
        split,
        posthoc_tau,
        tau_norm,
        confusion,
        device,
        keep_bias=keep_bias,
        tau_norm_search=tau_norm_search,
        posthoc_tau_search=posthoc_tau_search,
    )
    title = f"{summary['dataset']} / {summary['split']} — {summary['adjustment']}"
    if as_json:
        out_console.file.write(json.dumps(summary) + "\n")
        err_console.print(format_table(summary, title))
    else:
        out_console.print(format_table(summary, title))
        out_console.print(f"Per-class accuracy and summary.json in {target}", highlight=False)


@app.command("analyze-weights")
def analyze_weights(
    checkpoints: Annotated[list[Path], typer.Argument(help="One or more checkpoints.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for plots and summary.json.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared dataset (class counts/names).")
    ] = None,
    svg: Annotated[bool, typer.Option("--svg", help="Also write SVG plots.")] = False,
) -> None:
    """Class-weight norms and cosines against class frequency: plots + JSON summary."""
    from lwrcli.analysis import analyze_checkpoints, summary_table

    formats = ("png", "svg") if svg else ("png",)
    summary = analyze_checkpoints(list(checkpoints), out, data, formats)
    out_console.print(summary_table(summary))
    out_console.print(f"Plots and summary.json in {out}", highlight=False)


@app.command()
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
    from lwrcli import sweep_launch
    from lwrcli.engine import Interrupted
    from lwrcli.sweep import build_spec, parse_data, plan_sweep, run_sweep

    spec = build_spec(preset or [], [str(c) for c in config or []], file, seeds, grid, overrides)
    runs = plan_sweep(spec, parse_data(data))
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
        if parallel > 1:
            counts = sweep_launch.run_parallel(out, spec, runs, parallel)
        else:
            counts = run_sweep(out, spec, runs)
    except Interrupted:
        _fail(
            "sweep interrupted; finished runs and the last complete epoch of the current run "
            "are kept. Run the same command again to continue.",
            130,
        )
        return
    done = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    err_console.print(f"Sweep of {len(runs)} runs in {out}: {done}.", highlight=False)
    if counts.get("failed"):
        _fail(f"{counts['failed']} runs failed; see {out / 'logs'}.", 1)


@app.command()
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
) -> None:
    """Runs grouped by config: mean ± std over seeds, deltas, paper numbers, curves."""
    from lwrcli.report import build_report, render, write_outputs

    result = build_report(list(dirs), split, baseline)
    if not result["groups"]:
        raise UserError(
            f"No finished run to report in {', '.join(map(str, dirs))} "
            f"({len(result['incomplete'])} unfinished)."
        )
    out_console.file.write(render(result, fmt))
    if fmt != "md":
        from lwrcli.report import notes

        err_console.print(notes(result), highlight=False)
    if out is not None:
        written = write_outputs(result, out, fmt, svg)
        err_console.print(f"Wrote {', '.join(p.name for p in written)} in {out}", highlight=False)


@presets_app.command("list")
def presets_list() -> None:
    """All shipped presets with dataset, model, loss, LWR and epochs."""
    from lwrcli.presets import presets_table, sweeps_table

    # Off a terminal (pipes, CI) rich assumes 80 columns; give the table room instead.
    console = out_console if out_console.is_terminal else Console(width=160)
    console.print(presets_table())
    console.print(sweeps_table())


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="Preset name.")]) -> None:
    """The full, validated config of one preset (YAML)."""
    from lwrcli.config import config_to_yaml, load_config

    out_console.file.write(config_to_yaml(load_config(preset=name)))


@models_app.command("list")
def models_list(
    pattern: Annotated[
        str | None, typer.Argument(help="Glob (convnext_*) or substring (vit) of the name.")
    ] = None,
) -> None:
    """Model names for model.name, with parameter counts (for a 1000-class head)."""
    from lwrcli.models import list_models, models_table

    console = out_console if out_console.is_terminal else Console(width=160)
    console.print(models_table(list_models(pattern), pattern))


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Typer/click handle usage errors (exit 2 with a usage line); our
    UserError and interruptions are mapped here, so no user error ends in a traceback.

    Under torchrun every process runs this: errors of the set-up (config, data, model: the
    same on every process) are reported by rank 0 alone; an error inside the training loop
    by the process that raised it, with its rank named."""
    from lwrcli.distributed import launched
    from lwrcli.engine import Interrupted

    world = launched()
    try:
        app(args=argv, prog_name="lwr")
    except UserError as exc:
        _fail_from(world, exc, str(exc), 2)
    except KeyboardInterrupt:
        _fail_from(world, None, "interrupted; nothing half-written was kept.", 130)
    except Interrupted as exc:
        _fail_from(
            world,
            None,
            f"interrupted in {exc}; the run was saved there. Continue with "
            "'lwr train --resume RUN_DIR'.",
            130,
        )
    except Exception as exc:
        if not world.enabled:
            raise
        if _peer_failed(exc):  # a consequence: the process that failed reports the cause
            err_console.print(
                f"rank {world.rank} of {world.world_size} stopped: another process failed.",
                highlight=False,
                markup=False,
            )
            sys.exit(1)
        import traceback

        traceback.print_exc()
        _fail_from(world, exc, f"{type(exc).__name__}: {exc}", 1)


def _peer_failed(exc: BaseException) -> bool:
    """A collective broken because another process died (gloo/NCCL), not a fault here."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistBackendError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer")
    )


def _fail_from(world: DistInfo, exc: BaseException | None, message: str, code: int) -> None:
    rank = getattr(exc, "lwr_rank", None)
    if world.enabled and rank is not None:
        message = f"on rank {rank} of {world.world_size}: {message}"
    if world.is_main or rank is not None:
        _fail(message, code)
    sys.exit(code)


if __name__ == "__main__":
    main()
