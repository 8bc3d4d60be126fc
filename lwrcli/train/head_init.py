"""`model.head_init: class_mean`: the classifier starts at each class's mean feature.

LIFT's "class mean" initialisation: the frozen (or pretrained) backbone runs once over every
training image without augmentation, the features the head receives are averaged per class,
and each mean is normalised to a unit row. A cosine head then starts as a nearest-class-mean
classifier; a linear head gets the same unit rows with a zero bias, so its logits
|x| * cos(x, mu_c) rank the classes exactly as the cosine head does (unnormalised means would
favour the classes whose features happen to be longest).

The features are captured by `lwrcli.use.evaluate.head_inputs` (a pre-hook on the head, so any
backbone works, as for stage 2's cached features) over the train split's evaluation loader
(normalised, in order, no crop or flip), gathered over processes under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lwrcli.config import TrainConfig
from lwrcli.data.loading import DataBundle, build_data
from lwrcli.errors import UserError
from lwrcli.models import get_classifier
from lwrcli.models.features import head_inputs
from lwrcli.runtime.distributed import DistInfo, all_gather_cat


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """features (N, d), labels (N,) -> (C, d) unit rows: each class's mean, normalised.
    A class without a sample is refused (its row would be undefined)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty):
        raise UserError(
            f"model.head_init=class_mean needs a training image of every class; class "
            f"{int(empty[0])} ({len(empty)} classes in all) has none."
        )
    return F.normalize(sums / counts.unsqueeze(1).double(), dim=1).float()


@torch.no_grad()
def init_head_class_mean(
    model: nn.Module,
    cfg: TrainConfig,
    data: DataBundle,
    device: torch.device,
    dist: DistInfo,
    log: Callable[[str], None],
) -> torch.Tensor:
    """Set the head's rows to the normalised class-mean features of the train split (and a
    linear head's bias to zero); returns the (C, d) rows."""
    if data.data_dir is None:
        raise UserError("model.head_init=class_mean needs the prepared dataset's folder.")
    if "train" not in data.manifest.splits:
        raise UserError(
            f"model.head_init=class_mean averages training images, and {data.data_dir} has no "
            "train split (prepared with --eval-only?)."
        )
    was_training = model.training
    plain_cfg = cfg.model_copy(update={"eval_tte": False})  # one plain view per image
    plain = build_data(data.data_dir, plain_cfg, device, dist, train=False, splits=["train"])
    batches = head_inputs(model, plain.evals["train"], cfg.amp if cfg.amp != "auto" else "none")
    features = all_gather_cat(torch.cat([f for f, _ in batches]), dist)
    labels = all_gather_cat(torch.cat([y for _, y in batches]), dist)
    model.train(was_training)  # head_inputs switched it to eval mode
    rows = class_means(features, labels, data.num_classes)
    head = get_classifier(model)
    head.weight.copy_(rows.to(head.weight.dtype))
    if getattr(head, "bias", None) is not None:
        head.bias.zero_()
    log(
        f"Head initialised from the class means of {len(labels):,} training images "
        "(no augmentation)."
    )
    return rows
