"""Pretrained weights by name (`model.weights`), fetched once into the cache of the library that
publishes them and then read like a local file.

- torchvision (`torchvision:<arch>`, and the built-in resnet50/resnext50_32x4d/resnet152): a
  weight enum of the architecture (`IMAGENET1K_V2`, `DEFAULT`). torch.hub downloads the file
  into $TORCH_HOME/hub/checkpoints and checks the sha256 prefix its name carries.
- timm (`timm:<arch>`): a pretrained tag (`openai`, `a1_in1k`), or `default` for the tag in the
  name (`timm:vit_base_patch16_clip_224.openai`) or else timm's default tag. From the Hugging
  Face hub (safetensors preferred) into the HF cache; timm loads it with its own checkpoint
  filter, so keys of older files map correctly.
- clip (`clip:<arch>`): an open_clip tag (`openai`, `laion2b_s34b_b88k`). From the hub entry of
  open_clip's pretrained table (`open_clip_model.safetensors` preferred, the `.bin` otherwise),
  loaded by open_clip's `load_checkpoint` into the whole CLIP model.

Pickle-based files (.pth/.bin) are only ever read with `weights_only=True`. Offline
(`HF_HUB_OFFLINE=1`, which lwr also honours for torch hub files, or no network) only cached
files are used; a missing one is a UserError naming the weights, the cache path and how to
place a file by hand.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from lwrcli.errors import UserError
from lwrcli.models import families
from lwrcli.runtime.files import fix_mode

HF_SAFE = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}  # hub names whose safe twin is not *.bin


@dataclass(frozen=True)
class NamedWeights:
    """Where one named set of weights comes from."""

    label: str  # the base-weights name, e.g. 'clip:ViT-B-16@openai'
    family: str  # torchvision | timm | clip
    arch: str  # as the family's library names it (timm: 'arch.tag')
    url: str | None = None  # a torch hub download (torchvision, url-only timm weights)
    repo: str | None = None  # a Hugging Face hub model repo
    files: tuple[str, ...] = ()  # files in `repo`, preferred first


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, read at call time (tests and users may set
    it after import); lwr applies it to torch hub downloads too."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def hf_cache() -> Path:
    """The Hugging Face hub cache: HF_HUB_CACHE, else HF_HOME/hub, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


# --- names ---------------------------------------------------------------------------------


def accepted(name: str) -> list[str]:
    """The weight names `model.weights` accepts for the model `name` (none for lwr's own)."""
    family, _, arch = families.resolve(name).partition(":")
    if family == "torchvision":
        enum = _torchvision_enum(arch)
        return list(enum.__members__) if enum is not None else []
    if family == "timm":
        return ["default", *_timm_tags(arch.partition(".")[0])]
    if family == "clip":
        from lwrcli.models.clip import pretrained_tags

        return pretrained_tags(arch)
    return []


def check_weights(name: str, weights: str) -> None:
    """ValueError (for the config's field path) unless `weights` names weights of `name`."""
    try:
        resolve(name, weights)
    except UserError as exc:
        raise ValueError(str(exc)) from None


def resolve(name: str, weights: str) -> NamedWeights:
    """`model.weights` of the model `name` -> where the file comes from; UserError listing the
    accepted names when it is unknown."""
    family, _, arch = families.resolve(name).partition(":")
    if family == "torchvision":
        return _torchvision(name, arch, weights)
    if family == "timm":
        return _timm(arch, weights)
    if family == "clip":
        return _clip(arch, weights)
    raise UserError(
        f"model.weights: {name} is one of lwr's own architectures and has no published "
        "weights; use model.pretrained: PATH for a file of your own."
    )


def _unknown(label: str, weights: str, known: list[str]) -> UserError:
    listed = ", ".join(known) if known else "none (it has no published weights)"
    return UserError(f"model.weights: {label} has no weights '{weights}'. Accepted: {listed}.")


def _torchvision_enum(arch: str) -> type | None:
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError, AttributeError):
        return None


def _torchvision(name: str, arch: str, weights: str) -> NamedWeights:
    enum = _torchvision_enum(arch)
    members = list(enum.__members__) if enum is not None else []
    if weights not in members:
        raise _unknown(name, weights, members)
    member = enum[weights]  # type: ignore[index]  # DEFAULT is an alias of a real member
    return NamedWeights(f"torchvision:{arch}@{member.name}", "torchvision", arch, url=member.url)


def _timm_tags(arch: str) -> list[str]:
    """Tags with a download (timm also lists 'untrained' configs)."""
    cfgs = families.import_timm().models.get_arch_pretrained_cfgs(arch)
    return [n.partition(".")[2] for n, c in cfgs.items() if c.hf_hub_id or c.url]


