"""Record the golden fixtures of issue 23 with the code as it stands (run once, before a
restructure; the tests then prove the restructured code reproduces them).

    OMP_NUM_THREADS=1 python tests/golden/record_goldens.py

Writes, under tests/golden/:
- presets_resolved.json.gz: every shipped preset's resolved config (model_dump, JSON mode);
- families/<case>/config.yaml + weights.safetensors: one short seeded fp32 run per method
  family on the small synthetic dataset (cases.yaml says which preset and overrides);
- old_run/: a run folder of 3 planned epochs stopped after epoch 2 (config.yaml, metrics,
  checkpoints), the format older versions write, for the migration tests.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

torch.set_num_threads(1)

from lwrcli.cli import main  # noqa: E402
from lwrcli.config import list_presets, load_config  # noqa: E402
from lwrcli.data.synthetic import prepare_synthetic  # noqa: E402

# The small dataset every case trains on: 5 classes, 90 train images (counts 40 .. 5).
SMALL = dict(num_classes=5, n_max=40, test_per_class=4, imbalance_factor=8, seed=1)
# Short, seeded, fp32, CPU: 2 epochs of 6 steps.
COMMON = [
    "dataset=any",
    "device=cpu",
    "epochs=2",
    "batch_size=16",
    "eval_every=1",
    "log_every=1",
    "amp=none",
    "compile=false",
    "seed=0",
]
RESNET = ["model.resnet_width=4"]  # 16-d features: small fixtures, room for a 5-class simplex
CNN = ["model.width=8"]
TINY_CLIP = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 40, "patch_size": 8, "head_width": 20},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def cases(clip_json: Path) -> dict[str, dict]:
    """case -> preset, overrides, and the case whose weights start it (stage 2)."""
    return {
        "bs": {"preset": "synthetic-lt-bs", "sets": CNN},
        "bs-lwr": {"preset": "synthetic-lt-bs-lwr", "sets": [*CNN, "lwr.theta=-0.2"]},
        "ce": {"preset": "synthetic-lt-ce", "sets": CNN},
        "bs-ema-randaugment": {
            "preset": "synthetic-lt-bs",
            "sets": [*CNN, "ema.enabled=true", "ema.decay=0.9", "data.augment=randaugment"],
        },
        "la": {"preset": "cifar100-lt-ir100-la", "sets": RESNET},
        "focal-cb": {"preset": "cifar100-lt-ir100-cb-focal", "sets": RESNET},
        "ldam-drw": {"preset": "cifar100-lt-ir100-ldam-drw", "sets": [*RESNET, "loss.drw_epoch=1"]},
        "ib": {"preset": "cifar100-lt-ir100-ib", "sets": [*RESNET, "loss.ib_start_epoch=1"]},
        "seql": {"preset": "cifar100-lt-ir100-seql", "sets": [*RESNET, "loss.seql_lambda=0.1"]},
        "bbn": {"preset": "cifar100-lt-ir100-bbn", "sets": RESNET},
        "etf": {"preset": "cifar100-lt-ir100-etf", "sets": RESNET},
        "wb-stage1": {"preset": "cifar100-lt-ir100-wb-stage1", "sets": RESNET},
        "wb": {"preset": "cifar100-lt-ir100-wb", "sets": RESNET, "init": "wb-stage1"},
        "mislas-stage1": {"preset": "cifar100-lt-ir100-mislas-stage1", "sets": RESNET},
        "mislas-stage2": {
            "preset": "cifar100-lt-ir100-mislas-stage2",
            "sets": RESNET,
            "init": "mislas-stage1",
        },
        "crt": {"preset": "synthetic-lt-crt", "sets": CNN, "init": "ce"},
        "lws-lwr": {"preset": "synthetic-lt-lws-lwr", "sets": CNN, "init": "ce"},
        "clip-adaptformer": {
            "preset": "synthetic-lt-bs-lwr",
            "sets": [
                f"model.name=clip:{clip_json}",
                "model.cosine_classifier=true",
                "model.cosine_scale=25",
                "model.head_init=text",
                "model.tuning=adaptformer",
                "model.weights=null",
            ],
        },
    }


def run(*args: object) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        if exc.code:
            raise RuntimeError(f"lwr {' '.join(map(str, args))} exited {exc.code}") from None


def record_presets() -> None:
    dump = {name: load_config(name).model_dump(mode="json") for name in list_presets()}
    with gzip.open(HERE / "presets_resolved.json.gz", "wt") as f:
        json.dump(dump, f, indent=1, sort_keys=True)
    print(f"presets: {len(dump)} resolved configs")


def record_families(work: Path, data: Path) -> None:
    clip_json = HERE / "families" / "tiny_clip.json"
    clip_json.parent.mkdir(parents=True, exist_ok=True)
    clip_json.write_text(json.dumps(TINY_CLIP, indent=1) + "\n")
    table = cases(Path("TINY_CLIP_JSON"))
    real = cases(clip_json)
    runs: dict[str, Path] = {}
    for case, spec in real.items():
        out = work / case
        args = ["train", "--preset", spec["preset"], "--data", data, "--out", out]
        if "init" in spec:
            args += ["--init", runs[spec["init"]] / "checkpoints" / "last.safetensors"]
        for item in [*COMMON, *spec["sets"]]:
            args += ["--set", item]
        run(*args)
        runs[case] = out
        dest = HERE / "families" / case
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "config.yaml", dest / "config.yaml")
        shutil.copy(out / "checkpoints" / "last.safetensors", dest / "weights.safetensors")
        print(f"family {case}: {(dest / 'weights.safetensors').stat().st_size} bytes")
    spec_out = {
        "small_dataset": SMALL,
        "common": COMMON,
        "threads": 1,
        "cases": table,
    }
    (HERE / "cases.yaml").write_text(yaml.safe_dump(spec_out, sort_keys=False))


def record_old_run(work: Path, data: Path) -> None:
    """3 planned epochs, stopped (as by Ctrl-C) right after epoch 2's save."""
    from lwrcli.engine import Interrupted, Trainer

    original = Trainer.evaluate
    calls = {"n": 0}

    def evaluate(self: Trainer):
        calls["n"] += 1
        if calls["n"] == 2:
            self._stop_signal = signal.SIGINT
        return original(self)

    Trainer.evaluate = evaluate  # type: ignore[method-assign]
    out = work / "old_run"
    sets = [*COMMON, *CNN, "epochs=3", "save_every=1", "lwr.theta=-0.2"]
    try:
        args: list[object] = ["train", "--preset", "synthetic-lt-bs-lwr", "--data", data]
        args += ["--out", out]
        for item in sets:
            args += ["--set", item]
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            assert exc.code == 130, exc.code
        except Interrupted:
            pass
    finally:
        Trainer.evaluate = original  # type: ignore[method-assign]
    dest = HERE / "old_run"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(out, dest)
    print("old run:", sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        prepare_synthetic(data, **SMALL)
        record_presets()
        record_families(work, data)
        record_old_run(work, data)
