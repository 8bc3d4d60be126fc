"""The contrastive family (PaCo, GPaCo, BCL) in a run: augmented views on both pipelines, the
network around the plain model, the momentum encoder, LWR on prototypes, the refused
combinations, bit-exact resume, and every preset from training to export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train_args
from jpegtree import write_image_folder
from resume_scenario import cut_and_resume

from lwrcli.config import DataConfig, load_config
from lwrcli.data.device_loader import DeviceImageLoader
from lwrcli.data.image_loader import build_image_loader
from lwrcli.data.loading import build_data
from lwrcli.data.manifest import read_manifest
from lwrcli.models import build_model, get_classifier
from lwrcli.models.contrastive import ContrastiveNet, MomentumEncoder, to_contrastive
from lwrcli.train.build import build_components, train_loader_hook
from lwrcli.train.engine import Trainer
from lwrcli.train.lwr import lwr_penalty
from lwrcli.train.resolve import resolve_config

TINY = ["model.width=8", "batch_size=16", "eval_every=1", "log_every=1", "device=cpu"]
TINY += ["loss.dim=16"]


# --- views on both pipelines --------------------------------------------------------------


def _device_loader(views: int, seed: int = 4) -> DeviceImageLoader:
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(20)
    return DeviceImageLoader(
        images, labels, 8, (0.5,) * 3, (0.25,) * 3, True, padding=2, seed=seed, views=views
    )


def test_device_loader_gives_independent_views_of_the_same_images() -> None:
    torch.manual_seed(0)
    one, two = _device_loader(1), _device_loader(2)
    one.images = two.images  # the same stored images
    one.set_epoch(0), two.set_epoch(0)
    (x1, y1), (x2, y2) = next(iter(one)), next(iter(two))
    assert x2.shape == (8, 2, 3, 8, 8) and torch.equal(y1, y2)
    # The first view draws what a one-view loader draws; the second is another draw.
    assert torch.equal(x2[:, 0], x1) and not torch.equal(x2[:, 0], x2[:, 1])


def test_device_loader_views_resume_between_batches_exactly() -> None:
    torch.manual_seed(0)
    loader = _device_loader(2)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()  # after one batch
    rest = [x for x, _ in it]
    again = _device_loader(2, seed=99)  # another seed: the state decides
    again.images = loader.images
    again.load_state_dict(state)
    again.set_epoch(0)
    assert all(torch.equal(a, b) for a, (b, _) in zip(rest, again, strict=True))


def test_device_loader_can_leave_out_the_last_partial_global_batch() -> None:
    loader = _device_loader(2)  # 20 images, batches of 8: 8, 8 and 4
    assert len(loader) == 3 and len(_device_loader(1)) == 3
    loader.drop_last = True
    loader.set_epoch(0)
    assert len(loader) == 2 and [y.shape[0] for _, y in loader] == [8, 8]


def test_image_list_loader_gives_independent_views_per_image(jpegs: Path) -> None:
    cfg = DataConfig(image_size=16, resize=18, num_workers=0, augment="randaugment")
    kw = dict(batch_size=4, train=True, seed=1, views=2)
    batches = [
        next(iter(build_image_loader(jpegs, read_manifest(jpegs), "train", cfg, **kw)))
        for _ in range(2)
    ]
    x = batches[0].images
    assert x.shape == (4, 2, 3, 16, 16) and x.dtype == torch.uint8
    assert not torch.equal(x[:, 0], x[:, 1])
    assert torch.equal(x, batches[1].images)  # seeded per image: the same views again


def test_a_run_draws_views_through_the_method_loader_hook(small: Path) -> None:
    for loss, views in (("paco", 2), ("gpaco", 2), ("bcl", 3)):
        cfg = load_config("synthetic-lt-bs", overrides=[*TINY, f"loss.name={loss}"])
        data = build_data(small, cfg, torch.device("cpu"), train_wrap=train_loader_hook(cfg, 5))
        x, y = next(iter(data.train))
        assert x.shape == (16, views, 3, 32, 32) and y.shape == (16,)
        assert len(data.train) == 90 // 16  # the last partial batch (10 images) left out


# --- the network ----------------------------------------------------------------------------


def _net(kind: str = "bn", prototypes: bool = False, net_views: int | None = None):
    torch.manual_seed(0)
    cfg = load_config("synthetic-lt-bs", overrides=["model.width=8"]).model
    return to_contrastive(build_model(cfg, 5), kind, 6, prototypes, net_views)


def test_network_outside_training_is_the_plain_model_and_keeps_its_head() -> None:
    model = _net(prototypes=True).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), model.net(x))
    assert get_classifier(model) is get_classifier(model.net)
    keys = set(model.state_dict())
    assert "net.fc.weight" in keys and any(k.startswith("projector.") for k in keys)
    assert any(k.startswith("prototype_head.") for k in keys)


def test_training_views_return_the_first_view_logits_and_keep_embeddings() -> None:
    model = _net(net_views=1).train()
    x = torch.randn(4, 2, 3, 32, 32)
    logits = model(x)
    out = model.take()
    assert logits.shape == (4, 5) and out.logits.shape == (4, 1, 5)
    assert out.embeddings.shape == (4, 1, 6) and out.rest is not None
    assert torch.allclose(out.embeddings.norm(dim=2), torch.ones(4, 1))
    assert torch.equal(out.rest[:, 0], x[:, 1])
    with pytest.raises(RuntimeError, match="augmented views"):
        model.take()  # handed over once: nothing outlives its step


def test_momentum_encoder_is_an_ema_of_the_parameters_with_its_own_hook() -> None:
    model = _net()
    encoder = MomentumEncoder(model, 0.9)
    before = [p.detach().clone() for p in encoder.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    encoder.update()
    for k, old, q in zip(encoder.module.parameters(), before, model.parameters()):
        assert torch.allclose(k, 0.9 * old + 0.1 * q, atol=1e-6)
    keys = encoder.keys(torch.randn(4, 3, 32, 32))
    assert keys.shape == (4, 6) and not keys.requires_grad
    assert model._head_input is None and model.last is None  # the copy captured its own


# --- LWR on prototypes, refused combinations ----------------------------------------------


def test_lwr_on_prototypes_repels_the_prototype_rows(small: Path) -> None:
    sets = [*TINY, "loss.name=bcl", "loss.lwr_on=prototypes", "lwr.theta=0.0"]
    cfg = load_config("synthetic-lt-bs-lwr", overrides=sets)
    device = torch.device("cpu")
    cfg = resolve_config(cfg, device, "arrays", 5, 32).cfg
    data = build_data(small, cfg, device, train_wrap=train_loader_hook(cfg, 5))
    parts = build_components(cfg, data, device)
    trainer = Trainer(cfg, parts, device, run_dir=None)
    model = parts.raw_model
    assert isinstance(model, ContrastiveNet)
    x, y = next(iter(data.train))
    with torch.no_grad():  # the rows as the step sees them (train-mode MLP)
        want = lwr_penalty(model.prototypes(), 0.0, cfg.lwr.power, cfg.lwr.proj)
        on_classifier = lwr_penalty(get_classifier(model).weight, 0.0, 1, cfg.lwr.proj)
    terms = trainer.train_step(x, y, 1.0, None)
    assert float(terms["lwr"]) == pytest.approx(float(want), rel=1e-5)
    assert abs(float(want) - float(on_classifier)) > 1e-4  # a different matrix


@pytest.mark.parametrize(
    "sets, message",
    [
        (["loss.name=paco", "loss.lwr_on=prototypes"], "paco has no prototypes"),
        (["loss.name=gpaco", "loss.lwr_on=prototypes"], "centres are the classifier's rows"),
        (["loss.name=bcl", "loss.lwr_on=prototypes", "lwr.enabled=false"], "lwr.enabled=true"),
        (["loss.name=bcl", "loss.lwr_on=prototypes", "lwr.theta=init"], "fixed lwr.theta"),
        (["loss.name=paco", "loss.reweight=drw"], "loss.reweight=none"),
        # A structural variant's own rule refuses first (lwr's contrastive check is a backstop).
        (["loss.name=bcl", "model.name=resnet32", "model.variant.name=experts"], "loss.name=bcl"),
        (["loss.name=gpaco", "mixing.mixup_alpha=0.2"], "soft targets"),
        (["loss.name=paco", "stage2.mode=crt"], "one stage"),
        (["loss.name=bcl", "compile_mode=reduce-overhead"], "compile_mode=default"),
    ],
)
def test_combinations_that_make_no_sense_are_refused(lwr, small, tmp_path, sets, message) -> None:
    r = lwr(*train_args("synthetic-lt-bs-lwr", small, tmp_path / "run", *TINY, *sets))
    assert r.code == 2 and message in " ".join(r.err.split()), r.err
    assert not (tmp_path / "run").exists()


# --- resume ---------------------------------------------------------------------------------


def test_paco_resumes_mid_epoch_bit_exactly_with_queue_and_momentum_encoder(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped during step 3 of epoch 1 (the queue of 40 has wrapped: 3 x 16 keys), resumed:
    weights, key encoder, queue and metrics as the uninterrupted run's."""
    sets = [*TINY, "epochs=2", "checkpoint_every_steps=2", "loss.name=paco", "loss.queue=40"]
    cfg = load_config("synthetic-lt-bs-lwr", overrides=[*sets, "lwr.theta=0.0"])
    full, cut = cut_and_resume(cfg, small, tmp_path, monkeypatch, holds="lwr_state.paco.key.")
    from resume_scenario import weights

    saved = weights(cut)
    assert {"lwr_state.paco.queue.features", "lwr_state.paco.queue.position"} <= set(saved)
    assert saved["lwr_state.paco.queue.position"].tolist()[1] == 40  # full


