import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

import data
from errors import UserInputError


def test_flat_folder_loads_both_classes_as_uint8(image_folder):
    train, test = data.load_image_folder(image_folder)
    assert test is None
    assert train.x.shape == (48, 3, 32, 32) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0] * 24 + [1] * 24
    # the synthetic cats are red and the dogs blue: labels follow the folder names
    assert train.x[train.y == 0, 0].float().mean() > train.x[train.y == 0, 2].float().mean()
    assert train.x[train.y == 1, 2].float().mean() > train.x[train.y == 1, 0].float().mean()


def test_train_test_layout_and_odd_images_are_converted(tmp_path):
    for split in ("train", "test"):
        for name in data.CLASS_NAMES:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("L", (50, 40), 128).save(tmp_path / split / name / "gray.png")
            Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(tmp_path / split / name / "rgba.png")
    train, test = data.load_image_folder(tmp_path)
    assert train.x.shape == test.x.shape == (4, 3, 32, 32)
    assert int(train.x[0, :, 5, 5].float().std()) == 0  # gray stays gray after conversion to RGB


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
    for name in data.CLASS_NAMES:
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / name / "ok.png")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "cat" / "notes.txt").write_text("ignored: not an image suffix")
    train, _ = data.load_image_folder(tmp_path)
    assert len(train) == 2
    assert "skipped 1 unreadable" in caplog.text


def test_an_image_whose_header_claims_too_many_pixels_is_skipped_like_any_unreadable_file(tmp_path, caplog):
    """Before: PIL's DecompressionBombError ended the run with a 41-line traceback."""
    for name in data.CLASS_NAMES:
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32)).save(tmp_path / name / "ok.png")
    bomb = tmp_path / "cat" / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 megapixels: past PIL's limit of twice 89 million
    train, _ = data.load_image_folder(tmp_path)
    assert len(train) == 2 and "skipped 1 unreadable" in caplog.text


def test_class_folders_in_any_case_are_found_and_named(tmp_path):
    """Before: Cat/ and Dog/ (as pet datasets name them) got "no class folders"."""
    for name in ("Cat", "DOG"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (32, 32)).save(tmp_path / name / f"{i}.png")
    train, _ = data.load_image_folder(tmp_path)
    assert len(train) == 4 and train.y.tolist() == [0, 0, 1, 1]
    assert train.source == f"cat from {tmp_path / 'Cat'}, dog from {tmp_path / 'DOG'}"
    assert train.subset(torch.tensor([0])).source == train.source


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "does not exist"),
        ({"cat": 1}, "no class folders"),
        ({"cat": 1, "dog": 0}, "no readable images"),
        ({"cat": 1, "dog/nested": 1}, r"no readable images .*sub-folders are not searched"),
        ({"train/cat": 1, "train/dog": 1, "test/cat": 1}, r"test split .*test has cat/ but no dog/: add it, or remove"),
    ],
)
def test_bad_folders_give_one_clear_error(tmp_path, layout, message):
    root = tmp_path / "d"
    for name, n in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32)).save(root / name / f"{i}.png")
    with pytest.raises(UserInputError, match=message):
        data.load_image_folder(root)


def test_a_file_for_a_data_dir_and_a_split_too_small_to_train_on_are_refused_in_one_line(tmp_path, image_folder):
    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(UserInputError, match="is not a folder"):
        data.load_image_folder(tmp_path / "file.txt")
    options = dict(download_root=tmp_path, holdout_fraction=0.1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UserInputError, match="too few images to train on: 1 cat and 1 dog; a run needs at least 10"):
        data.load_dataset(image_folder, max_images=3, **options)  # was a RuntimeError from torch.randint
    # before: 5 images trained to the end on 3 training and 2 held-out images (40% held out), without a word
    with pytest.raises(UserInputError, match="too few images to train on: 9 cat and 9 dog"):
        data.load_dataset(image_folder, max_images=18, **options)
    train, held = data.load_dataset(image_folder, max_images=20, **options)
    assert len(train) == 18 and len(held) == 2  # the 10% asked for


def test_a_hold_out_share_too_small_for_a_class_is_one_image_and_said(image_folder, tmp_path, caplog):
    options = dict(download_root=tmp_path, max_images=None, generator=torch.Generator().manual_seed(0))
    train, held = data.load_dataset(image_folder, holdout_fraction=0.01, **options)
    assert len(held) == 2 and len(train) == 46
    assert "holding out 1 of 24 cat images (4%, not the 1% asked)" in caplog.text


