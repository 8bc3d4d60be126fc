"""benchmarks/gpu_check.py runs end to end on a CPU (--quick) and keeps going past a section
that fails: the GPU machine's time is too short to find either out there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():  # the benchmarks folder is not a package
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return gpu_check


@pytest.mark.slow
def test_quick_cpu_run_writes_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--only", "lwr,parallel",
         "--out", str(out)],
        check=True, cwd=tmp_path, timeout=120, capture_output=True, text=True,
    )  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["quick"]
    assert list(report["sections"]) == ["lwr", "parallel"]
    lwr, parallel = report["sections"]["lwr"], report["sections"]["parallel"]
    assert lwr["status"] == "ok", lwr["reason"]
    assert [(r["C"], r["d"]) for r in lwr["results"]["rows"]] == [(1000, 256), (8142, 32)]
    # No resnet50 section ran, so there is no step to compare with.
    assert lwr["results"]["rows"][0]["share_of_resnet50_step"] is None
    assert parallel["status"] == "ok", parallel["reason"]
    assert [r["processes"] for r in parallel["results"]["rows"]] == [1, 2]
    assert all(r["total_images_per_s"] > 0 for r in parallel["results"]["rows"])
    md = (out / "gpu_check.md").read_text()
    assert "Not a measurement" in md
    assert "| lwr |" in md and "| parallel |" in md


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path: Path, monkeypatch) -> None:
    gc = load_script()

    def broken(ctx):
        raise RuntimeError("no such kernel\nmore detail")

    def fine(ctx):
        return {"value": 1, "summary": [["a check", "1", "-"]]}

    monkeypatch.setitem(gc.SECTION_FNS, "resnet50", broken)
    monkeypatch.setitem(gc.SECTION_FNS, "lwr", fine)
    monkeypatch.setattr(
        sys, "argv", ["gpu_check", "--device", "cpu", "--only", "resnet50,lwr", "--out",
                      str(tmp_path)],
    )  # fmt: skip
    gc.main()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    first, second = report["sections"]["resnet50"], report["sections"]["lwr"]
    assert (first["status"], first["reason"]) == ("error", "RuntimeError: no such kernel")
    assert second["status"] == "ok" and second["results"]["value"] == 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "error: RuntimeError: no such kernel" in md and "| a check | 1 | - | lwr |" in md


def test_a_section_past_its_budget_is_cut_short(tmp_path: Path, monkeypatch) -> None:
    gc = load_script()

    def slow(ctx):
        ctx.partial["got"] = "this far"
        while True:
            pass

    monkeypatch.setitem(gc.SECTION_FNS, "lwr", slow)
    ctx = gc.Ctx(gc.torch.device("cpu"), gc.QUICK, True, tmp_path, {})
    sec = gc.run_section("lwr", ctx, 0.5)
    assert sec["status"] == "timeout" and sec["partial"] == {"got": "this far"}


def test_decode_section_is_skipped_without_cuda(tmp_path: Path) -> None:
    gc = load_script()
    ctx = gc.Ctx(gc.torch.device("cpu"), gc.QUICK, True, tmp_path, {})
    sec = gc.run_section("decode", ctx, gc.QUICK_BUDGETS["decode"])
    assert (sec["status"], sec["reason"]) == ("skipped", "needs CUDA (nvjpeg decodes on the GPU)")
    assert sec["seconds"] < 5  # nothing generated or timed before the check
    assert sum(gc.BUDGETS.values()) <= 470  # the full run stays under 8 minutes with start-up


def test_decode_measurement_runs_on_the_cpu_decoders(tmp_path: Path) -> None:
    """The decode section's code (on CUDA: nvjpeg), run once on the CPU decoders: each of
    them decodes the generated JPEGs exactly as lwrcli.data.decode does on the CPU."""
    gc = load_script()
    ctx = gc.Ctx(gc.torch.device("cpu"), gc.QUICK, True, tmp_path, {})
    ctx.until = 0.0  # one round
    result = gc.decode_rates(ctx)
    assert result["rounds"] == 1 and result["images"] == gc.QUICK.decode_images
    assert set(result["max_abs_diff_vs_cpu"].values()) == {0}
    assert all(rate > 0 for rate in result["images_per_s"].values())
    assert "torchvision.io" in result["images_per_s"]
