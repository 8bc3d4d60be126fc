"""clip:<arch> models: the image tower feeds lwr's head; text-initialised rows, checked against
open_clip's own text tower computed here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from lwrcli.config import ModelConfig  # noqa: E402
from lwrcli.models import build_model, get_classifier  # noqa: E402
from lwrcli.models.clip import create_clip  # noqa: E402

TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 40, "patch_size": 8, "head_width": 20},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
NAMES = ["tench", "golden_retriever", "goldfish", "tiger shark"]


@pytest.fixture
def tiny(tmp_path: Path) -> str:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return f"clip:{path}"


def _text_rows(whole: torch.nn.Module, templates: list[str]) -> torch.Tensor:
    """Mean of the normalised template embeddings per class, normalised: (C, embed_dim)."""
    tok = open_clip.SimpleTokenizer(context_length=77)
    rows = []
    with torch.no_grad():
        for name in NAMES:
            texts = [t.format(name.replace("_", " ")) for t in templates]
            emb = F.normalize(whole.encode_text(tok(texts)), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)


def _whole(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_clip(name.partition(":")[2]).eval()


@pytest.mark.parametrize("projection", [True, False])
def test_text_head_rows_are_the_class_names_embeddings(tiny: str, projection: bool) -> None:
    cfg = ModelConfig(
        name=tiny,
        head={"name": "cosine", "scale": 25},
        head_init="text",
        text_templates="single",
        clip_projection=projection,
    )
    torch.manual_seed(0)
    model = build_model(cfg, len(NAMES), class_names=NAMES)
    whole = _whole(tiny, 0)  # the same random towers, built again
    rows = _text_rows(whole, ["a photo of a {}."])
    head = get_classifier(model).weight.detach()
    x = torch.randn(3, 3, 32, 32)
    if projection:  # the joint space: rows are the text embeddings themselves
        assert head.shape == (len(NAMES), TINY["embed_dim"])
        assert torch.allclose(head, rows, atol=1e-5)
        feats = whole.encode_image(x)
    else:  # LIFT: the un-projected width, rows mapped through the projection's transpose
        proj = whole.visual.proj.detach()
        assert head.shape == (len(NAMES), TINY["vision_cfg"]["width"])
        assert torch.allclose(head, F.normalize(rows @ proj.t(), dim=1), atol=1e-5)
        whole.visual.proj = None
        feats = whole.visual(x)
    expected = 25 * F.normalize(feats, dim=1) @ F.normalize(head, dim=1).t()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-4)


def test_ensemble_templates_average_the_openai_prompts(tiny: str) -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    cfg = ModelConfig(name=tiny, head={"name": "cosine"}, head_init="text", clip_projection=True)
    torch.manual_seed(1)
    model = build_model(cfg, len(NAMES), class_names=NAMES)
    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    rows = _text_rows(_whole(tiny, 1), templates)
    assert len(templates) == 80
    assert torch.allclose(get_classifier(model).weight.detach(), rows, atol=1e-5)


def test_text_head_needs_a_clip_model_and_a_cosine_head(tiny: str) -> None:
    from lwrcli.config import TrainConfig
    from lwrcli.errors import UserError
    from lwrcli.train.resolve import check_model

    with pytest.raises(ValueError, match="needs a CLIP model"):
        ModelConfig(name="resnet32", head={"name": "cosine"}, head_init="text")
    with pytest.raises(ValueError, match="set model.head.name=cosine"):
        ModelConfig(name=tiny, head_init="text")
    # The architecture is checked when the run is resolved, not when the config is validated.
    with pytest.raises(UserError, match="unknown open_clip architecture 'ViT-B-61'"):
        check_model(TrainConfig(model=ModelConfig(name="clip:ViT-B-61")))
