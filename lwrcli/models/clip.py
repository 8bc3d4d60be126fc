"""CLIP backbones through open_clip (optional extra `lwrcli[clip]`): `clip:<arch>` names an
open_clip architecture (`clip:ViT-B-16`) or a local open_clip model-config JSON file
(`clip:/path/tiny.json`, for custom or test-sized towers).

The image tower (with its projection into the joint embedding space) is the backbone and feeds
lwr's own head, so LWR, analysis, tau-norm and stage 2 work unchanged. The text tower is used
only to build heads from class names (`encode_class_names`) and is not part of the classifier.
No CLIP code is vendored: architectures, tokenizers, templates and class names are open_clip's.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.errors import UserError
from lwrcli.models.heads import make_classifier

CLIP_HINT = "open_clip is not installed; install the optional extra: pip install 'lwrcli[clip]'."
HEAD = "head"  # where ClipClassifier keeps its head (model.lwr_head)


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise UserError(CLIP_HINT) from None
    return open_clip


def is_config_file(arch: str) -> bool:
    return arch.endswith(".json")


def model_config(arch: str) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) of an arch or JSON file."""
    if is_config_file(arch):
        path = Path(arch)
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"Cannot read the open_clip model config {path}: {exc}") from None
        if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise UserError(
                f"{path} is not an open_clip model config: it needs embed_dim, vision_cfg and "
                "text_cfg (see open_clip/model_configs/ViT-B-16.json)."
            )
        return cfg
    cfg = import_open_clip().get_model_config(arch)
    if cfg is None:
        raise UserError(f"open_clip has no model config for '{arch}'.")
    return cfg


def check_clip_name(arch: str) -> None:
    """Raise ValueError unless `arch` is an open_clip architecture or a config file."""
    if is_config_file(arch):
        if not Path(arch).is_file():
            raise ValueError(f"open_clip model config file '{arch}' does not exist")
        return
    from lwrcli.errors import closest

    names = import_open_clip().list_models()
    if arch not in names:
        guess = closest(arch, names)
        hint = f" Did you mean 'clip:{guess}'?" if guess else ""
        raise ValueError(f"unknown open_clip architecture '{arch}'.{hint}")


def pretrained_tags(arch: str) -> list[str]:
    """The open_clip pretrained tags of an architecture (none for a config file)."""
    if is_config_file(arch):
        return []
    return list(import_open_clip().list_pretrained_tags_by_model(arch))


def tag_config(arch: str, tag: str) -> dict[str, Any]:
    """open_clip's record of a pretrained tag (hf_hub, url, quick_gelu, mean/std, ...)."""
    cfg = {} if is_config_file(arch) else import_open_clip().get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = pretrained_tags(arch)
        raise UserError(
            f"open_clip has no pretrained weights '{tag}' for {arch}. "
            + (f"Known tags: {', '.join(tags)}." if tags else "It has no pretrained tags.")
        )
    return dict(cfg)


def create_clip(arch: str, weights: str | None = None) -> nn.Module:
    """The whole open_clip model (image and text towers) with random weights: nothing is
    downloaded here (weights are loaded by lwrcli.models.weights). QuickGELU follows the tag,
    as the OpenAI weights need it."""
    open_clip = import_open_clip()
    quick_gelu = bool(tag_config(arch, weights).get("quick_gelu", False)) if weights else False
    if is_config_file(arch):
        cfg = model_config(arch)
        if quick_gelu:
            cfg["quick_gelu"] = True
        cls = open_clip.CustomTextCLIP if "hf_model_name" in cfg["text_cfg"] else open_clip.CLIP
        return cls(**cfg)
    # open_clip logs "No pretrained weights loaded ... initialized randomly" here: true but
    # misleading, since lwr loads the weights right after (lwrcli.models.weights).
    with _quiet_logging():
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_weights(model: nn.Module, path: Path) -> None:
    """Pretrained weights into the whole CLIP model by open_clip's own loader: it converts
    third-party and old-format state dicts and resizes position embeddings; .bin files are
    read with weights_only=True (a pickled object is refused with its name)."""
    from open_clip.factory import load_checkpoint

    from lwrcli.models.weights import refusing_pickles

    with refusing_pickles(path):
        try:
            load_checkpoint(model, str(path), strict=True, weights_only=True)
        except RuntimeError as exc:  # missing/unexpected keys or other shapes
            first = str(exc).splitlines()[0] + " " + " ".join(str(exc).splitlines()[1:2])
            raise UserError(
                f"Pretrained weights {path} do not fit this CLIP model: {first.strip()} Is "
                "the file for this architecture?"
            ) from None


