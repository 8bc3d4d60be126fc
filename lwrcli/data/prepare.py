"""`lwr prepare-data`: the one place that reads raw dataset formats, dispatched by source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lwrcli.data.manifest import Manifest, read_manifest
from lwrcli.data.sources import (
    PLUGIN_SOURCES,
    CifarOptions,
    ListOptions,
    SyntheticOptions,
)
from lwrcli.errors import UserError


def prepare(options: Any, out: Path, overwrite: bool = False) -> Manifest:
    """Build the prepared dataset `out` from one source's typed options."""
    from lwrcli.data.classnames import read_names_file

    if options.source in PLUGIN_SOURCES:
        return PLUGIN_SOURCES[options.source].prepare(options, out, overwrite)

    names = None if options.class_names is None else read_names_file(options.class_names)
    if isinstance(options, CifarOptions):
        from lwrcli.data.cifar import prepare_cifar

        return prepare_cifar(
            options.source,
            options.root,
            out,
            imbalance_factor=options.imbalance_factor,
            profile=options.profile,
            seed=options.seed,
            download=options.download,
            overwrite=overwrite,
            given_names=names,
        )
    if isinstance(options, SyntheticOptions):
        from lwrcli.data.synthetic import prepare_synthetic

        return prepare_synthetic(
            out,
            num_classes=options.num_classes,
            imbalance_factor=options.imbalance_factor,
            profile=options.profile,
            seed=options.seed,
            overwrite=overwrite,
            given_names=names,
        )
    if isinstance(options, ListOptions):
        from lwrcli.data.listfile import prepare_listfile

        return prepare_listfile(
            options.source,
            options.root,
            out,
            split_dir=options.split_dir,
            train_list=options.train_list,
            val_list=options.val_list,
            test_list=options.test_list,
            verify=options.verify,
            overwrite=overwrite,
            skip_bad=options.skip_bad,
            eval_only=options.eval_only,
            given_names=names,
        )
    from lwrcli.data.folder import prepare_folder

    return prepare_folder(
        options.root,
        out,
        imbalance_factor=options.imbalance_factor,
        profile=options.profile,
        seed=options.seed,
        val_per_class=options.val_per_class,
        test_per_class=options.test_per_class,
        overwrite=overwrite,
        verify=options.verify,
        skip_bad=options.skip_bad,
        image_size=options.image_size,
        storage=options.storage,
        given_names=names,
        min_per_class=options.min_per_class,
    )


def benchmark_loader(data_dir: Path, workers: int = 2, batch_size: int = 64) -> dict[str, Any]:
    """Loader images/s of a `lists` dataset with the ImageNet-style training transforms."""
    from lwrcli.config import DataConfig
    from lwrcli.data.throughput import loader_benchmark

    if read_manifest(data_dir).storage != "lists":
        raise UserError("--benchmark measures the large-image loader; this dataset is arrays.")
    cfg = DataConfig(
        color_jitter=0.4, num_workers=workers, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    return loader_benchmark(data_dir, cfg, "train", batch_size, num_batches=10)
