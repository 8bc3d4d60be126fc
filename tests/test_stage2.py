"""Stage 2 (cRT, LWS) from a stage-1 checkpoint, cached features, and post-hoc τ choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_args
from safetensors.torch import load_file
from torch import nn

from lwrcli.config import load_config
from lwrcli.data.synthetic import prepare_synthetic
from lwrcli.methods.losses import posthoc_logit_adjust, tau_normalize
from lwrcli.methods.stage2 import freeze_backbone
from lwrcli.models import LWSHead, build_model
from lwrcli.train.init_weights import start_weights
from lwrcli.use.posthoc import TAU_GRID, head_logits, search_posthoc, search_tau_norm

TINY = ["model.width=8", "batch_size=16", "eval_every=0", "log_every=1000"]
NO_AUG = ["data.crop_padding=0", "data.flip=false"]


@pytest.fixture(scope="module")
def stage1(small_val: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch CE run: its last checkpoint is every test's init."""
    from lwrcli.cli.main import main

    run = tmp_path_factory.mktemp("s1") / "run"
    with pytest.raises(SystemExit) as done:
        main(train_args("synthetic-lt-ce", small_val, run, *TINY, "epochs=2"))
    assert done.value.code in (0, None)
    return run / "checkpoints" / "last.safetensors"


def _stage2(lwr, preset: str, small_val: Path, init: Path, out: Path, *sets: str) -> dict:
    res = lwr(*train_args(preset, small_val, out, *TINY, "epochs=2", *sets), "--init", init)
    assert res.code == 0, res.err
    return load_file(out / "checkpoints" / "last.safetensors")


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.mark.slow
def test_crt_keeps_every_backbone_tensor_and_bn_statistic_and_retrains_the_head(
    lwr, small_val: Path, stage1: Path, tmp_path: Path
) -> None:
    before = load_file(stage1)
    after = _stage2(lwr, "synthetic-lt-crt-lwr", small_val, stage1, tmp_path / "crt")
    back = _backbone(before)
    assert any("running_mean" in k for k in back) and any("num_batches" in k for k in back)
    assert set(after) == set(before)
    for k, v in back.items():
        assert torch.equal(after[k], v), k  # bit-identical, BatchNorm statistics included
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["fc.bias"], before["fc.bias"])


@pytest.mark.slow
def test_lws_learns_only_the_scales_and_eval_applies_them(
    lwr, small_val: Path, stage1: Path, tmp_path: Path
) -> None:
    before = load_file(stage1)
    after = _stage2(lwr, "synthetic-lt-lws", small_val, stage1, tmp_path / "lws")
    assert set(after) == set(before) | {"fc.scales"}
    for k, v in before.items():
        assert torch.equal(after[k], v), k  # backbone and classifier w, b all frozen
    assert not torch.equal(after["fc.scales"], torch.ones(5))
    res = lwr("eval", tmp_path / "lws" / "checkpoints" / "last.safetensors", "--data", small_val)
    assert res.code == 0, res.err