# --- presets ----------------------------------------------------------------------------------

PRESETS = [
    "cifar100-lt-ir100-paco",
    "cifar100-lt-ir100-gpaco-lwr",
    "cifar100-lt-ir100-bcl-lwr",
    "cifar100-lt-ir100-paco-lwr",
    "cifar100-lt-ir100-gpaco",
    "cifar100-lt-ir100-bcl",
    "cifar10-lt-ir100-bcl",
    "cifar10-lt-ir100-bcl-lwr",
]
LARGE = [f"imagenet-lt-{m}{s}" for m in ("paco", "gpaco", "bcl") for s in ("", "-lwr")]
ONE_EPOCH = ["dataset=any", "epochs=1", "batch_size=8", "eval_batch_size=16", "device=cpu"]
ONE_EPOCH += ["amp=none", "channels_last=false", "compile=false", "data.num_workers=0"]


def _train_use(lwr, preset: str, data: Path, tmp_path: Path, *sets: str) -> None:
    run = tmp_path / "run"
    r = lwr(*train_args(preset, data, run, *ONE_EPOCH, *sets))
    assert r.code == 0, r.err[-3000:]
    ckpt = run / "checkpoints" / "last.safetensors"
    r = lwr("eval", ckpt, "--data", data, "--json", "--out", tmp_path / "ev")
    assert r.code == 0 and '"top1"' in r.out, r.err[-2000:]
    r = lwr("analyze-weights", ckpt, "--data", data, "--out", tmp_path / "an")
    assert r.code == 0, r.err[-2000:]
    tree = tmp_path / "tree"
    write_image_folder(tree, [2, 1])
    r = lwr("predict", ckpt, tree, "--out", tmp_path / "p.csv", "--workers", "0")
    assert r.code == 0 and (tmp_path / "p.csv").is_file(), r.err[-2000:]
    r = lwr("export", ckpt, "--format", "torchscript", "--out", tmp_path / "ex")
    assert r.code == 0, r.err[-2000:]


