"""Size and build time of the HTML pages (`lwr report --html`, `lwr analyze-weights --html`),
and the memory the heat maps' block means take at C = 8,142.

- report: a CIFAR-table-shaped study (12 groups x 3 seeds = 36 runs, 200 evaluated epochs,
  C = 100, per-class accuracies and a (C, 64) head per run; hand-made run folders, the same
  as tests/test_report_html.py's) -> page size (the issue's bound: 5 MB) and seconds;
- analyze-weights: one checkpoint with a random (C, 64) head, C = 1000 and 8,142 -> page
  size and seconds;
- block means of a (C, C) cosine map in frequency order at C = 8,142: the peak memory
  (tracemalloc) of reordering the whole map first (`mat[np.ix_(order, order)]`, the old way)
  against lwrcli.use.svg.block_means (one block row at a time), as a ratio from one run.

    python benchmarks/bench_report_html.py [--quick] [--out bench_report_html.json]

--quick leaves out C = 8,142 (about 30 s and 1.6 GB). Sizes are exact; times are noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_report_html import Head, counts_for, make_study  # noqa: E402

from lwrcli.checkpoint.files import save_checkpoint  # noqa: E402
from lwrcli.config import TrainConfig  # noqa: E402
from lwrcli.studies.report import build_report  # noqa: E402
from lwrcli.studies.report_html import render_html  # noqa: E402
from lwrcli.use.analysis import frequency_order  # noqa: E402
from lwrcli.use.svg import HEATMAP_CELLS, block_means  # noqa: E402

MB = 1024 * 1024


def report_page(tmp: Path) -> dict:
    make_study(tmp / "sweep", [round(-0.5 + 0.1 * k, 1) for k in range(12)], 3, 200, 100)
    t0 = time.perf_counter()
    html = render_html(build_report([tmp / "sweep"]))
    return {"runs": 36, "classes": 100, "epochs": 200, "bytes": len(html.encode()),
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip


def geometry_page(tmp: Path, c: int) -> dict:
    from lwrcli.cli.main import main

    torch.manual_seed(0)
    ckpt = tmp / f"c{c}.safetensors"
    cfg = TrainConfig(name=f"c{c}", lwr={"enabled": True, "theta": 0.2})
    names = [f"c{i}" for i in range(c)]
    save_checkpoint(ckpt, Head(c), cfg, counts_for(c), names, 1, {}, "fc.weight")
    page = tmp / f"c{c}.html"
    t0 = time.perf_counter()
    try:
        main(["analyze-weights", str(ckpt), "--html", str(page)])
    except SystemExit as exc:  # the CLI exits 0 when done
        if exc.code:
            raise
    return {"classes": c, "bytes": page.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip


def block_memory(c: int) -> dict:
    """Peak bytes allocated while building the shown map, beyond the (C, C) input."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(c, 64))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    mat = w @ w.T
    order = frequency_order(counts_for(c))
    out = {}
    for name, fn in (
        ("reorder_then_block", lambda: block_means(mat[np.ix_(order, order)], HEATMAP_CELLS)),
        ("block_rows", lambda: block_means(mat, HEATMAP_CELLS, order)),
    ):
        tracemalloc.start()
        shown, _ = fn()
        out[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[f"{name}_shape"] = list(shown.shape)
    out["ratio"] = round(out["reorder_then_block"] / out["block_rows"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out C = 8,142")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        result = {"report_36_runs": report_page(tmp)}
        for c in (1000,) if args.quick else (1000, 8142):
            result[f"analyze_weights_c{c}"] = geometry_page(tmp, c)
        result["block_means_memory"] = block_memory(1000 if args.quick else 8142)
    for key, value in result.items():
        if "bytes" in value:
            print(f"{key}: {value['bytes'] / MB:.2f} MB in {value['seconds']} s")
    mem = result["block_means_memory"]
    print(
        f"block means peak: reorder then block {mem['reorder_then_block'] / MB:.0f} MB, "
        f"block rows {mem['block_rows'] / MB:.1f} MB ({mem['ratio']}x less)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
