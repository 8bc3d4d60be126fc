"""Users' own data: an ImageFolder tree (one sub-folder per class) -> a long-tailed dataset.

Layouts:
- `ROOT/train/<class>/*` with `ROOT/test/<class>/*` and/or `ROOT/val/<class>/*`: those
  folders are the test (and validation) splits; with only `val/`, it is the test split.
  Their class folders must be the train ones, and `test_per_class` is refused (the tree
  already has its test split). A `ROOT/train/` alone is one pool, as below.
- `ROOT/<class>/*`: one pool; `test_per_class` random images of every class (default
  DEFAULT_TEST_PER_CLASS = 10) are held out as a balanced test split.
Then `val_per_class` random images per class are held out of train as a balanced validation
split (for model selection). Every class must keep at least `min_per_class` train images
(default DEFAULT_MIN_PER_CLASS = 5) before any profile; fewer is refused with the numbers.
What is left of train is optionally subsampled to a long-tailed profile applied in count
order: classes ranked by their train count, largest first, ties by folder name (the manifest's
`class_order`, with `counts_before_profile`), so the head is the largest class and an already
long-tailed tree keeps its shape. n_max is the largest class's count; a class with fewer images
than its target keeps them all (the manifest notes it); a `min_per_class` the user gives also
clips the profile. Class ids follow the sorted class-folder names whatever the profile, so the
ids of one tree are the same for every imbalance factor. Every random choice uses one generator
seeded with `seed`, so the same tree and seed give the same splits.

Images: .jpg .jpeg .png .bmp .webp in any case, in class folders or below them; hidden
files are skipped, and links that resolve outside the root are refused. With `verify` every
found image must decode (data/imagecheck.py) before any split is drawn, so `skip_bad`, which
leaves broken ones out, gives the same held-out sizes and profile counts as a clean tree.

Storage: small images are stored as uint8 arrays (data/folder_arrays.py), so training uses
the device-resident pipeline: with `image_size` N every image becomes N x N (centre crop of
the shorter side, then bilinear resize); without it, a tree whose images all share one square
size <= 64 px is stored as arrays as it is. Other trees (and `storage='lists'`) store lists
of paths read by DataLoader workers. The `{split}.txt` lists are written either way: row i
of a split's arrays is line i of its list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lwrcli.data.arrays import write_arrays
from lwrcli.data.classnames import GivenNames
from lwrcli.data.folder_arrays import auto_array_size, split_arrays
from lwrcli.data.imagecheck import check_images, name_some, refuse_bad
from lwrcli.data.manifest import Manifest, fingerprint, make_manifest, staged_output, write_manifest
from lwrcli.data.profiles import long_tailed_counts
from lwrcli.errors import UserError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_TEST_PER_CLASS = 10  # held out per class when the tree has no test folder
DEFAULT_MIN_PER_CLASS = 5  # train images a class must keep before any profile
SKIPPED_SHOWN = 5  # skipped files named in the summary; the manifest lists them all


def _inside(path: Path, real_root: Path, root: Path) -> None:
    if not path.resolve().is_relative_to(real_root):
        raise UserError(
            f"{path} links outside the dataset root {root}; refusing it (copy the images "
            "into the tree, or point --root at a folder that contains them)."
        )


def scan_tree(
    root: Path, base: Path, classes: list[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """(class names, per-class sorted image paths relative to `base`) of an ImageFolder tree;
    `classes` fixes the class list (a val/test tree must have exactly the train classes)."""
    root, real_root = Path(root), Path(base).resolve()
    found_names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not found_names:
        raise UserError(f"{root} has no class sub-folders; expected ROOT/<class>/<image>.")
    if classes is not None and found_names != classes:
        extra = sorted(set(found_names) - set(classes))
        lacking = sorted(set(classes) - set(found_names))
        raise UserError(
            f"The class folders of {root} differ from the train ones: "
            f"extra {extra[:5]}, missing {lacking[:5]}. Held-out splits need the same classes."
        )
    files: list[list[str]] = []
    for name in found_names:
        folder = root / name
        _inside(folder, real_root, root)  # a class folder may itself be a link
        found = []
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if any(part.startswith(".") for part in p.relative_to(folder).parts):
                continue  # hidden files, and anything in hidden folders (.thumbnails, ...)
            if p.is_symlink():
                _inside(p, real_root, root)
            if p.is_file():
                found.append(p.relative_to(base).as_posix())
        if not found:
            raise UserError(
                f"Class folder {folder} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "remove it or add images."
            )
        files.append(found)
    return found_names, files


def _hold_out(
    per_class: list[list[str]], k: int, rng: np.random.Generator
) -> tuple[list[list[str]], list[list[str]]]:
    """Move k random images of every class into a held-out split (balanced); the caller has
    checked that every class keeps enough (_check_minimum)."""
    held, rest = [], []
    for ps in per_class:
        order = rng.permutation(len(ps))
        held.append(sorted(ps[i] for i in order[:k]))
        rest.append(sorted(ps[i] for i in order[k:]))
    return held, rest


def _check_minimum(
    names: list[str],
    train: list[list[str]],
    held: dict[str, int],
    minimum: int,
    given: bool,
) -> None:
    """Refuse, with the numbers, a class left with fewer than `minimum` train images once
    `held` images per class (test, val) are taken out of it."""
    out = sum(held.values())
    short = [(n, len(ps)) for n, ps in zip(names, train) if len(ps) - out < minimum]
    if not short:
        return
    name, have = min(short, key=lambda item: (item[1], item[0]))
    left = max(have - out, 0)
    where = f"'{name}' has {have} images"
    if out:
        taken = " + ".join(f"{k} {what}" for what, k in held.items() if k)
        where += f"; holding out {taken} per class leaves {left} to train on"
    rule = f"the minimum of {minimum}" if given else f"the default minimum of {minimum}"
    fixes = []
    if held.get("test"):
        most = have - held.get("val", 0) - minimum
        fixes.append(
            f"lower --test-per-class (at most {most} keeps {minimum})"
            if most >= 1
            else "lower --test-per-class"
        )
    if held.get("val"):
        fixes.append("lower --val-per-class")
    if left >= 1:
        fixes.append(f"pass --min-per-class {left} to train on classes this small")
    fixes.append("add images to the class")
    raise UserError(
        f"{len(short)} of {len(names)} classes would keep fewer train images than {rule} "
        f"per class (--min-per-class): {where}. Nothing was written. To go on, "
        + ", or ".join(fixes)
        + "."
    )


def _clip_profile(
    targets: list[int], n_max: int, imbalance_factor: float, profile: str, floor: int | None
) -> list[int]:
    """The profile's counts, at least `floor` each; refuses a profile that keeps no image of
    some class (such a class is never trained on: Balanced Softmax stops, CE ignores it)."""
    if floor is not None:
        return [max(n, floor) for n in targets]
    empty = [c for c, n in enumerate(targets) if n == 0]
    if empty:
        raise UserError(
            f"--imbalance-factor {imbalance_factor:g} with the {profile} profile keeps 0 "
            f"training images for {len(empty)} of {len(targets)} classes (the largest class "
            f"has {n_max} train images, and n_max / IF = {n_max / imbalance_factor:.3g} < 1); "
            "those classes could never be learned. Use --imbalance-factor "
            f"{n_max} or less, or --min-per-class 1 to keep at least one image of every class "
            "(recorded in the manifest)."
        )
    return targets


def count_order(names: list[str], train: list[list[str]]) -> list[int]:
    """Class ids by train count, largest first, ties by folder name: the profile's order."""
    return sorted(range(len(names)), key=lambda c: (-len(train[c]), names[c]))


