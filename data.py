"""Where images come from: CIFAR-10 cats and dogs (torchvision download) or a local folder of images.

Every loader returns uint8 tensors `x` of shape (N, 3, 32, 32) and int64 labels `y` of shape (N,),
with 0 = cat and 1 = dog.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from errors import UserInputError

log = logging.getLogger(__name__)

CLASS_NAMES = ("cat", "dog")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_LABELS = tuple(CIFAR10_CLASSES.index(name) for name in CLASS_NAMES)  # (3, 5)
IMAGE_SIZE = 32
CIFAR_BATCHES = "cifar-10-batches-py"  # the folder of torchvision's CIFAR-10 copy (python pickles)
MIN_IMAGES_PER_CLASS = 10  # the fewest images of a class to train on: one held out at 10%, nine to learn from
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Split:
    """Images and labels of one split, kept as uint8 tensors."""

    x: torch.Tensor  # (N, 3, 32, 32) uint8
    y: torch.Tensor  # (N,) int64
    source: str = ""  # where the classes were read from, for the log

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "Split":
        """Return the rows `idx` as a new split."""
        return Split(self.x[idx], self.y[idx], self.source)


def class_index(name_or_index: int | str) -> int:
    """Map 'cat'/'dog' (any case) or 0/1 to a class index; anything else is a UserInputError."""
    if isinstance(name_or_index, str):
        key = name_or_index.strip().lower()
        if key.isdigit():
            return class_index(int(key))
        if key not in CLASS_NAMES:
            raise UserInputError(
                f"unknown class {name_or_index!r}: use one of {', '.join(CLASS_NAMES)} or 0-{len(CLASS_NAMES) - 1}"
            )
        return CLASS_NAMES.index(key)
    if isinstance(name_or_index, bool) or not isinstance(name_or_index, (int, np.integer)):
        raise UserInputError(f"class must be an int or a name, got {type(name_or_index).__name__}")
    if not 0 <= int(name_or_index) < len(CLASS_NAMES):
        raise UserInputError(f"class index {name_or_index} out of range: use 0 (cat) or 1 (dog)")
    return int(name_or_index)


def load_cifar10(root: str | Path, *, train: bool = True, download: bool = True) -> Split:
    """All of CIFAR-10 (labels 0-9 in CIFAR10_CLASSES order) through torchvision, downloaded if needed."""
    import torchvision  # imported here: only this loader needs it

    existed = Path(root).exists()
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a missing offline copy is a RuntimeError
        if not existed and Path(root).is_dir() and not any(Path(root).iterdir()):
            Path(root).rmdir()  # the failed download's empty folder: nothing left behind in the user's folder
        raise UserInputError(
            f"could not download CIFAR-10 to {root} ({err.__class__.__name__}: {err}); "
            "offline, pass --data-dir DIR with cat/ and dog/ image folders"
        ) from None
    return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets))


def load_cifar_catdog(root: str | Path, *, train: bool = True, download: bool = True) -> Split:
    """CIFAR-10's cats and dogs, relabelled 0/1."""
    return catdog(load_cifar10(root, train=train, download=download))


def _read_image(path: Path) -> np.ndarray | None:
    """Read one image as (32, 32, 3) uint8, converting mode and size; None if it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None  # a header claiming more pixels than PIL's safety limit is refused like any unreadable file


def _read_class_folder(folder: Path) -> tuple[list[np.ndarray], int]:
    """Read every image file in `folder`; return the arrays and the number of unreadable files."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images = [_read_image(p) for p in files]
    good = [img for img in images if img is not None]
    return good, len(images) - len(good)


def _load_class_folders(folders: list[Path]) -> Split:
    """Load one folder per class (label = position in `folders`) into one split; corrupt files are skipped and
    counted, a folder without a readable image is a UserInputError."""
    xs, ys = [], []
    for label, folder in enumerate(folders):
        images, bad = _read_class_folder(folder)
        if bad:
            log.warning("skipped %d unreadable image file(s) in %s", bad, folder)
        if not images:
            nested = any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("*/**/*"))
            hint = "; its sub-folders hold images, but sub-folders are not searched" if nested else ""
            raise UserInputError(
                f"class folder {folder} has no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}){hint}"
            )
        xs.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
        ys.append(torch.full((len(images),), label, dtype=torch.long))
    return Split(torch.cat(xs).contiguous(), torch.cat(ys))


def _class_folder(root: Path, name: str) -> Path | None:
    """`root`'s sub-folder for class `name`, in any case (`Cat/` as pet datasets name it); None if there is none."""
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower() == name) if root.is_dir() else []
    return found[0] if found else None


