"""The embedded synthetic source."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from lwrcli.data.arrays import load_arrays
from lwrcli.data.manifest import read_manifest
from lwrcli.data.profiles import long_tailed_counts
from lwrcli.data.synthetic import GROUP_SIZE, class_templates, group_of, prepare_synthetic


def test_counts_shapes_and_labelling(synthetic_data: Path) -> None:
    m = read_manifest(synthetic_data)
    assert m.synthetic and m.source == "synthetic" and "SYNTHETIC" in m.notes[0]
    assert m.class_counts == long_tailed_counts(300, 20, 100, "exp")
    x, y = load_arrays(synthetic_data, "test")
    assert x.shape == (1000, 3, 32, 32) and torch.bincount(y).tolist() == [50] * 20


def test_deterministic_by_seed(tmp_path: Path) -> None:
    digest = lambda d: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}  # noqa: E731
    prepare_synthetic(tmp_path / "a", num_classes=8, seed=1)
    prepare_synthetic(tmp_path / "b", num_classes=8, seed=1)
    prepare_synthetic(tmp_path / "c", num_classes=8, seed=2)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert (
        digest(tmp_path / "a")["train.safetensors"] != digest(tmp_path / "c")["train.safetensors"]
    )


def test_classes_of_a_group_share_parts() -> None:
    strength, parts = class_templates(20, 32, np.random.default_rng(0))
    t = (strength @ parts.reshape(len(parts), -1)).astype(np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    cos = t @ t.T
    same = [
        cos[i, j]
        for i in range(20)
        for j in range(20)
        if i != j and group_of(i, 20) == group_of(j, 20)
    ]
    diff = [cos[i, j] for i in range(20) for j in range(20) if group_of(i, 20) != group_of(j, 20)]
    assert np.mean(same) > np.mean(diff) + 0.2
    assert len({group_of(c, 20) for c in range(20)}) == 20 // GROUP_SIZE


def test_learnable_but_not_trivial(synthetic_data: Path) -> None:
    x, y = load_arrays(synthetic_data, "train")
    xt, yt = load_arrays(synthetic_data, "test")
    x, xt = x.double().flatten(1), xt.double().flatten(1)
    means = torch.stack([x[y == c].mean(0) for c in range(20)])
    acc = (torch.cdist(xt, means).argmin(1) == yt).double().mean().item()
    assert 0.3 < acc < 0.95  # nearest class mean on raw pixels; chance is 0.05