@pytest.mark.slow
def test_lwr_in_stage_2_measures_its_share_and_is_inert_on_a_frozen_classifier(
    lwr, small_val: Path, stage1: Path, tmp_path: Path
) -> None:
    every_step = ["log_every=1"]
    _stage2(lwr, "synthetic-lt-crt-lwr", small_val, stage1, tmp_path / "crt", *every_step)
    crt = [json.loads(x) for x in (tmp_path / "crt" / "metrics.jsonl").read_text().splitlines()]
    assert crt[-1]["lwr_share"] is not None and crt[-1]["lwr"] is not None
    lws = _stage2(lwr, "synthetic-lt-lws-lwr", small_val, stage1, tmp_path / "lws", *every_step)
    rec = json.loads((tmp_path / "lws" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["lwr"] is None and rec["lwr_share"] is None  # the classifier w is frozen
    assert torch.equal(lws["fc.weight"], load_file(stage1)["fc.weight"])


@pytest.mark.slow
def test_cached_features_train_the_same_classifier_as_the_image_path(
    lwr, small_val: Path, stage1: Path, tmp_path: Path
) -> None:
    plain = _stage2(lwr, "synthetic-lt-crt", small_val, stage1, tmp_path / "a", *NO_AUG)
    cached = _stage2(
        lwr,
        "synthetic-lt-crt",
        small_val,
        stage1,
        tmp_path / "b",
        *NO_AUG,
        "stage2.cache_features=true",
    )
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
    assert not torch.equal(cached["fc.weight"], load_file(stage1)["fc.weight"])


@pytest.mark.slow
def test_stage2_refuses_a_checkpoint_of_another_dataset_and_a_missing_init(
    lwr, stage1: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    prepare_synthetic(other, num_classes=5, n_max=40, test_per_class=4, imbalance_factor=8, seed=1)
    res = lwr(*train_args("synthetic-lt-crt", other, tmp_path / "r", *TINY), "--init", stage1)
    assert res.code == 2 and "another prepared dataset" in res.err
    assert "Traceback" not in res.err and not (tmp_path / "r").exists()
    res = lwr(*train_args("synthetic-lt-crt", other, tmp_path / "r", *TINY))
    assert res.code == 2 and "--init" in res.err
    res = lwr(
        *train_args("synthetic-lt-crt", other, tmp_path / "r", *TINY, "stage2.cache_features=true")
    )
    assert res.code == 2 and "augmentation" in res.err


def test_frozen_backbone_stays_in_eval_mode_and_only_the_head_trains() -> None:
    cfg = load_config("synthetic-lt-lws", overrides=["model.width=4"])
    model = build_model(cfg.model, 3)
    # What `lwr train` does once the model is built: the starting weights (no init
    # checkpoint here), then each method's changes (stage 2: frozen backbone, LWS head).
    model = start_weights(model, cfg, manifest=None)  # type: ignore[arg-type]
    for method in cfg.methods():
        model = method.adapt_run_model(model, cfg)
    model.train()
    assert isinstance(model.fc, LWSHead) and model.fc.training
    assert not any(m.training for m in model.body.modules())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.scales"]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        model(x), model.fc.scales * (model.features(x) @ model.fc.weight.t() + model.fc.bias)
    )
    plain = build_model(cfg.model, 3)
    freeze_backbone(plain)
    plain.train()
    assert not plain.body.training and plain.fc.training


# --- τ-norm and post-hoc τ ----------------------------------------------------------------


def test_tau_norm_drops_the_bias_unless_kept() -> None:
    head = nn.Linear(4, 3)
    x = torch.randn(6, 4)
    w = tau_normalize(head.weight.detach(), 0.7)
    torch.testing.assert_close(head_logits(head, x, 0.7), x @ w.t())
    torch.testing.assert_close(head_logits(head, x, 0.7, keep_bias=True), x @ w.t() + head.bias)
    torch.testing.assert_close(head_logits(head, x), head(x))


def _disagreeing_splits() -> tuple[nn.Linear, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Head w0 = 4 e1, w1 = e2 (bias 0): a sample (1, r) is called class 1 iff r > 4^(1-τ).
    Val: class 1 at r=2, class 0 at r=1.5 -> right for τ in (0.5, 0.71): picks 0.6.
    Test: class 1 at r=0.5, class 0 at r=0.3 -> right for τ in (1.5, 1.87): best 1.6."""
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        head.bias.zero_()

    def split(r1: float, r0: float) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([[1.0, r1], [1.0, r0]]), torch.tensor([1, 0])

    return head, {"val": split(2.0, 1.5), "test": split(0.5, 0.3)}


def test_tau_norm_search_picks_on_the_split_it_is_given() -> None:
    head, splits = _disagreeing_splits()
    assert search_tau_norm(head, *splits["val"], keep_bias=False).tau == 0.6
    assert search_tau_norm(head, *splits["test"], keep_bias=False).tau == 1.6
    found = search_tau_norm(head, *splits["val"], keep_bias=False)
    assert found.grid == list(TAU_GRID) and len(found.val_top1) == 21


def test_posthoc_search_picks_the_first_best_tau() -> None:
    counts = [100, 1]  # log-prior gap log(100) = 4.6 favours class 0
    logits = torch.tensor([[0.0, -2.0], [1.0, 0.0]])  # class 1 wins once τ > 2/4.6 = 0.43
    targets = torch.tensor([1, 0])  # and the second sample flips to 1 for τ > 1/4.6 = 0.22
    found = search_posthoc(logits, targets, counts)
    adjusted = [posthoc_logit_adjust(logits, torch.tensor([100.0, 1.0]), t) for t in TAU_GRID]
    expected = [50.0 * float((z.argmax(1) == targets).sum()) for z in adjusted]
    assert found.val_top1 == expected and found.tau == TAU_GRID[expected.index(max(expected))]


@pytest.mark.slow
def test_eval_search_selects_on_val_and_reports_test(
    lwr, small_val: Path, stage1: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With val and test disagreeing (constructed features, a 2-d head), the reported τ is
    val's choice (0.6), and the test accuracy is the one at that τ, not test's best."""
    import lwrcli.use.evaluate as ev

    head, splits = _disagreeing_splits()
    real_load = ev.load_model

    def load_model(ckpt, device):  # the real checkpoint's model with the constructed head
        model = real_load(ckpt, device)
        model.fc = head
        return model

    def features(model, loader, amp):  # val has 15 images, test 20: tell them by size
        return splits["val" if len(loader.labels) == 15 else "test"]

    monkeypatch.setattr(ev, "load_model", load_model)
    monkeypatch.setattr(ev, "_features", features)

    def summarize(z: torch.Tensor, y: torch.Tensor, counts: list[int]) -> dict:
        top1 = 100.0 * float((z.argmax(1) == y).double().mean())
        return {"top1": top1, "top5": 100.0, "many": None, "medium": None, "few": None,
                "per_class": []}  # fmt: skip

    monkeypatch.setattr(ev, "summarize", summarize)
    monkeypatch.setattr(ev, "write_per_class_csv", lambda *a: None)
    out = tmp_path / "ev"
    res = lwr("eval", stage1, "--data", small_val, "--tau-norm-search", "--out", out, "--json")
    assert res.code == 0, res.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tau_norm"] == 0.6 and summary["search"]["tau_norm"]["picked_on"] == "val"
    # Test at val's τ: 50 % (threshold 4^0.4 = 1.74 calls both test samples class 0); test's
    # own best τ (1.6) would have given 100 %.
    assert summary["top1"] == 50.0
    assert summary["adjustment"] == "τ-norm 0.6 (picked on val), bias dropped"


@pytest.mark.slow
def test_eval_names_the_bias_treatment_and_refuses_search_without_val(
    lwr, stage1: Path, small_val: Path, tmp_path: Path
) -> None:
    res = lwr(
        "eval", stage1, "--data", small_val, "--tau-norm", "1", "--json", "--out", tmp_path / "a"
    )
    assert res.code == 0, res.err
    assert json.loads(res.out)["adjustment"] == "τ-norm 1, bias dropped"
    res = lwr("eval", stage1, "--data", small_val, "--tau-norm", "1", "--keep-bias", "--json")
    assert json.loads(res.out)["tau_norm_bias"] == "bias kept"
    res = lwr(
        "eval",
        stage1,
        "--data",
        small_val,
        "--posthoc-tau-search",
        "--json",
        "--out",
        tmp_path / "b",
    )
    assert res.code == 0 and json.loads(res.out)["search"]["posthoc_tau"]["picked_on"] == "val"
    no_val = tmp_path / "noval"
    prepare_synthetic(no_val, num_classes=5, n_max=40, test_per_class=4, imbalance_factor=8)
    # Same classes and fingerprint-independent: eval only checks the class count.
    res = lwr("eval", stage1, "--data", no_val, "--tau-norm-search")
    assert res.code == 2 and "validation split" in res.err and "Traceback" not in res.err