def _apply_profile(
    names: list[str],
    train: list[list[str]],
    imbalance_factor: float,
    profile: str,
    floor: int | None,
    rng: np.random.Generator,
    notes: list[str],
) -> tuple[list[list[str]], list[int]]:
    """Subsample train to the profile in count order; (new train, the order used)."""
    order = count_order(names, train)
    n_max = len(train[order[0]])
    asked = long_tailed_counts(n_max, len(names), imbalance_factor, profile)
    ranked = _clip_profile(asked, n_max, imbalance_factor, profile, floor)
    targets = [0] * len(names)
    for rank, c in enumerate(order):
        targets[c] = ranked[rank]
    head, tail = order[0], order[-1]
    notes.append(
        f"the {profile} profile (IF {imbalance_factor:g}) is applied in count order, largest "
        f"class first, ties by name: head '{names[head]}' (id {head}, {len(train[head])} "
        f"images) ... tail '{names[tail]}' (id {tail}); class ids stay the sorted folder "
        "names; the manifest's class_order and counts_before_profile record it"
    )
    if ranked != asked:
        notes.append(
            f"the {profile} profile is clipped at {floor} image(s) per class (--min-per-class)"
        )
    short = [c for c, (ps, n) in enumerate(zip(train, targets)) if len(ps) < n]
    if short:
        notes.append(
            f"{len(short)} classes have fewer images than the {profile} profile asks "
            f"and keep all they have (class ids {short[:10]})"
        )
    kept = [
        sorted(rng.permutation(ps)[:n].tolist()) if n < len(ps) else ps
        for ps, n in zip(train, targets)
    ]
    return kept, order


