"""`lwr export`: a checkpoint as a self-contained ONNX or TorchScript file, plus a model card.

The exported model is not the bare network: it is `Preprocessed`, the classifier in eval mode
behind the checkpoint's own normalisation (and, for small-image runs that upsample, the same
bilinear upsampling), so a consumer only decodes, resizes/crops to the input size and feeds
RGB pixels. Everything a consumer needs to do that (input contract, class names, mean/std) is
in the file's metadata (ONNX `metadata_props`, TorchScript `_extra_files`) and in
`model-card.md`.

An export is checked before it is kept: the exported file, run by onnxruntime (CPU) or
reloaded by torch.jit, must give PyTorch's logits to `TOLERANCE` (max abs) on seeded random
images at two batch sizes. Files are written into a hidden staging folder beside DIR and
renamed at the end, so a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lwrcli import __version__
from lwrcli.checkpoint.files import Checkpoint, load_checkpoint
from lwrcli.data.manifest import Manifest
from lwrcli.errors import UserError
from lwrcli.runtime.files import temp_folder
from lwrcli.runtime.results import check_results_folder
from lwrcli.use.evaluate import load_model
from lwrcli.use.export_contract import InputContract, Preprocessed, find_manifest, resolve_contract
from lwrcli.use.model_card import write_model_card

FORMATS = ("onnx", "torchscript")
FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-4  # max |exported - PyTorch| over the check batches, logits
CHECK_BATCHES = (2, 5)  # two batch sizes: a graph that baked in the batch size fails here
INSTALL_HINT = "pip install 'lwrcli[export]'"


def check_inputs(contract: InputContract, seed: int = 0) -> list[torch.Tensor]:
    """Seeded random images of the contract's size and dtype, one batch per CHECK_BATCHES."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, contract.size, contract.size)
    out = []
    for b in CHECK_BATCHES:
        x = torch.randint(0, 256, (b, *shape), generator=g, dtype=torch.uint8)
        out.append(x if contract.dtype == "uint8" else x.float() / 255.0)
    return out


def metadata(
    ckpt: Checkpoint, contract: InputContract, manifest: Manifest | None
) -> dict[str, str]:
    """String key -> string value, the same for ONNX metadata_props and TorchScript
    _extra_files; JSON where the value is structured."""
    return {
        "class_names": json.dumps(ckpt.class_names),
        "class_counts": json.dumps(ckpt.class_counts),
        "mean": json.dumps(list(contract.mean)),
        "std": json.dumps(list(contract.std)),
        "input_size": str(contract.size),
        "resize": json.dumps(contract.resize),
        "input": json.dumps(contract.to_json()),
        "lwr_version": __version__,
        "dataset": manifest.name if manifest is not None else ckpt.config.dataset,
        "dataset_fingerprint": ckpt.meta.get("dataset_fingerprint", ""),
        "epoch": str(ckpt.epoch),
        "config": ckpt.config.model_dump_json(),
    }


def require_onnx() -> None:
    """onnx, onnxruntime and onnxscript (the dynamo exporter's) are an optional extra."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"ONNX export needs {', '.join(missing)} (not installed). Install the export "
            f"extra: {INSTALL_HINT}. TorchScript export (--format torchscript) needs nothing "
            "more."
        )


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """The exporters print progress lines and warn; keep the command's output clean."""
    buf = io.StringIO()
    with (
        contextlib.redirect_stdout(buf),
        contextlib.redirect_stderr(buf),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield buf


def first_line(exc: BaseException) -> str:
    """The first line of the innermost cause (the exporters wrap the real reason, e.g. a
    missing ONNX function, in generic 'step 3/3' errors), without terminal colours."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> str:
    """model.onnx through torch.onnx.export(dynamo=True), dynamic batch; the TorchScript-based
    exporter when dynamo cannot export the model. Returns which exporter wrote it."""
    import onnx

    how = "torch.onnx.export(dynamo=True)"
    try:
        with _quiet():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                external_data=False,
            )
            program.save(str(path))
    except Exception as dyn_exc:  # noqa: BLE001 - any exporter failure: try the other one
        dynamo_error = first_line(dyn_exc)
        try:
            with _quiet():
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=17,
                )
        except Exception as ts_exc:  # noqa: BLE001
            raise UserError(
                f"The ONNX exporter cannot export this model: {dynamo_error} (the "
                f"TorchScript-based exporter also failed: {first_line(ts_exc)})."
            ) from None
        how = f"TorchScript-based torch.onnx.export (dynamo export failed: {dynamo_error})"
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {**meta, "exporter": how})
    onnx.save(proto, str(path))
    return how


def run_onnx(path: Path, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict[str, str]]:
    """Logits of each batch under onnxruntime's CPU provider, and the file's metadata."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = [torch.from_numpy(session.run(None, {name: x.numpy()})[0]) for x in batches]
    return out, dict(session.get_modelmeta().custom_metadata_map)


def write_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]
) -> str:
    """model.pt by torch.jit.trace (the graph of this forward, batch size left symbolic),
    metadata in _extra_files."""
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
            torch.jit.save(traced, str(path), _extra_files=meta)
    except Exception as exc:  # noqa: BLE001 - any tracer failure is the model's
        raise UserError(f"TorchScript cannot trace this model: {first_line(exc)}.") from None
    return "torch.jit.trace"