class ClipClassifier(nn.Module):
    """CLIP image tower -> (B, embed_dim) features -> lwr's head (B, C)."""

    def __init__(self, visual: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def build_classifier(
    clip: nn.Module, num_classes: int, cosine: bool, scale: float, projected: bool = False
) -> tuple[ClipClassifier, torch.Tensor | None]:
    """The image tower of `clip` with a fresh head, and the map of text embeddings into the
    head's feature space (None when that space is the joint one).

    `projected`: the head sits on the joint image-text space (embed_dim, CLIP's zero-shot
    geometry). Otherwise, as in LIFT, a ViT's head sits on the pooled features before the
    tower's projection (width, 768 for ViT-B/16): the projection is dropped from the tower and
    text embeddings t reach that space as normalize(t Pᵀ). CLIP ResNets always project."""
    visual = clip.visual
    proj = getattr(visual, "proj", None)
    text_map = None
    if not projected and isinstance(proj, torch.Tensor):
        text_map = proj.detach().t().clone()  # (embed_dim, width): t -> t Pᵀ
        visual.proj = None  # open_clip skips a missing projection
        dim = int(text_map.shape[1])
    elif hasattr(clip, "text_projection"):
        dim = int(clip.text_projection.shape[-1])
    else:
        dim = int(visual.output_dim)
    model = ClipClassifier(visual, make_classifier(dim, num_classes, cosine, scale))
    model.lwr_head = HEAD
    return model, text_map


def templates(kind: str) -> list[Any]:
    """Prompt templates as callables name -> text: open_clip's OpenAI ImageNet ensemble, or
    the single 'a photo of a {}.'."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    if kind == "openai":
        return list(OPENAI_IMAGENET_TEMPLATES)
    return [lambda c: f"a photo of a {c}."]


def tokenizer_for(arch: str) -> Any:
    """open_clip's tokenizer of the architecture (the BPE vocabulary ships with open_clip)."""
    open_clip = import_open_clip()
    if is_config_file(arch):
        ctx = int(model_config(arch)["text_cfg"].get("context_length", 77))
        return open_clip.SimpleTokenizer(context_length=ctx)
    return open_clip.get_tokenizer(arch)


@torch.no_grad()
def encode_class_names(
    clip: nn.Module,
    tokenizer: Any,
    class_names: list[str],
    template_kind: str = "openai",
    batch_classes: int = 16,
) -> torch.Tensor:
    """(C, embed_dim) unit rows: each class name in every template, encoded, normalised,
    averaged, normalised again (CLIP's zero-shot head; open_clip's
    build_zero_shot_classifier). Names are made readable first (`aquarium_fish` ->
    `aquarium fish`, as LIFT does), see lwrcli.data.classnames.prompt_name."""
    from open_clip import build_zero_shot_classifier

    from lwrcli.data.classnames import prompt_name

    device = next(clip.parameters()).device
    was_training = clip.training
    clip.eval()
    try:
        weights = build_zero_shot_classifier(
            clip,
            tokenizer=tokenizer,
            classnames=[prompt_name(n) for n in class_names],
            templates=templates(template_kind),
            num_classes_per_batch=batch_classes,
            device=device,
            use_tqdm=False,
        )
    finally:
        clip.train(was_training)
    return F.normalize(weights.t().float(), dim=1)


def data_defaults(arch: str) -> dict[str, Any]:
    """Input size and normalisation of a CLIP image tower: open_clip resizes the shorter side
    to the input size and centre-crops (no 256 -> 224 margin), with CLIP's mean and std."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    vision = model_config(arch)["vision_cfg"]
    size = vision.get("image_size", 224)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    return {
        "image_size": size,
        "resize": size,
        "mean": tuple(float(v) for v in OPENAI_DATASET_MEAN),
        "std": tuple(float(v) for v in OPENAI_DATASET_STD),
    }


def is_convolutional_arch(arch: str) -> bool:
    """CLIP ResNets (vision_cfg.layers is a list of stage depths) are convolutional; ViTs not."""
    return isinstance(model_config(arch)["vision_cfg"].get("layers"), (list, tuple))