def _held_out_splits(
    root: Path, test_per_class: int | None
) -> tuple[list[str], list[list[str]], dict[str, list[list[str]]], list[str]]:
    """(class names, train per class, the tree's own held-out splits, notes) of either layout."""
    split_files: dict[str, list[list[str]]] = {}
    if not (root / "train").is_dir():
        names, train = scan_tree(root, root)
        return names, train, split_files, ["layout: one class folder per class (ROOT/<class>/)"]
    held = [s for s in ("val", "test") if (root / s).is_dir()]
    if held and test_per_class is not None:
        folders = " and ".join(f"{s}/" for s in held)
        test = "val/" if held == ["val"] else "test/"
        raise UserError(
            f"{root} has train/ and {folders} folders: its {test} folder is the test split, so "
            f"--test-per-class {test_per_class} would be ignored. Drop --test-per-class to use "
            f"the tree's split, or give --root {root / 'train'} to hold test images out of "
            "the train folder instead."
        )
    names, train = scan_tree(root / "train", root)
    for s in held:
        split_files[s] = scan_tree(root / s, root, names)[1]
    if held == ["val"]:
        split_files["test"] = split_files.pop("val")
        notes = ["layout: train/ and val/ folders; the tree's val/ folder is the test split"]
    elif held:
        notes = [
            f"layout: train/ and {' and '.join(f'{s}/' for s in held)} folders, used as the splits"
        ]
    else:
        notes = ["layout: a train/ folder alone, one pool of class folders"]
    return names, train, split_files, notes