def _load_split_folder(root: Path) -> Split:
    """Load `root/cat` and `root/dog` (any case) into one split that names the folders it read."""
    folders = [_class_folder(root, name) for name in CLASS_NAMES]
    data = _load_class_folders(folders)
    data.source = ", ".join(f"{name} from {folder}" for name, folder in zip(CLASS_NAMES, folders))
    return data


def cifar_batches(root: str | Path) -> Path | None:
    """torchvision's own CIFAR-10 copy at `root`: the folder `cifar-10-batches-py` itself or the folder holding it
    (what `--download-dir` holds after a download); None if neither."""
    root = Path(root)
    for folder in (root, root / CIFAR_BATCHES):
        if (folder / "data_batch_1").is_file():
            return folder
    return None


def read_cifar_batches(folder: Path, *, train: bool) -> Split:
    """All ten classes of CIFAR-10's python batches in `folder` (data_batch_1..5, or test_batch)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        try:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise UserInputError(f"cannot read CIFAR-10 batch {folder / name} ({type(err).__name__}: {err})") from None
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def catdog(data: Split) -> Split:
    """CIFAR-10's cats and dogs (labels in CIFAR10_CLASSES order), relabelled 0/1."""
    keep = (data.y == CIFAR_LABELS[0]) | (data.y == CIFAR_LABELS[1])
    return Split(data.x[keep].contiguous(), (data.y[keep] == CIFAR_LABELS[1]).long())


def load_labelled_folders(roots: list[str | Path]) -> tuple[Split, tuple[str, ...]]:
    """Images in one sub-folder per class, gathered over several roots (a class may appear in only one root); a root
    may also be torchvision's CIFAR-10 copy (its training batches, all ten classes): returns the split and the class
    names, in CIFAR-10's order where they are CIFAR-10 classes, then by name."""
    folders: dict[str, list[Path]] = {}
    arrays: dict[str, list[torch.Tensor]] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise UserInputError(f"reference dir {root} does not exist")
        batches = cifar_batches(root)
        if batches is not None:
            data = read_cifar_batches(batches, train=True)
            for label, name in enumerate(CIFAR10_CLASSES):
                arrays.setdefault(name, []).append(data.x[data.y == label])
                folders.setdefault(name, [])
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            folders.setdefault(sub.name.lower(), []).append(sub)
    order = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    names = tuple(sorted(folders, key=lambda n: (order.get(n, len(order)), n)))
    missing = [n for n in CLASS_NAMES if n not in folders]
    if missing:
        raise UserInputError(
            f"reference dirs {', '.join(map(str, roots))} have no {' or '.join(missing)} folder: "
            "expected one sub-folder per class, cat/ and dog/ among them"
        )
    parts = [
        torch.cat([*arrays.get(name, []), *([_load_class_folders(folders[name]).x] if folders[name] else [])])
        for name in names
    ]
    y = torch.cat([torch.full((len(x),), label, dtype=torch.long) for label, x in enumerate(parts)])
    return Split(torch.cat(parts), y), names


def _has_class_folders(root: Path) -> bool:
    return all(_class_folder(root, name) is not None for name in CLASS_NAMES)


def load_image_folder(root: str | Path) -> tuple[Split, Split | None]:
    """Load a local folder: `root/{cat,dog}` or `root/train/{cat,dog}` with optional `root/test/{cat,dog}`.

    Images of any size or mode are converted to RGB and resized to 32x32. Returns (train, test or None).
    """
    root = Path(root)
    if not root.exists():
        raise UserInputError(f"data dir {root} does not exist")
    if not root.is_dir():
        raise UserInputError(f"data dir {root} is not a folder: pass the folder that holds cat/ and dog/")
    batches = cifar_batches(root)
    if batches is not None:  # torchvision's CIFAR-10 copy: its training cats and dogs, and its test split's
        test = catdog(read_cifar_batches(batches, train=False)) if (batches / "test_batch").is_file() else None
        return catdog(read_cifar_batches(batches, train=True)), test
    if _has_class_folders(root):
        return _load_split_folder(root), None
    if _has_class_folders(root / "train"):
        test_dir = root / "test"
        partial = [name for name in CLASS_NAMES if _class_folder(test_dir, name) is not None]
        if partial and not _has_class_folders(test_dir):
            missing = [name for name in CLASS_NAMES if name not in partial]
            raise UserInputError(
                f"test split {test_dir} has {'/ and '.join(partial)}/ but no {'/ or '.join(missing)}/: add it, or "
                f"remove {test_dir} to hold out part of train instead"
            )
        test = _load_split_folder(test_dir) if partial else None
        return _load_split_folder(root / "train"), test
    raise UserInputError(
        f"data dir {root} has no class folders: expected {root}/cat and {root}/dog "
        f"(or {root}/train/cat and {root}/train/dog; any case)"
    )


