"""The options of each `prepare-data` source as one typed value (a discriminated union on
`source`), so each source documents its own options and every default lives here once.

The CLI builds one from the flags the user gave; a flag that does not apply to the chosen
source is an error naming the sources it applies to, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from lwrcli.errors import UserError, did_you_mean
from lwrcli.registry import load_plugins

DEFAULT_IMBALANCE_FACTOR = 100.0  # n_max / n_min of the paper's main CIFAR tables
DEFAULT_SYNTHETIC_CLASSES = 20


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Class names in label order (one per line, `name id` lines, or JSON with id + name),
    # replacing the source's own names; every source takes it.
    class_names: Path | None = None


class CifarOptions(_Options):
    """Official CIFAR python archives under `root`; LDAM-DRW's long-tailed selection."""

    source: Literal["cifar10", "cifar100"]
    root: Path
    imbalance_factor: float = DEFAULT_IMBALANCE_FACTOR
    profile: str = "exp"
    seed: int = 0
    download: bool = False


class SyntheticOptions(_Options):
    """Generated images of classes that share parts: no download, for demos and tests."""

    source: Literal["synthetic"]
    imbalance_factor: float = DEFAULT_IMBALANCE_FACTOR
    profile: str = "exp"
    seed: int = 0
    num_classes: int = DEFAULT_SYNTHETIC_CLASSES


class ListOptions(_Options):
    """ImageNet-LT, Places-LT, iNaturalist 2018: standard split lists + the image root."""

    source: Literal["imagenet-lt", "places-lt", "inat2018"]
    root: Path
    split_dir: Path | None = None
    train_list: Path | None = None
    val_list: Path | None = None
    test_list: Path | None = None
    verify: bool = True  # every listed file exists and decodes
    skip_bad: bool = False  # leave corrupt images out, recorded in the manifest
    # Test (and a val list given by path) only, for evaluation such as zero-shot: no train
    # images are needed; train counts come from the train list when available, else the
    # published shot groups (ImageNet-LT).
    eval_only: bool = False


class FolderOptions(_Options):
    """Any ImageFolder tree, optionally subsampled to a long-tailed profile."""

    source: Literal["folder"]
    root: Path
    imbalance_factor: float | None = None  # None: keep every train image
    profile: str = "exp"
    seed: int = 0
    val_per_class: int = 0
    # None: 10 per class from a tree of class folders; refused when the tree has its own
    # test/ (or lone val/) folder, which is then the test split.
    test_per_class: int | None = None
    verify: bool = True
    skip_bad: bool = False
    # Store N x N uint8 arrays (centre crop of the shorter side, bilinear resize) for the
    # device-resident pipeline; None: arrays only when all images share one square size
    # <= 64 px (stored as they are), else lists.
    image_size: int | None = Field(None, ge=8, le=1024)
    storage: Literal["auto", "arrays", "lists"] = "auto"
    # The fewest train images a class may keep once test/val are held out (None: 5, see
    # data/folder.py); fewer is refused with the numbers. Given, it also clips the long-tailed
    # profile at this many (else a profile that leaves a class empty is refused).
    min_per_class: int | None = Field(None, ge=1)


SourceOptions = Annotated[
    CifarOptions | SyntheticOptions | ListOptions | FolderOptions, Field(discriminator="source")
]
OPTION_TYPES: tuple[type[_Options], ...] = (
    CifarOptions,
    SyntheticOptions,
    ListOptions,
    FolderOptions,
)
SOURCES: tuple[str, ...] = tuple(
    name for kind in OPTION_TYPES for name in get_args(kind.model_fields["source"].annotation)
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceOptions)


@dataclass
class Source:
    """A dataset source from a plugin: `lwr prepare-data NAME ...`. `options` is a pydantic
    model with `source: Literal[NAME]` whose other fields are prepare-data flags (root, seed,
    imbalance_factor, profile, ...); `prepare(options, out, overwrite)` writes the prepared
    dataset (lwrcli.data.manifest) and returns its Manifest."""

    name: str
    options: type[BaseModel]
    prepare: Callable[[Any, Path, bool], Any]


PLUGIN_SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """A dataset source from a plugin (lwrcli.registry.load_plugins)."""
    if source.name in SOURCES or source.name in PLUGIN_SOURCES:
        raise ValueError(f"dataset source '{source.name}' is already registered")
    PLUGIN_SOURCES[source.name] = source
    return source


def source_names() -> list[str]:
    """Every source: the built-in ones, then those plugins registered."""
    load_plugins()
    return [*SOURCES, *PLUGIN_SOURCES]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _kind_of(source: str) -> type[BaseModel]:
    if source in PLUGIN_SOURCES:
        return PLUGIN_SOURCES[source].options
    return next(k for k in OPTION_TYPES if source in get_args(k.model_fields["source"].annotation))


def source_options(source: str, **given: Any) -> Any:
    """Validate the options given for `source` (None means 'not given', so the default)."""
    names = source_names()
    if source not in names:
        raise UserError(
            f"Unknown source '{source}'.{did_you_mean(source, names)} Sources: {', '.join(names)}."
        )
    kind = _kind_of(source)
    values = {k: v for k, v in given.items() if v is not None}
    for key in values:
        if key not in kind.model_fields:
            users = [s for s in names if key in _kind_of(s).model_fields]
            raise UserError(
                f"{_flag(key)} does not apply to source '{source}'; it is an option of "
                f"{', '.join(users) or 'no source'}."
            )
    if "root" in kind.model_fields and "root" not in values:
        raise UserError(f"prepare-data {source} needs --root, the folder with the raw data.")
    try:
        if source in PLUGIN_SOURCES:
            return kind.model_validate({"source": source, **values})
        return _ADAPTER.validate_python({"source": source, **values})
    except ValidationError as exc:
        parts = [
            f"{_flag(str(e['loc'][-1]))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
        ]
        raise UserError(f"Invalid options for prepare-data {source}: " + "; ".join(parts)) from None
