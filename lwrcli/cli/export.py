"""`lwr export`: a thin Typer command over lwrcli.use.export, registered by lwrcli.cli.main."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from lwrcli.cli.console import err_console, out_console


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.safetensors).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to create (model + model-card.md).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")
    ] = False,
    input_dtype: Annotated[
        str, typer.Option("--input", help="Input pixels: uint8 (0..255) or float (0..1).")
    ] = "uint8",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Its prepared dataset (input size), if not in a run folder."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", min=8, help="Override the input size.")
    ] = None,
) -> None:
    """ONNX or TorchScript with preprocessing, class names and a model card; checked on export.

    The file takes RGB images (B, 3, S, S), normalises them inside and returns logits; its
    metadata and DIR/model-card.md say S, the resize and the class names. The export is kept
    only if its logits equal PyTorch's to 1e-4 (onnxruntime for ONNX: pip install
    'lwrcli[export]').

    \b
    Example:
      lwr export runs/bs-lwr/checkpoints/best.safetensors --format onnx --out exported/bs-lwr
    """
    from lwrcli.use.export import export_checkpoint

    command = shlex.join(["lwr", *sys.argv[1:]]) if sys.argv[1:2] == ["export"] else None
    result = export_checkpoint(
        checkpoint, fmt, out, overwrite, input_dtype, data, image_size, command
    )
    c = result.contract
    out_console.print(
        f"Exported {checkpoint} -> {result.files[0]} ({result.exporter}); logits match "
        f"PyTorch to {result.max_abs_diff:.2g}.",
        highlight=False,
    )
    err_console.print(
        f"Input: RGB {c.dtype} (B, 3, {c.size}, {c.size}); model card: {result.files[1]}",
        highlight=False,
    )
