"""The standard choice of two slots: a linear or a cosine classifier head, and the plain
network (no structural variant). The family builds these heads itself (lwrcli.models)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lwrcli.config.sections import HeadSection, VariantSection
from lwrcli.methods.base import Method


class LinearHeadConfig(HeadSection):
    """logits = W x + b."""

    name: Literal["linear"] = "linear"


class CosineHeadConfig(HeadSection):
    """logits_c = scale * cos(x, w_c) (no bias): LDAM's normalised classifier (scale 1, the
    loss scales) and LIFT's head from text embeddings (scale 25)."""

    name: Literal["cosine"] = "cosine"
    scale: float = Field(1.0, gt=0.0, le=1000.0)


class LinearHead(Method):
    name, slot, label, config = "linear", "head", "linear", LinearHeadConfig


class CosineHead(Method):
    name, slot, label, config = "cosine", "head", "cosine", CosineHeadConfig

    def describe(self, section: Any) -> str:
        return "cosine" if section.scale == 1.0 else f"cosine (s={section.scale:g})"


class PlainConfig(VariantSection):
    name: Literal["plain"] = "plain"


class Plain(Method):
    name, slot, label, config = "plain", "variant", "plain", PlainConfig


LINEAR, COSINE, PLAIN = LinearHead(), CosineHead(), Plain()
