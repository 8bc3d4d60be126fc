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

from lwrcli import __version__
from lwrcli.cli.console import err_console, out_console
from lwrcli.cli.console import fail as _fail
from lwrcli.cli.data import prepare_data
from lwrcli.cli.export import export
from lwrcli.cli.studies import models_list, presets_list, presets_show, report, sweep
from lwrcli.cli.use import predict
from lwrcli.errors import UserError
from lwrcli.registry import load_plugins
from lwrcli.runtime.distributed import DistInfo

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
models_app = typer.Typer(
    help="Backbones: built-in, torchvision, timm and CLIP (clip:<arch>, open_clip).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


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
    requeue: Annotated[
        bool,
        typer.Option(
            "--requeue",
            help="SLURM: on the scheduler's warning (SIGUSR1/SIGTERM) save, then "
            "'scontrol requeue $SLURM_JOB_ID'; the requeued job continues the run.",
        ),
    ] = False,
) -> None:
    """Train a model (CPU, one GPU, or many via torchrun) into a run folder. Run again with
    the same arguments, it continues the run folder where it stopped."""
    from lwrcli.config import load_config
    from lwrcli.train.run import train_run

    if resume is not None:
        if preset or config or overrides or out or init:
            raise UserError(
                "--resume RUN_DIR continues a run with its saved config; do not combine it "
                "with --preset, --config, --set, --init or --out."
            )
        result = train_run(None, data, resume=resume, requeue=requeue)  # type: ignore[arg-type]
    else:
        if data is None or out is None:
            raise UserError("lwr train needs --data DATA_DIR and --out RUN_DIR.")
        sets = list(overrides or [])
        if init is not None:  # a shortcut for --set init.checkpoint=PATH
            sets.append(f"init.checkpoint={json.dumps(str(init))}")
        cfg = load_config(preset, config, sets)
        result = train_run(cfg, data, out, requeue=requeue)
    if not result.is_main:
        if result.stopped_late:
            sys.exit(130)
        return
    last = result.history[-1] if result.history else {}
    tops = {k: v for k, v in last.items() if k.endswith("_top1") and v is not None}
    shown = ", ".join(f"{k} {v:.2f}" for k, v in tops.items())
    checkpoints = f"Checkpoints in {result.run_dir / 'checkpoints'}."
    if result.finished_before:  # one line: a plan or array task run again skips it
        recorded = f" Recorded at epoch {last['epoch']}: {shown}." if shown else ""
        err_console.print(
            f"{result.run_dir} already finished all {result.epochs} epochs; nothing to do."
            f"{recorded} {checkpoints}",
            highlight=False,
            soft_wrap=True,
        )
        return
    err_console.print(
        f"Done: {result.epochs} epochs; {shown or 'no evaluation'}. {checkpoints}",
        highlight=False,
    )
    if result.stopped_late:  # asked for, and harmless: not an error, but still a stop (130)
        err_console.print(
            "The stop came too late to matter: it arrived after the run's last step, and the "
            "run is complete and saved.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(130)


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="A .safetensors checkpoint (none with --zero-shot).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared dataset folder (default: the run's, from run.json)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for summary.json and per_class.csv (default: RUN/eval/NAME, named "
            "after the checkpoint, split and adjustments).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the results already in the folder.")
    ] = False,
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
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default: the run's eval batch.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Loader workers (default: the run's).")
    ] = None,
    raw_weights: Annotated[
        bool,
        typer.Option("--raw-weights", help="The trained weights, not the checkpoint's EMA."),
    ] = False,
    tte: Annotated[
        bool,
        typer.Option("--tte", help="LIFT's test-time ensemble: mean logits of five crops."),
    ] = False,
    aggregate: Annotated[
        str,
        typer.Option(
            "--aggregate",
            help="Multi-expert checkpoints: uniform (the experts' mean) or tsa (weights learnt "
            "on the split's unlabelled images, SADE's test-time aggregation).",
        ),
    ] = "uniform",
    tsa_epochs: Annotated[int, typer.Option("--tsa-epochs", min=1, help="TSA's epochs.")] = 5,
    tsa_lr: Annotated[
        float, typer.Option("--tsa-lr", min=0.0, help="TSA's lr (SADE: CIFAR 0.1, ImageNet 0.025).")
    ] = 0.1,
    zero_shot: Annotated[
        str | None,
        typer.Option("--zero-shot", help="Score a CLIP text head untrained: clip:<arch>."),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="--zero-shot: open_clip weights tag.")
    ] = None,
    pretrained: Annotated[
        Path | None, typer.Option("--pretrained", help="--zero-shot: a local weights file.")
    ] = None,
    templates: Annotated[
        str, typer.Option("--templates", help="--zero-shot prompts: openai or single.")
    ] = "openai",
) -> None:
    """Top-1/top-5, many/medium/few and per-class accuracy of a checkpoint (or, with
    --zero-shot, of a CLIP model's text head without training)."""
    from lwrcli.train.metrics import format_table, rounded
    from lwrcli.use.aggregate import TSAOptions, experts_lines
    from lwrcli.use.evaluate import evaluate_checkpoint

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got '{device}'.")
    if zero_shot is not None:
        from lwrcli.use.zeroshot import evaluate_zero_shot

        adjusting = posthoc_tau, tau_norm, tau_norm_search or None, posthoc_tau_search or None
        if checkpoint is not None or any(v is not None for v in adjusting):
            raise UserError(
                "--zero-shot scores a CLIP model without training: give no checkpoint and no "
                "τ option (--tau-norm, --posthoc-tau and their searches need a trained head)."
            )
        if data is None:
            raise UserError("lwr eval --zero-shot needs --data DATA_DIR, the dataset to score.")
        if aggregate != "uniform":
            raise UserError("--aggregate weights the experts of a checkpoint, not --zero-shot.")
        if templates not in ("openai", "single"):
            raise UserError(f"--templates must be openai or single, got '{templates}'.")
        summary = evaluate_zero_shot(
            zero_shot, data, out, split, weights, pretrained, templates, tte, confusion,
            device, batch_size, workers=workers, overwrite=overwrite, default_out=True,
        )  # fmt: skip
    else:
        if checkpoint is None:
            raise UserError("lwr eval needs a CHECKPOINT, or --zero-shot clip:<arch>.")
        if weights is not None or pretrained is not None:
            raise UserError("--weights and --pretrained go with --zero-shot only.")
        summary = evaluate_checkpoint(
            checkpoint,
            data,
            out,
            split,
            posthoc_tau,
            tau_norm,
            confusion,
            device,
            batch_size,
            keep_bias=keep_bias,
            tau_norm_search=tau_norm_search,
            posthoc_tau_search=posthoc_tau_search,
            tte=tte,
            raw_weights=raw_weights,
            workers=workers,
            overwrite=overwrite,
            default_out=True,
            aggregate=aggregate,
            tsa=TSAOptions(epochs=tsa_epochs, lr=tsa_lr),
        )
    target = Path(summary["outputs"])
    title = f"{summary['dataset']} / {summary['split']} — {summary['adjustment']}"
    if summary.get("weights") == "ema":
        title += " — EMA weights"
    if summary.get("tte"):
        title += " — test-time ensemble"
    if as_json:
        out_console.file.write(json.dumps(rounded(summary)) + "\n")
        err_console.print(format_table(summary, title))
    else:
        out_console.print(format_table(summary, title))
    for line in experts_lines(summary):  # a multi-expert checkpoint: weights, each expert
        (err_console if as_json else out_console).print(line, highlight=False)
    if not as_json:
        out_console.print(f"Per-class accuracy and summary.json in {target}", highlight=False)