def split_holdout(
    data: Split, fraction: float, generator: torch.Generator, names: tuple[str, ...] = CLASS_NAMES
) -> tuple[Split, Split]:
    """Split off a random, class-stratified `fraction` of `data` for validation (at least one image a class; `names`:
    the classes' names by label, for the warning when that is more than `fraction`)."""
    if not 0.0 < fraction < 1.0:
        raise UserInputError(f"holdout fraction must be in (0, 1), got {fraction}")
    train_idx, held_idx = [], []
    for label in data.y.unique().tolist():  # every label present (0 and 1 for cats and dogs)
        idx = torch.nonzero(data.y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_held = round(fraction * len(idx))
        if n_held < 1:  # every class needs a held-out image to be scored; say that the share is not the one asked
            n_held = 1
            log.warning(
                "holding out 1 of %d %s images (%.0f%%, not the %.0f%% asked): each class needs one held-out image",
                len(idx),
                names[label],
                100 / len(idx),
                100 * fraction,
            )
        held_idx.append(idx[:n_held])
        train_idx.append(idx[n_held:])
    return data.subset(torch.cat(train_idx).sort().values), data.subset(torch.cat(held_idx).sort().values)


def limit_per_class(data: Split, max_images: int, generator: torch.Generator) -> Split:
    """Keep at most `max_images` images in total, half of each class, chosen at random."""
    per_class = max(1, max_images // len(CLASS_NAMES))
    keep = []
    for label in range(len(CLASS_NAMES)):
        idx = torch.nonzero(data.y == label).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return data.subset(torch.cat(keep).sort().values)


def check_enough_images(data: Split) -> None:
    """Refuse a training set with fewer than MIN_IMAGES_PER_CLASS images of a class, in one line."""
    counts = [int((data.y == label).sum()) for label in range(len(CLASS_NAMES))]
    if min(counts) < MIN_IMAGES_PER_CLASS:
        raise UserInputError(
            f"too few images to train on: {' and '.join(f'{n} {c}' for n, c in zip(counts, CLASS_NAMES))}; a run needs "
            f"at least {MIN_IMAGES_PER_CLASS} of each class (one held out at the default 10%, nine to learn from): add "
            "images, or raise --max-images"
        )


def load_dataset(
    data_dir: str | Path | None,
    *,
    download_root: str | Path,
    holdout_fraction: float,
    max_images: int | None,
    generator: torch.Generator,
) -> tuple[Split, Split]:
    """Return (train, held-out) splits from a local folder or CIFAR-10, as the run options say."""
    if data_dir is None:
        train, test = load_cifar_catdog(download_root, train=True), load_cifar_catdog(download_root, train=False)
    else:
        train, test = load_image_folder(data_dir)
    if max_images is not None:
        train = limit_per_class(train, max_images, generator)
        test = None if test is None else limit_per_class(test, max(2, int(max_images * holdout_fraction)), generator)
    check_enough_images(train)
    if test is None:
        train, test = split_holdout(train, holdout_fraction, generator)
    empty = [name for label, name in enumerate(CLASS_NAMES) if not (train.y == label).any()]
    if empty:
        raise UserInputError(
            f"no training image of {' or '.join(empty)} is left after holding out {len(test)} of "
            f"{len(train) + len(test)} images: too few to train on; raise --max-images or add images"
        )
    return train, test


def split_fingerprint(train: Split, held: Split) -> str:
    """A hash of the images and labels of both splits: equal exactly when the same images fall on the same side."""
    digest = hashlib.sha1()
    for split in (train, held):
        digest.update(split.x.contiguous().numpy().tobytes())
        digest.update(split.y.numpy().tobytes())
    return digest.hexdigest()


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float images in [-1, 1], the range the VAE works in."""
    return x.float().div(127.5).sub(1.0)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] -> float images clamped to [0, 1], the range users get."""
    return x.add(1.0).div(2.0).clamp(0.0, 1.0)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and small translations (reflect padding), on x's device, per image."""
    n = x.shape[0]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if max_shift == 0:
        return x
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="reflect")
    shifts = torch.randint(0, 2 * max_shift + 1, (2, n), device=x.device, generator=generator)
    rows = torch.arange(IMAGE_SIZE, device=x.device)[None, :] + shifts[0][:, None]  # (N, 32)
    cols = torch.arange(IMAGE_SIZE, device=x.device)[None, :] + shifts[1][:, None]  # (N, 32)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, 32, 32, C)
    return out.permute(0, 3, 1, 2).contiguous()