def _timm(arch: str, weights: str) -> NamedWeights:
    timm = families.import_timm()
    base, _, in_name = arch.partition(".")
    tags = _timm_tags(base)
    tag = weights
    if weights == "default":
        tag = in_name or timm.get_pretrained_cfg(base).tag
    elif in_name and weights != in_name:
        raise UserError(
            f"model.weights: timm:{arch} already names the tag '{in_name}'; set "
            f"model.weights: default, or name timm:{base} with model.weights: {weights}."
        )
    if tag not in tags:
        raise _unknown(f"timm:{base}", weights, ["default", *tags])
    cfg = timm.get_pretrained_cfg(f"{base}.{tag}")
    label = f"timm:{base}@{tag}"
    if cfg.hf_hub_id:
        files = _with_safe_twin(cfg.hf_hub_filename or "pytorch_model.bin")
        return NamedWeights(label, "timm", f"{base}.{tag}", repo=cfg.hf_hub_id, files=files)
    if cfg.url:
        return NamedWeights(label, "timm", f"{base}.{tag}", url=cfg.url)
    raise UserError(f"timm publishes no download for {label}; use model.pretrained: PATH.")


def _clip(arch: str, weights: str) -> NamedWeights:
    from lwrcli.models.clip import pretrained_tags, tag_config

    tags = pretrained_tags(arch)
    if weights not in tags:
        raise _unknown(f"clip:{arch}", weights, tags)
    hub = str(tag_config(arch, weights).get("hf_hub", ""))
    if not hub:
        raise UserError(f"open_clip names no hub file for clip:{arch}@{weights}.")
    if hub.endswith("/"):  # 'org/name/': open_clip's default file name (and its safe twin)
        repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
    else:  # 'org/name/file.bin'
        repo, filename = os.path.split(hub)
    return NamedWeights(
        f"clip:{arch}@{weights}", "clip", arch, repo=repo, files=_with_safe_twin(filename)
    )


def _with_safe_twin(filename: str) -> tuple[str, ...]:
    """The hub's safetensors twin first (what open_clip and timm look for), then the file."""
    if filename.endswith(".safetensors"):
        return (filename,)
    safe = HF_SAFE.get(filename) or filename.rsplit(".", 1)[0] + ".safetensors"
    return (safe, filename)


# --- files ---------------------------------------------------------------------------------

PLACE_FILE = "place it at that path"
# A run asks the hub once per weights and cache folder (a HEAD request each time otherwise).
_FETCHED: dict[tuple[NamedWeights, Path], Path] = {}


def fetch(named: NamedWeights) -> Path:
    """The local file of `named`: from the cache, or downloaded into it first."""
    key = (named, hf_cache() if named.repo else torch_hub_checkpoints())
    if key not in _FETCHED or not _FETCHED[key].is_file():
        _FETCHED[key] = _from_hf(named) if named.repo else _from_torch_hub(named)
    return _FETCHED[key]


def _hand_placement(
    named: NamedWeights, expected: Path, source: str, why: str, place: str
) -> UserError:
    return UserError(
        f"Pretrained weights {named.label} are not in the cache and cannot be downloaded "
        f"({why}). Expected {expected}. Run once with network access (the file is cached for "
        f"later offline runs), or download {source} yourself and {place}, or pass the file "
        "directly: --set model.weights=null --set model.pretrained=PATH (lwr eval --zero-shot: "
        "--pretrained PATH)."
    )


def _from_torch_hub(named: NamedWeights) -> Path:
    import torch

    assert named.url is not None
    path = torch_hub_checkpoints() / os.path.basename(urlparse(named.url).path)
    if path.is_file():
        return path
    if offline():
        raise _hand_placement(named, path, named.url, "HF_HUB_OFFLINE is set", PLACE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    found = torch.hub.HASH_REGEX.search(path.name)  # torchvision names end in -<sha256 prefix>
    print(f"Downloading {named.label} from {named.url} into {path}", file=sys.stderr)
    try:  # written to a temporary file and renamed, so a failure leaves nothing behind
        torch.hub.download_url_to_file(
            named.url, str(path), hash_prefix=found.group(1) if found else None, progress=False
        )
    except (OSError, RuntimeError) as exc:  # no network, HTTP error, hash mismatch
        why = str(exc).splitlines()[0]
        raise _hand_placement(named, path, named.url, why, PLACE_FILE) from None
    return fix_mode(path)  # torch.hub's temporary file is 0600; the umask's mode instead


def _from_hf(named: NamedWeights) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
    )

    assert named.repo is not None
    why = "HF_HUB_OFFLINE is set" if offline() else "no network or not on the hub"
    for filename in named.files:
        try:
            return Path(
                hf_hub_download(
                    named.repo, filename, cache_dir=hf_cache(), local_files_only=offline()
                )
            )
        except LocalEntryNotFoundError:
            continue  # not cached (and offline, or the hub unreachable): try the next name
        except EntryNotFoundError:
            why = f"the hub repo {named.repo} has none of {', '.join(named.files)}"
            continue  # the hub has no such file: try the next name
        except HfHubHTTPError as exc:  # unknown or gated repo, server error
            why = str(exc).splitlines()[0]
            break
    folder = hf_cache() / f"models--{named.repo.replace('/', '--')}"
    expected = folder / "snapshots" / "<commit>" / named.files[0]  # the one we prefer
    source = f"https://huggingface.co/{named.repo}/resolve/main/{named.files[0]}"
    place = f"put it there, with {folder / 'refs' / 'main'} holding the <commit> folder's name"
    raise _hand_placement(named, expected, source, why, place)