def run_torchscript(
    path: Path, batches: list[torch.Tensor], keys: list[str]
) -> tuple[list[torch.Tensor], dict[str, str]]:
    """Logits of each batch from the reloaded file, and its _extra_files."""
    extra = dict.fromkeys(keys, "")
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        with torch.no_grad():
            out = [loaded(x).float() for x in batches]
    return out, {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}


@dataclass
class ExportResult:
    out: Path
    files: list[Path]
    exporter: str
    max_abs_diff: float
    contract: InputContract
    metadata: dict[str, str] = field(default_factory=dict)


def _check_out(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """The rule of every results folder (lwrcli.runtime.results): a folder with files is
    refused unless `overwrite`, and never one that holds a run, a dataset or an input."""
    check_results_folder(out, overwrite, inputs)


def export_checkpoint(
    checkpoint: Path,
    fmt: str,
    out: Path,
    overwrite: bool = False,
    input_dtype: str = "uint8",
    data_dir: Path | None = None,
    image_size: int | None = None,
    command: str | None = None,
) -> ExportResult:
    """Export, check against PyTorch, write the model card; all or nothing in `out`."""
    if fmt not in FORMATS:
        raise UserError(f"Unknown export format '{fmt}'; use one of: {', '.join(FORMATS)}.")
    out = Path(out)
    _check_out(out, overwrite, [Path(checkpoint), *([Path(data_dir)] if data_dir else [])])
    if fmt == "onnx":
        require_onnx()
    ckpt = load_checkpoint(checkpoint)
    manifest = find_manifest(ckpt, data_dir)
    contract = resolve_contract(ckpt, manifest, input_dtype, image_size)
    model = Preprocessed(load_model(ckpt, torch.device("cpu")), contract).eval()
    batches = check_inputs(contract)
    with torch.no_grad():
        expected = [model(x) for x in batches]
    meta = metadata(ckpt, contract, manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_folder(out)  # at the umask's mode: mkdtemp's 0700 would outlive the rename
    try:
        path = staging / FILENAMES[fmt]
        if fmt == "onnx":
            how = write_onnx(model, batches[0], path, meta)
            got, stored = run_onnx(path, batches)
        else:
            how = write_torchscript(model, batches[0], path, meta)
            got, stored = run_torchscript(path, batches, list(meta))
        diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
        if not diff <= TOLERANCE:  # NaN fails too
            sizes = ", ".join(map(str, CHECK_BATCHES))
            raise UserError(
                f"The exported {fmt} model does not reproduce PyTorch: max |logit difference| "
                f"{diff:.3g} > {TOLERANCE:g} on random {contract.size}x{contract.size} images "
                f"(batch sizes {sizes}). Nothing was written to {out}."
            )
        write_model_card(
            staging / "model-card.md", ckpt, manifest, contract, fmt, how, diff, command
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [out / FILENAMES[fmt], out / "model-card.md"]
    return ExportResult(out, files, how, diff, contract, stored)