@app.command("analyze-weights")
def analyze_weights(
    checkpoints: Annotated[list[Path], typer.Argument(help="One or more checkpoints.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for plots and summary.json.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prepared dataset (class counts/names).")
    ] = None,
    svg: Annotated[bool, typer.Option("--svg", help="Also write SVG plots.")] = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="The same geometry as one self-contained page.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what --out holds, or the --html file.")
    ] = False,
) -> None:
    """Class-weight norms and cosines against class frequency: plots + JSON summary (--out),
    or one page (--html), or both."""
    from rich.console import Console

    from lwrcli.use.analysis import analyze_checkpoints, summary_table

    formats = ("png", "svg") if svg else ("png",)
    summary = analyze_checkpoints(list(checkpoints), out, data, formats, overwrite, html)
    # Off a terminal (pipes, CI) rich assumes 80 columns; give the run/checkpoint labels room.
    console = out_console if out_console.is_terminal else Console(width=160)
    console.print(summary_table(summary))
    wrote = [f"plots and summary.json in {out}"] * (out is not None)
    wrote += [f"the page {html}"] * (html is not None)
    out_console.print(f"Wrote {' and '.join(wrote)}.", highlight=False)


# predict and export live in cli_use and cli_export, the study commands in cli_studies;
# registered here so `lwr --help` lists them after eval and analyze-weights.
app.command("prepare-data")(prepare_data)
app.command()(predict)
app.command()(export)
app.command()(sweep)
app.command()(report)
presets_app.command("list")(presets_list)
presets_app.command("show")(presets_show)
models_app.command("list")(models_list)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Typer/click handle usage errors (exit 2 with a usage line); our
    UserError and interruptions are mapped here, so no user error ends in a traceback.

    Under torchrun every process runs this: errors of the set-up (config, data, model: the
    same on every process) are reported by rank 0 alone; an error inside the training loop
    by the process that raised it, with its rank named."""
    from lwrcli.runtime.distributed import launched
    from lwrcli.train.engine import Interrupted

    world = launched()
    try:
        load_plugins()  # built-in methods, then plugins: a broken one stops here, named
        app(args=argv, prog_name="lwr")
    except UserError as exc:
        _fail_from(world, exc, str(exc), 2)
    except KeyboardInterrupt:  # a stop asked for: not labelled an error
        _fail_from(world, None, "Interrupted; nothing half-written was kept.", 130, error=False)
    except Interrupted as exc:
        args = sys.argv[1:] if argv is None else list(argv)
        _fail_from(world, None, _stopped_message(exc, args, world), 130, error=False)
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


def _stopped_message(exc: BaseException, args: list[str], world: DistInfo) -> str:
    """Where a stop the user asked for left the run (or sweep), and the real command that
    continues it: `lwr train --resume <the run folder>`, or the sweep's own command."""
    import os
    import shlex

    from lwrcli.studies.sweep_launch import PLAN_ENV

    where, run_dir = getattr(exc, "where", ""), getattr(exc, "run_dir", None)
    sweep = getattr(exc, "sweep", None)
    if sweep is not None:
        if getattr(exc, "late", False):
            return sweep
        return f"{sweep} Continue with the same command: {shlex.join(['lwr', *args])}"
    if run_dir is None:
        return f"Stopped{' in ' + where if where else ''}; nothing was left half-written."
    launcher = ["lwr"]
    if world.enabled:
        launcher = ["torchrun", "--nproc_per_node", str(world.world_size), "-m", "lwrcli"]
    again = shlex.join([*launcher, "train", "--resume", str(Path(run_dir).resolve())])
    text = f"Stopped in {where}; the run was saved there. Continue with: {again}"
    plan = os.environ.get(PLAN_ENV)
    if plan:  # a run of a sweep's plan.sh: that script continues the whole sweep
        text += f" (or the whole sweep: bash {shlex.quote(plan)})"
    return text


def _fail_from(
    world: DistInfo, exc: BaseException | None, message: str, code: int, error: bool = True
) -> None:
    """`error: message` (or, for a stop the user asked for, the message alone) on stderr,
    once: from rank 0, or from the rank that raised it; then exit with `code`."""
    rank = getattr(exc, "lwr_rank", None)
    if world.enabled and rank is not None:
        message = f"on rank {rank} of {world.world_size}: {message}"
    if world.is_main or rank is not None:
        if error:
            _fail(message, code)
        err_console.print(message, highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