def test_a_contrastive_checkpoint_is_used_like_any_other(lwr, small: Path, tmp_path: Path):
    """A small BCL run (projector and prototype MLP in the checkpoint): eval, analyze-weights,
    predict and export rebuild its network and read the classifier's logits."""
    sets = ["loss.name=bcl", "loss.dim=16", "model.width=8", "lwr.theta=0.0"]
    _train_use(lwr, "synthetic-lt-bs-lwr", small, tmp_path, *sets)


@pytest.mark.slow  # ~10 s each: ResNet-32 on 2-3 views, then four commands
@pytest.mark.parametrize("preset", PRESETS)
def test_cifar_preset_trains_one_epoch_then_evaluates_analyzes_predicts_exports(
    lwr, small16: Path, tmp_path: Path, preset: str
) -> None:
    _train_use(lwr, preset, small16, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("preset", LARGE)
def test_imagenet_preset_trains_one_epoch_then_evaluates_analyzes_predicts_exports(
    lwr, small16: Path, tmp_path: Path, preset: str
) -> None:
    """ResNet-50 on 16-px images pools a 1x1 map: two steps of 29 (the 58 images), since a
    ragged last batch of 2 makes batch norm's statistics (and the weights) blow up."""
    _train_use(lwr, preset, small16, tmp_path, "batch_size=29")


# --- torchrun: global-batch semantics -----------------------------------------------------


@pytest.mark.slow
def test_gpaco_two_processes_equal_one_process_with_two_micro_batches(tmp_path: Path) -> None:
    """GPaCo under torchrun: each process contrasts its part of the global batch with the
    queue, and the queue takes every process's keys in rank order after the step; one process
    with accum_steps=2 contrasts each half with the same queue and queues both halves. Group
    norm (no batch statistics) and GPaCo's MLP (no batch norm) make both the same function,
    so the weights agree to float32 summation order: relative difference < 1e-4, as
    test_distributed's, while another seed differs by > 1e-2."""
    from test_distributed import EXACT, _max_rel_diff, _torchrun

    from lwrcli.data.synthetic import prepare_synthetic
    from lwrcli.train.run import train_run

    data = tmp_path / "data"  # 150 images: 2 global batches of 64 per epoch (22 left out)
    prepare_synthetic(data, num_classes=5, n_max=60, test_per_class=5, imbalance_factor=4, seed=2)
    sets = [*EXACT, "loss.name=gpaco", "loss.queue=96", "loss.dim=16"]
    train_run(
        load_config("synthetic-lt-bs-lwr", overrides=[*sets, "accum_steps=2"]),
        data,
        tmp_path / "accum",
    )
    proc = _torchrun(2, *train_args("synthetic-lt-bs-lwr", data, tmp_path / "two", *sets))
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = _max_rel_diff(tmp_path / "accum", tmp_path / "two")
    other = load_config("synthetic-lt-bs-lwr", overrides=[*sets, "accum_steps=2", "seed=1"])
    train_run(other, data, tmp_path / "other")
    print(f"GPaCo: 2 processes vs accum_steps=2, relative weight difference {diff:.2e}")
    assert diff < 1e-4
    assert _max_rel_diff(tmp_path / "accum", tmp_path / "other") > 1e-2
