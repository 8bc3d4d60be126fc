"""The commands that use a trained model: `lwr predict` (new images -> top-k classes). Plain
typed functions, registered by lwrcli.cli.main."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lwrcli.cli.console import err_console, out_console


def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A .safetensors checkpoint.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Image files, folders (recursive) or list files (.txt/.lst)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Predictions file: .csv or .jsonl (JSON Lines).")
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes per image (capped at C).")] = 5,
    tau_norm: Annotated[
        float | None,
        typer.Option("--tau-norm", help="tau-normalise classifier weights (bias dropped)."),
    ] = None,
    keep_bias: Annotated[
        bool, typer.Option("--keep-bias", help="tau-norm: keep the classifier bias.")
    ] = False,
    posthoc_tau: Annotated[
        float | None,
        typer.Option("--posthoc-tau", help="Post-hoc logit adjustment tau (train prior)."),
    ] = None,
    posthoc: Annotated[
        str | None,
        typer.Option(
            "--posthoc", help="Deprecated: none, tau-norm or logit-adjust; use the two above."
        ),
    ] = None,
    tau: Annotated[
        float | None, typer.Option("--tau", help="Deprecated: tau of --posthoc (default 1).")
    ] = None,
    tte: Annotated[
        bool, typer.Option("--tte", help="LIFT's test-time ensemble: mean logits of five crops.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default: the run's eval batch.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Decoding workers (default: the run's).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output file.")
    ] = False,
) -> None:
    """Classify new images with a trained checkpoint: top-k classes per image, as CSV or JSON
    Lines, prepared exactly as `lwr eval` prepares the run's test images; --tau-norm and
    --posthoc-tau as in `lwr eval` (both: tau-norm first).

    \b
    Example:
      lwr predict runs/bs-lwr/checkpoints/best.safetensors photos/ more.jpg \\
          --out predictions.csv --top-k 3 --posthoc-tau 1.0
    """
    from lwrcli.use.posthoc import Adjustment
    from lwrcli.use.predict import Options, legacy_posthoc, predict_images

    adjustment, note = legacy_posthoc(posthoc, tau, Adjustment(tau_norm, posthoc_tau, keep_bias))
    if note is not None:
        err_console.print(note, highlight=False, soft_wrap=True)
    opts = Options(top_k, adjustment, tte, device, batch_size, workers, overwrite)
    summary = predict_images(checkpoint, inputs, out, opts)
    for s in summary["skipped"]:
        err_console.print(f"skipped {s['path']}: {s['reason']}", highlight=False, soft_wrap=True)
    rate = summary["images_per_s"]
    out_console.print(
        f"Classified {summary['images']} images in {summary['seconds']:.1f} s "
        f"({rate if rate is not None else '-'} images/s) on {summary['device']}; "
        f"{len(summary['skipped'])} unreadable, skipped. Predictions in {out}.",
        highlight=False,
        soft_wrap=True,
    )
