"""`lwr.theta: init`: each pair's margin is its own cosine at initialisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lwrcli.checkpoint.files import THETA_REFERENCE, load_checkpoint
from lwrcli.train.lwr import lwr_penalty, lwr_penalty_dense, project_rows, reference_rows


def _independent_r(
    w: torch.Tensor, w0: torch.Tensor, u: torch.Tensor | None = None
) -> torch.Tensor:
    """R with per-pair margins, in float64 from the definition: projected unit rows of W and
    of W0 (each on its own mean direction; `u` fixes W's, which LWR.md treats as a constant
    for the gradient), hinge of the cosine differences, off-diagonal mean."""

    def unit(m: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        u = F.normalize(m.mean(0), dim=0) if u is None else u
        return F.normalize(m - (m @ u)[:, None] * u, dim=1)

    v, v0 = unit(w, u), unit(w0)
    c = w.shape[0]
    h = ((v @ v.t()) - (v0 @ v0.t())).clamp_min(0.0)
    h.fill_diagonal_(0.0)
    return h.sum() / (c * (c - 1))


def test_no_gradient_at_initialisation() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 6, requires_grad=True)
    ref = reference_rows(w, proj=True)
    r = lwr_penalty(w, ref, block_size=5)  # blocks that do not divide C
    r.backward()
    assert r.item() == 0.0
    assert torch.count_nonzero(w.grad) == 0
    # A fixed θ below those cosines does repel the same weights.
    assert lwr_penalty(w.detach(), -1.0).item() > 0


def test_a_pair_pushed_above_its_initial_cosine_gets_a_gradient() -> None:
    torch.manual_seed(1)
    w0 = torch.randn(8, 5, dtype=torch.float64)
    ref = reference_rows(w0, proj=True)
    w = w0.clone()
    w[3] = 0.6 * w0[3] + 0.4 * w0[5]  # rows 3 and 5 grow more similar than they started
    w.requires_grad_(True)
    r = lwr_penalty(w, ref, block_size=3)
    assert r.item() == pytest.approx(_independent_r(w.detach(), w0).item(), rel=1e-10)
    assert r.item() == pytest.approx(lwr_penalty_dense(w.detach(), ref).item(), rel=1e-10)
    (grad,) = torch.autograd.grad(r, w)
    assert grad[3].norm() > 0 and grad[5].norm() > 0
    # The blockwise backward equals finite differences of the independent definition.
    eps = 1e-6
    u = F.normalize(w.detach().mean(0), dim=0)
    for i, j in [(3, 0), (5, 2), (0, 1)]:
        plus, minus = w.detach().clone(), w.detach().clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (_independent_r(plus, w0, u) - _independent_r(minus, w0, u)) / (2 * eps)
        assert grad[i, j].item() == pytest.approx(fd.item(), abs=1e-7)


def test_reference_rows_are_what_lwr_sees() -> None:
    torch.manual_seed(2)
    w = torch.randn(6, 4)
    u = F.normalize(w.mean(0), dim=0)
    expected = F.normalize(project_rows(w, u), dim=1)
    assert torch.allclose(reference_rows(w, proj=True), expected, atol=1e-6)
    assert torch.allclose(reference_rows(w, proj=False), F.normalize(w, dim=1), atol=1e-6)


@pytest.mark.slow
def test_theta_init_trains_resumes_and_analyses(
    lwr, tmp_path: Path, synthetic_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import train_args

    from lwrcli.train.engine import Trainer

    sets = ["epochs=2", "model.width=8", "lwr.theta=init", "lwr.lambda_max=50"]
    run = tmp_path / "run"
    r = lwr(*train_args("synthetic-lt-bs-lwr", synthetic_data, run, *sets))
    assert r.code == 0, r.err
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in records] == [0, 1, 2]
    # At initialisation nothing is above its own margin: R is exactly 0.
    assert records[0]["geom_r"] == 0.0 and records[0]["geom_theta"] == "init"
    assert records[-1]["lwr"] is not None
    ck = load_checkpoint(run / "checkpoints" / "last.safetensors")
    ref = ck.extras[THETA_REFERENCE]
    assert ref.shape == ck.classifier_weight.shape
    assert torch.allclose(ref.norm(dim=1), torch.ones(ref.shape[0]), atol=1e-5)
    # The geometry of the last record is R against that stored reference.
    expect = lwr_penalty(ck.classifier_weight.double(), ref.double(), block_size=7)
    assert records[-1]["geom_r"] == pytest.approx(expect.item(), rel=1e-4, abs=1e-9)

    # Resume a run cut after epoch 1: the reference comes from the checkpoint, not the
    # trained head, so the continuation equals the uninterrupted run.
    cut = tmp_path / "cut"
    original = Trainer.train_epoch

    def stop_in_epoch_two(self: Trainer, epoch: int):
        if epoch == 1:
            self._stop_signal = 2  # as if Ctrl-C arrived during epoch 2
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", stop_in_epoch_two)
    r = lwr(*train_args("synthetic-lt-bs-lwr", synthetic_data, cut, *sets))
    assert r.code == 130, r.err
    monkeypatch.setattr(Trainer, "train_epoch", original)
    r = lwr("train", "--resume", cut)
    assert r.code == 0, r.err
    a = load_checkpoint(run / "checkpoints" / "last.safetensors")
    b = load_checkpoint(cut / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert torch.equal(a.extras[THETA_REFERENCE], b.extras[THETA_REFERENCE])

    r = lwr(
        "analyze-weights",
        run / "checkpoints" / "last.safetensors",
        "--data",
        synthetic_data,
        "--out",
        tmp_path / "analysis",
    )
    assert r.code == 0, r.err
    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    entry = summary["checkpoints"][0] if "checkpoints" in summary else summary
    assert "init" in json.dumps(entry)
