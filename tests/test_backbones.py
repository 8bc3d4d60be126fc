"""Any backbone: torchvision/timm families build for 7 classes, expose one head that LWR
regularises, train a step, survive a checkpoint round-trip; local pretrained files; listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, train_args
from safetensors.torch import save_file

from lwrcli.checkpoint.files import load_checkpoint, save_checkpoint
from lwrcli.config import ModelConfig, OptimConfig, TrainConfig, validate_config
from lwrcli.errors import UserError
from lwrcli.models import (
    build_model,
    classifier_key,
    get_classifier,
    model_data_defaults,
)
from lwrcli.models import families as backbones
from lwrcli.train.lwr import lwr_penalty, lwr_penalty_dense
from lwrcli.train.optim import build_optimizer
from lwrcli.train.resolve import check_model, resolve_config
from lwrcli.use.analysis import weight_stats

COUNTS = [40, 25, 12, 8, 5, 3, 2]  # 7 classes, long-tailed
LAM, THETA = 0.5, -0.5  # projected random rows have cosines near -1/(C-1)

# name, head path, input size (tiny: these run on a 2-core CPU), constructor overrides
TORCHVISION = [
    ("torchvision:resnet18", "fc", 32, {}),
    ("torchvision:convnext_tiny", "classifier.2", 32, {}),
    ("torchvision:efficientnet_b0", "classifier.1", 32, {}),
    ("torchvision:mobilenet_v3_small", "classifier.3", 32, {}),
    ("torchvision:vit_b_16", "heads.head", 32, {"image_size": 32}),
    ("torchvision:swin_t", "head", 32, {}),
]
TIMM = [("timm:test_vit", "head", 160, {}), ("timm:test_convnext", "head.fc", 64, {})]


def _timm_installed() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _check_family(
    name: str, head: str, size: int, kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arch = name.split(":")[1]
    if kwargs:  # e.g. a 32 px torchvision ViT instead of its 224 px default
        monkeypatch.setitem(backbones.TORCHVISION_KWARGS, arch, kwargs)
    torch.manual_seed(0)
    cfg = ModelConfig(name=name)
    model = build_model(cfg, len(COUNTS)).train()
    clf = get_classifier(model)
    assert clf is model.get_submodule(head)
    assert classifier_key(model) == f"{head}.weight"
    assert clf.weight.shape[0] == len(COUNTS)

    # The LWR term reaches the head weight: grad(CE + λR) - grad(CE) = λ dR/dW, with dR/dW
    # from the dense reference implementation on a copy of the same weights.
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 5])
    ce = F.cross_entropy(model(x), y)
    reg = lwr_penalty(clf.weight, theta=THETA, proj=True)
    total = ce + LAM * reg
    (g_ce,) = torch.autograd.grad(ce, clf.weight, retain_graph=True)
    (g_total,) = torch.autograd.grad(total, clf.weight, retain_graph=True)
    w = clf.weight.detach().double().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(lwr_penalty_dense(w, theta=THETA, proj=True), w)
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g_total - g_ce, LAM * g_ref.float(), rtol=1e-4, atol=1e-7)

    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05), 1e-3)
    before = clf.weight.detach().clone()
    opt.zero_grad()
    total.backward()
    opt.step()
    assert not torch.equal(before, clf.weight)

    # Checkpoint round-trip: the classifier key and weights survive; analysis reads them;
    # the saved config rebuilds the same architecture.
    path = tmp_path / "ckpt.safetensors"
    names = [f"c{i}" for i in range(len(COUNTS))]
    save_checkpoint(
        path, model, TrainConfig(model=cfg), COUNTS, names, 1, {}, classifier_key(model)
    )
    ckpt = load_checkpoint(path)
    assert ckpt.classifier_key == f"{head}.weight"
    assert torch.equal(ckpt.classifier_weight, clf.weight.detach())
    stats = weight_stats(ckpt.classifier_weight, COUNTS, theta=0.4)
    assert np.allclose(stats["norms"], clf.weight.detach().double().norm(dim=1).numpy())
    rebuilt = build_model(ckpt.config.model, len(COUNTS))
    rebuilt.load_state_dict(ckpt.state)  # strict: same keys and shapes
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name,head,size,kwargs", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_family(
    name: str, head: str, size: int, kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_family(name, head, size, kwargs, tmp_path, monkeypatch)


@pytest.mark.skipif(not _timm_installed(), reason="timm not installed (optional extra)")
@pytest.mark.parametrize("name,head,size,kwargs", TIMM, ids=[t[0] for t in TIMM])
def test_timm_family(
    name: str, head: str, size: int, kwargs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_family(name, head, size, kwargs, tmp_path, monkeypatch)


def test_every_torchvision_classifier_has_a_found_head() -> None:
    """On the meta device (no weights allocated): the head found is the 1000-way Linear."""
    unsupported = []
    for arch in backbones.torchvision_names():
        model = backbones.meta_backbone(f"torchvision:{arch}")
        try:
            path = backbones.find_head(model, arch)
        except UserError:
            unsupported.append(arch)
            continue
        assert model.get_submodule(path).out_features == 1000, arch
    assert unsupported == ["squeezenet1_0", "squeezenet1_1"]  # 1x1-conv classifiers


def test_cosine_classifier_on_a_torchvision_head() -> None:
    from lwrcli.models import CosineLinear

    model = build_model(
        ModelConfig(name="torchvision:mobilenet_v3_small", head={"name": "cosine"}), 7
    )
    assert isinstance(model.classifier[3], CosineLinear)
    assert get_classifier(model) is model.classifier[3]
    assert classifier_key(model) == "classifier.3.weight"


# --- pretrained files ----------------------------------------------------------------------


def test_pretrained_1000_class_file_loads_into_7_classes(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = backbones.create_backbone("torchvision:mobilenet_v3_small")  # 1000-class head
    path = tmp_path / "mnv3.safetensors"
    # As saved from a DDP + torch.compile run: prefixes are stripped on load.
    save_file({f"module._orig_mod.{k}": v for k, v in src.state_dict().items()}, str(path))
    messages: list[str] = []
    cfg = ModelConfig(name="torchvision:mobilenet_v3_small", pretrained=path)
    model = build_model(cfg, 7, log=messages.append)
    state, ref = model.state_dict(), src.state_dict()
    for key, value in ref.items():
        if key.startswith("classifier.3."):
            assert state[key].shape[0] == 7
        else:
            assert torch.equal(state[key], value), key
    assert len(messages) == 1
    msg = messages[0]
    assert "left out 2" in msg
    assert "classifier.3.weight ((1000, 1024) in the file, (7, 1024) here)" in msg
    assert "classifier.3.bias ((1000,) in the file, (7,) here)" in msg
    assert f"Loaded {len(ref) - 2} tensors" in msg


def test_pretrained_plain_pth_state_dict(tmp_path: Path) -> None:
    src = build_model(ModelConfig(name="resnet32"), 10)
    path = tmp_path / "r32.pth"
    torch.save(src.state_dict(), path)
    model = build_model(ModelConfig(name="resnet32", pretrained=path), 10, log=lambda m: None)
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


class NotATensor:
    """A pickled object that weights_only loading must refuse."""


def test_pretrained_pth_with_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": NotATensor()}, path)
    with pytest.raises(UserError) as err:
        build_model(ModelConfig(name="resnet32", pretrained=path), 10)
    msg = str(err.value)
    assert "Refusing" in msg and "NotATensor" in msg and "weights_only=True" in msg


def test_pretrained_other_architecture_is_an_error(tmp_path: Path) -> None:
    src = build_model(ModelConfig(name="small_cnn", width=8), 10)
    path = tmp_path / "cnn.safetensors"
    save_file(src.state_dict(), str(path))
    with pytest.raises(UserError, match="do not fit the model: .*missing.*unexpected"):
        build_model(ModelConfig(name="resnet32", pretrained=path), 10)


# --- names, listing, data defaults ---------------------------------------------------------


def test_model_names_are_validated_with_closest_suggestions(
    lwr, synthetic_data: Path, tmp_path: Path
) -> None:
    """Names are checked when the run is resolved (validating a config imports no model
    library), and `lwr train` refuses a bad one before it creates the run folder."""
    cpu = torch.device("cpu")
    for name, hint in [
        ("torchvision:convnxt_tiny", "Did you mean 'torchvision:convnext_tiny'"),
        ("resnet18", "Did you mean 'torchvision:resnet18'"),
        ("vgg", "model.name.*Built-in: small_cnn"),
    ]:
        cfg = validate_config({"model": {"name": name}})
        with pytest.raises(UserError, match=hint):
            check_model(cfg)
        with pytest.raises(UserError, match=hint):
            resolve_config(cfg, cpu)
    out = tmp_path / "run"
    res = lwr(*train_args("synthetic-lt-bs", synthetic_data, out, "model.name=vgg", "epochs=1"))
    assert res.code == 2 and "Traceback" not in res.err
    assert "model.name=vgg" in res.err and "Built-in: small_cnn" in " ".join(res.err.split())
    assert not out.exists()


def test_timm_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(UserError, match=r"pip install 'lwrcli\[timm\]'"):
        check_model(validate_config({"model": {"name": "timm:resnet18"}}))
    assert ModelConfig(name="torchvision:resnet18").name == "torchvision:resnet18"
    check_model(validate_config({"model": {"name": "torchvision:resnet18"}}))


def test_builtin_name_validation_imports_neither_timm_nor_torchvision() -> None:
    code = (
        "import sys; from lwrcli.config import ModelConfig; ModelConfig(name='resnet32'); "
        "print('timm' in sys.modules, 'torchvision' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_models_list_shows_parameter_counts(lwr) -> None:
    res = lwr("models", "list", "resnet")
    assert res.code == 0, res.err
    row = next(line for line in res.out.splitlines() if "torchvision:resnet18 " in line)
    assert "11,689,512" in row and "fc" in row
    assert "small_cnn" not in res.out


def test_model_data_defaults() -> None:
    assert model_data_defaults("resnet32") is None
    assert model_data_defaults("torchvision:vit_b_16") == {
        "image_size": 224,
        "resize": 256,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    assert model_data_defaults("torchvision:convnext_tiny")["resize"] == 236
    if _timm_installed():
        # timm's test_vit: 160 px, mean/std 0.5, crop_pct 0.95 -> resize int(160 / 0.95) = 168
        assert model_data_defaults("timm:test_vit") == {
            "image_size": 160,
            "resize": 168,
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
        }


def test_model_data_defaults_fill_only_what_data_leaves_unset() -> None:
    from lwrcli.config import validate_config
    from lwrcli.train.resolve import with_model_data_defaults

    cfg = with_model_data_defaults(validate_config({"model": {"name": "torchvision:resnet18"}}))
    assert cfg.data.image_size == 224 and cfg.data.resize == 256
    assert cfg.data.mean == pytest.approx((0.485, 0.456, 0.406))
    given = {"model": {"name": "torchvision:resnet18"}, "data": {"mean": [0.5, 0.5, 0.5]}}
    cfg = with_model_data_defaults(validate_config(given))
    assert cfg.data.mean == (0.5, 0.5, 0.5) and cfg.data.std == pytest.approx((0.229, 0.224, 0.225))
    plain = validate_config({"model": {"name": "resnet32"}})
    assert with_model_data_defaults(plain) is plain