def test_class_index_accepts_names_and_indices():
    assert [data.class_index(v) for v in (0, 1, "cat", "DOG", " Cat ", "1", np.int64(0))] == [0, 1, 0, 1, 0, 1, 0]
    for bad in (2, -1, "horse", 1.0, True, None):
        with pytest.raises(UserInputError):
            data.class_index(bad)


def test_holdout_split_is_disjoint_stratified_and_seeded(image_folder):
    full, _ = data.load_image_folder(image_folder)
    full = data.Split(full.x, full.y)
    a_train, a_held = data.split_holdout(full, 0.25, torch.Generator().manual_seed(3))
    b_train, b_held = data.split_holdout(full, 0.25, torch.Generator().manual_seed(3))
    assert torch.equal(a_held.x, b_held.x)
    assert len(a_train) + len(a_held) == len(full)
    assert a_held.y.tolist().count(0) == a_held.y.tolist().count(1) == 6
    train_rows = {tuple(r.flatten().tolist()[:64]) for r in a_train.x}
    assert not any(tuple(r.flatten().tolist()[:64]) in train_rows for r in a_held.x)


def test_augment_keeps_shape_range_and_is_reproducible():
    x = data.to_model_range(torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8))
    a = data.augment(x, torch.Generator().manual_seed(0))
    b = data.augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, x)
    flipped = data.augment(x, torch.Generator().manual_seed(1), max_shift=0)
    kept = [torch.equal(f, i) for f, i in zip(flipped, x)]
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x)]
    assert all(k or m for k, m in zip(kept, mirrored)) and any(mirrored) and any(kept)  # flips only, about half


def test_ranges_round_trip():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(data.to_unit_range(data.to_model_range(x)) * 255, x.float(), atol=1e-4)


def test_offline_cifar_download_names_data_dir(monkeypatch, tmp_path):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserInputError, match="--data-dir"):
        data.load_cifar_catdog(tmp_path)


def test_cifar_filter_keeps_cats_and_dogs(monkeypatch, tmp_path):
    import torchvision

    class FakeCIFAR:
        def __init__(self, *args, **kwargs):
            self.data = np.arange(6 * 32 * 32 * 3, dtype=np.uint8).reshape(6, 32, 32, 3)
            self.targets = [3, 5, 0, 5, 9, 3]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    split = data.load_cifar_catdog(tmp_path)
    assert split.y.tolist() == [0, 1, 1, 0]
    assert split.x.shape == (4, 3, 32, 32)


def fake_cifar_copy(root, per_batch: int = 40, seed: int = 0):
    """A small copy of torchvision's CIFAR-10 folder: five training batches and a test batch of random images, the
    labels cycling through the ten classes."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = root / data.CIFAR_BATCHES
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"data": images, b"labels": [i % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def test_torchvisions_cifar_copy_is_a_data_dir_and_a_reference_dir(tmp_path, image_folder):
    """Offline users mostly have torchvision's cifar-10-batches-py; --data-dir and --eval-reference-dir read it."""
    folder = fake_cifar_copy(tmp_path)
    for root in (tmp_path, folder):  # the folder that holds it (a --download-dir), or the folder itself
        train, test = data.load_image_folder(root)
        assert len(train) == 5 * 8 and len(test) == 8  # 4 cats (label 3) and 4 dogs (label 5) in each batch of 40
        assert train.y.tolist().count(0) == 20 and train.x.dtype == torch.uint8 and train.x.shape[1:] == (3, 32, 32)
    with open(folder / "data_batch_1", "rb") as f:
        import pickle

        first = pickle.load(f)
    cat = torch.from_numpy(first[b"data"][3].reshape(3, 32, 32))  # the first cat of the first batch, channels first
    assert torch.equal(train.x[0], cat)
    ref, names = data.load_labelled_folders([folder, image_folder])  # merged with a folder of cat/ and dog/
    assert names == data.CIFAR10_CLASSES
    counts = torch.bincount(ref.y, minlength=10).tolist()
    assert counts[3] == counts[5] == 20 + 24 and counts[0] == 20
    (folder / "data_batch_3").write_bytes(b"damaged")
    with pytest.raises(UserInputError, match="cannot read CIFAR-10 batch .*data_batch_3"):
        data.load_image_folder(folder)
