"""`lwr prepare-data`: the one command that reads raw dataset formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lwrcli.cli.console import err_console
from lwrcli.data.sources import SOURCES

if TYPE_CHECKING:
    from lwrcli.data.manifest import Manifest


def prepare_data(
    source: Annotated[
        str, typer.Argument(help=f"One of: {', '.join(SOURCES)}, or a plugin's source.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Prepared dataset folder to create.")],
    root: Annotated[
        Path | None, typer.Option("--root", help="Raw dataset folder (images or archives).")
    ] = None,
    imbalance_factor: Annotated[
        float | None,
        typer.Option(
            "--imbalance-factor",
            help="n_max / n_min (cifar, synthetic: 100; folder: none, applied in count order).",
        ),
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Long-tail profile: exp (default), step or pareto.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the long-tailed selection (default 0).")
    ] = None,
    download: Annotated[
        bool | None, typer.Option("--download", help="cifar: fetch the archive if missing.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out folder.")
    ] = False,
    split_dir: Annotated[
        Path | None,
        typer.Option("--split-dir", help="Folder with standard list files (else lwr's own)."),
    ] = None,
    train_list: Annotated[Path | None, typer.Option("--train-list")] = None,
    val_list: Annotated[Path | None, typer.Option("--val-list")] = None,
    test_list: Annotated[Path | None, typer.Option("--test-list")] = None,
    verify: Annotated[
        bool | None,
        typer.Option("--verify/--no-verify", help="Check every image exists and decodes."),
    ] = None,
    skip_bad: Annotated[
        bool | None,
        typer.Option(
            "--skip-bad",
            help="Leave corrupt images out (counted in the summary, all named in the manifest).",
        ),
    ] = None,
    val_per_class: Annotated[
        int | None,
        typer.Option("--val-per-class", help="folder: images per class held out for val."),
    ] = None,
    test_per_class: Annotated[
        int | None,
        typer.Option(
            "--test-per-class",
            help="folder: images per class held out for test (default 10; refused when the "
            "tree has train/ and test/ folders).",
        ),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option("--num-classes", help="synthetic: number of classes.")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            help="folder: store N x N uint8 arrays (centre crop, then resize) for the fast "
            "device-resident pipeline.",
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="folder: auto (arrays when all images are one square size <= 64 px), "
            "arrays or lists.",
        ),
    ] = None,
    class_names: Annotated[
        Path | None,
        typer.Option(
            "--class-names",
            help="Class names in label order: one per line, 'name id' lines "
            "(categories_places365.txt) or JSON with id + name (iNaturalist categories.json).",
        ),
    ] = None,
    eval_only: Annotated[
        bool | None,
        typer.Option(
            "--eval-only",
            help="imagenet-lt/places-lt/inat2018: test split only (e.g. for --zero-shot); "
            "no train images needed.",
        ),
    ] = None,
    min_per_class: Annotated[
        int | None,
        typer.Option(
            "--min-per-class",
            help="folder: the fewest train images a class may keep after the held-out "
            "images (default 5; given, it also clips the profile).",
        ),
    ] = None,
    benchmark: Annotated[
        bool, typer.Option("--benchmark", help="lists/folder: report loader images/s after.")
    ] = False,
) -> None:
    """Build a long-tailed dataset once: CIFAR archives, split lists, folders, or synthetic."""
    from lwrcli.data.prepare import prepare
    from lwrcli.data.sources import source_options

    options = source_options(
        source,
        root=root,
        imbalance_factor=imbalance_factor,
        profile=profile,
        seed=seed,
        download=download,
        split_dir=split_dir,
        train_list=train_list,
        val_list=val_list,
        test_list=test_list,
        verify=verify,
        val_per_class=val_per_class,
        test_per_class=test_per_class,
        num_classes=num_classes,
        skip_bad=skip_bad,
        image_size=image_size,
        storage=storage,
        class_names=class_names,
        eval_only=eval_only,
        min_per_class=min_per_class,
    )
    manifest = prepare(options, out, overwrite=overwrite)
    groups = {k: len(v) for k, v in manifest.shot_groups.items()}
    sizes = ", ".join(f"{k} {v:,}" for k, v in manifest.splits.items())
    counts = (
        f"train counts max {max(manifest.class_counts):,} min {min(manifest.class_counts):,}"
        if manifest.class_counts_known
        else "train counts unknown (published shot groups)"
    )
    err_console.print(
        f"Prepared {manifest.name} in {out}: {manifest.num_classes} classes "
        f"(names: {manifest.class_names_source}); {sizes} images; {counts}; "
        f"many/medium/few classes {groups['many']}/{groups['medium']}/{groups['few']}."
        + (" (synthetic data)" if manifest.synthetic else "")
        + (
            f" Images stored as {manifest.image_size}x{manifest.image_size} uint8 arrays: "
            "training uses the device-resident pipeline."
            if manifest.source == "folder" and manifest.storage == "arrays"
            else ""
        ),
        highlight=False,
    )
    _print_choices(manifest)
    if benchmark:
        from lwrcli.data.prepare import benchmark_loader

        result = benchmark_loader(out)
        err_console.print(f"Loader benchmark: {json.dumps(result)}", highlight=False)


def _print_choices(manifest: Manifest) -> None:
    """What prepare-data decided for the user (folder: the layout, held-out sizes, minimum,
    class order; any source: the images --skip-bad left out), one line each."""
    from lwrcli.data.imagecheck import name_some

    lines = list(manifest.notes) if manifest.source == "folder" else []
    skipped = manifest.skipped
    if skipped and manifest.source != "folder":
        lines.append(
            f"{len(skipped):,} corrupt or unreadable images left out (--skip-bad): "
            f"{name_some(skipped, 5)}; the manifest's 'skipped' names them all"
        )
    for line in lines:
        err_console.print(f"  - {line}", highlight=False, soft_wrap=True)