def prepare_folder(
    root: Path,
    out: Path,
    imbalance_factor: float | None = None,
    profile: str = "exp",
    seed: int = 0,
    val_per_class: int = 0,
    test_per_class: int | None = None,
    overwrite: bool = False,
    verify: bool = True,
    skip_bad: bool = False,
    progress: bool = True,
    image_size: int | None = None,
    storage: str = "auto",
    given_names: GivenNames | None = None,
    min_per_class: int | None = None,
) -> Manifest:
    """Scan the tree, check every image decodes (`verify`; `skip_bad` leaves broken ones out),
    hold out test/val, check every class keeps `min_per_class` train images (None: the
    default, which does not clip the profile), subsample train long-tailed in count order;
    write `out` atomically (lists of paths relative to `root` plus manifest.json; storage
    `arrays` for small images as the module docstring says, else `lists`)."""
    if storage not in ("auto", "arrays", "lists"):
        raise UserError(f"--storage must be auto, arrays or lists, not '{storage}'.")
    if image_size is not None and not 8 <= image_size <= 1024:
        raise UserError(f"--image-size must be between 8 and 1024 pixels, got {image_size}.")
    if image_size is not None and storage == "lists":
        raise UserError("--image-size stores resized arrays; it cannot go with --storage lists.")
    if skip_bad and not verify:
        raise UserError("--skip-bad needs the image check; drop --no-verify.")
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder.")
    if val_per_class < 0 or (test_per_class is not None and test_per_class < 0):
        raise UserError("--val-per-class and --test-per-class must be >= 0.")
    if min_per_class is not None and min_per_class < 1:
        raise UserError(f"--min-per-class must be >= 1, got {min_per_class}.")
    if imbalance_factor is not None:  # fail on a bad profile before scanning a large tree
        long_tailed_counts(100, 2, imbalance_factor, profile)
    minimum = DEFAULT_MIN_PER_CLASS if min_per_class is None else min_per_class
    rng = np.random.default_rng(seed)
    with staged_output(out, overwrite) as tmp:
        names, train, split_files, notes = _held_out_splits(root, test_per_class)
        if val_per_class > 0 and "val" in split_files:
            raise UserError(
                f"{root} has both val/ and test/ folders; --val-per-class would replace "
                "the val/ folder. Drop --val-per-class."
            )
        skipped: dict[str, str] = {}
        if verify:
            groups = (train, *split_files.values())
            every = [p for per_class in groups for ps in per_class for p in ps]
            skipped = check_images(root, every, progress=progress)
            refuse_bad(skipped, len(every), root, skip_bad)
        if skipped:
            train = [[p for p in ps if p not in skipped] for ps in train]
            for s, per_class in split_files.items():
                split_files[s] = [[p for p in ps if p not in skipped] for ps in per_class]
            empty = [n for n, ps in zip(names, train) if not ps]
            if empty:
                raise UserError(
                    f"Class '{empty[0]}' ({len(empty)} classes in all) has no readable train "
                    "image once --skip-bad leaves out the broken ones; add images or remove it."
                )
            notes.append(
                f"{len(skipped):,} corrupt or unreadable images left out (--skip-bad): "
                f"{name_some(skipped, SKIPPED_SHOWN)}; the manifest's 'skipped' names them all"
            )
        held: dict[str, int] = {}
        if "test" not in split_files:
            k = DEFAULT_TEST_PER_CLASS if test_per_class is None else test_per_class
            if k <= 0:
                raise UserError("The tree has no test folder: give --test-per-class N (N >= 1).")
            held["test"] = k
        if val_per_class > 0:
            held["val"] = val_per_class
        _check_minimum(names, train, held, minimum, min_per_class is not None)
        if "test" in held:
            k = held["test"]
            split_files["test"], train = _hold_out(train, k, rng)
            how = "the default" if test_per_class is None else "given"
            notes.append(
                f"test: {k} random images per class held out of the tree "
                f"(--test-per-class {k}, {how}; seed {seed})"
            )
        if val_per_class > 0:
            split_files["val"], train = _hold_out(train, val_per_class, rng)
            notes.append(
                f"val: {val_per_class} random images per class held out of train "
                f"(--val-per-class {val_per_class})"
            )
        notes.append(
            f"every class kept at least {minimum} train images before any profile "
            f"(--min-per-class {minimum}, {'the default' if min_per_class is None else 'given'})"
        )
        notes.append(f"class ids follow the sorted folder names (id 0 = '{names[0]}')")
        order: list[int] | None = None
        before: list[int] | None = None
        if imbalance_factor is not None:
            before = [len(ps) for ps in train]
            train, order = _apply_profile(
                names, train, imbalance_factor, profile, min_per_class, rng, notes
            )
        split_files["train"] = train
        blobs = {}
        for split, per_class in split_files.items():
            blobs[split] = "".join(f"{p} {c}\n" for c, ps in enumerate(per_class) for p in ps)
            (tmp / f"{split}.txt").write_text(blobs[split], encoding="utf-8")
        encoded = {k: v.encode() for k, v in blobs.items()}
        size = image_size
        if size is None and storage != "lists":
            every = [p for per_class in split_files.values() for ps in per_class for p in ps]
            size = auto_array_size(root, every)
            if size is None and storage == "arrays":
                raise UserError(
                    f"--storage arrays needs images of one square size <= 64 px; {root} has "
                    "others. Give --image-size N to resize them all to N x N."
                )
        fps = (fingerprint(encoded), {k: fingerprint({k: v}) for k, v in encoded.items()})
        if size is not None:
            arrays = {s: split_arrays(root, pc, size) for s, pc in split_files.items()}
            fps = write_arrays(tmp, arrays)
            how = (
                f"resized to {size}x{size} (centre crop of the shorter side, bilinear)"
                if image_size is not None
                else f"all {size}x{size}, stored as they are"
            )
            notes.append(f"images stored as uint8 arrays, {how}; row i is line i of {{split}}.txt")
        name = f"folder-{root.name}" + (f"-ir{imbalance_factor:g}" if imbalance_factor else "")
        manifest = make_manifest(
            name=name,
            source="folder",
            storage="arrays" if size is not None else "lists",
            class_names=names,
            class_names_source="folder names",
            given_names=given_names,
            class_counts=[len(ps) for ps in train],
            splits={s: sum(len(ps) for ps in v) for s, v in split_files.items()},
            test_split="test",
            val_split="val" if "val" in split_files else None,
            imbalance_factor=imbalance_factor,
            profile=profile if imbalance_factor is not None else None,
            seed=seed,
            min_per_class=minimum,
            class_order=order,
            counts_before_profile=before,
            image_root=str(root),
            image_size=size,
            fingerprint=fps[0],
            split_fingerprints=fps[1],
            notes=notes,
            skipped=skipped,
        )
        write_manifest(tmp, manifest)
    return manifest
