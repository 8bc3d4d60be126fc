"""`lwr prepare-data`: the one place that reads raw dataset formats, dispatched by source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.errors import UserError, did_you_mean

ARRAY_SOURCES = ("cifar10", "cifar100", "synthetic")
LIST_SOURCES = ("imagenet-lt", "places-lt", "inat2018")
SOURCES = (*ARRAY_SOURCES, *LIST_SOURCES, "folder")


def _need_root(source: str, root: Path | None) -> Path:
    if root is None:
        raise UserError(f"prepare-data {source} needs --root, the folder with the raw data.")
    return Path(root)


def prepare(
    source: str,
    out: Path,
    root: Path | None = None,
    imbalance_factor: float | None = None,
    profile: str = "exp",
    seed: int = 0,
    download: bool = False,
    overwrite: bool = False,
    split_dir: Path | None = None,
    train_list: Path | None = None,
    val_list: Path | None = None,
    test_list: Path | None = None,
    verify: bool = True,
    val_per_class: int = 0,
    test_per_class: int = 0,
    num_classes: int | None = None,
    skip_bad: bool = False,
) -> Manifest:
    if source not in SOURCES:
        raise UserError(
            f"Unknown source '{source}'.{did_you_mean(source, SOURCES)} "
            f"Sources: {', '.join(SOURCES)}."
        )
    if source in ("cifar10", "cifar100"):
        from lwrcli.data.cifar import prepare_cifar

        return prepare_cifar(
            source,  # type: ignore[arg-type]
            _need_root(source, root),
            out,
            imbalance_factor=100.0 if imbalance_factor is None else imbalance_factor,
            profile=profile,
            seed=seed,
            download=download,
            overwrite=overwrite,
        )
    if source == "synthetic":
        from lwrcli.data.synthetic import prepare_synthetic

        kwargs: dict[str, Any] = {}
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return prepare_synthetic(
            out,
            imbalance_factor=100.0 if imbalance_factor is None else imbalance_factor,
            profile=profile,
            seed=seed,
            overwrite=overwrite,
            **kwargs,
        )
    if source in LIST_SOURCES:
        from lwrcli.data.listfile import prepare_listfile

        return prepare_listfile(
            source,  # type: ignore[arg-type]
            _need_root(source, root),
            out,
            split_dir=split_dir,
            train_list=train_list,
            val_list=val_list,
            test_list=test_list,
            verify=verify,
            overwrite=overwrite,
            skip_bad=skip_bad,
        )
    from lwrcli.data.folder import prepare_folder

    return prepare_folder(
        _need_root(source, root),
        out,
        imbalance_factor=imbalance_factor,
        profile=profile,
        seed=seed,
        val_per_class=val_per_class,
        test_per_class=test_per_class or None,
        overwrite=overwrite,
        verify=verify,
        skip_bad=skip_bad,
    )


def benchmark_loader(data_dir: Path, workers: int = 2, batch_size: int = 64) -> dict[str, Any]:
    """Loader images/s of a `lists` dataset with the ImageNet-style training transforms."""
    from lwrcli.config import DataConfig
    from lwrcli.data.images import loader_benchmark

    if read_manifest(data_dir).storage != "lists":
        raise UserError("--benchmark measures the large-image loader; this dataset is arrays.")
    cfg = DataConfig(
        color_jitter=0.4, num_workers=workers, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    return loader_benchmark(data_dir, cfg, "train", batch_size, num_batches=10)
