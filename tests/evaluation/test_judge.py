"""The ten-way judge and the numbers it gives: reference images, caching, precision/recall, blur, calibration."""

import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation.judge as judge_module
from conftest import make_images
from data import Split, load_image_folder, load_labelled_folders, to_model_range, to_unit_range
from errors import UserInputError
from evaluation.classifier import JudgeClassifier
from evaluation.evaluate import Features, blind_check, calibration_sets, equal_n, score_set
from evaluation.judge import JUDGE_FILE, get_judge, image_keys, load_reference
from evaluation.metrics import colour_descriptor, frechet_distance, gaussian_blur, precision_recall, saturate
from visualization.samples import save_sample_sheet

JUDGE_OPTIONS = dict(
    classifier_epochs=1, classifier_batch_size=16, classifier_lr=3e-3, judge_width=8, retrain_classifier=False
)


def textured(n: int, seed: int, color: int) -> torch.Tensor:
    """n images (n, 3, 32, 32) in [0, 1]: per-pixel noise on a dominant colour (what blur takes away is the noise)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3, 32, 32), generator=gen) * 0.35
    x[:, color] += 0.6
    return x


@pytest.fixture(scope="module")
def random_judge() -> JudgeClassifier:
    """An untrained judge (fixed seed): its random conv features already see texture, which is all these tests need."""
    torch.manual_seed(0)
    return JudgeClassifier(num_classes=2, width=8).eval()


def test_precision_and_recall_separate_matching_shifted_and_collapsed_feature_sets():
    gen = torch.Generator().manual_seed(0)
    real, same = torch.randn(600, 8, generator=gen), torch.randn(600, 8, generator=gen)
    p, r = precision_recall(real, same)
    assert p > 0.85 and r > 0.85
    p_shift, r_shift = precision_recall(real, same + 1.5)
    assert p_shift < p - 0.3 and r_shift < r - 0.3
    collapsed = same[:10].repeat(60, 1) + 1e-3 * torch.randn(600, 8, generator=gen)  # 10 distinct points
    p_few, r_few = precision_recall(real, collapsed)
    assert p_few >= 0.7 and r_few < 0.2  # 8 of the 10 points lie inside the real manifold here


def test_gaussian_blur_keeps_flat_images_and_mean_and_removes_noise():
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat, atol=1e-6)
    noise = torch.rand((4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    blurred = gaussian_blur(noise, 1.0)
    assert blurred.shape == noise.shape
    assert blurred.mean().item() == pytest.approx(noise.mean().item(), abs=0.01)
    assert blurred.std() < 0.5 * noise.std() and gaussian_blur(noise, 0.7).std() > blurred.std()


def test_frechet_distance_on_too_few_images_says_so_in_one_line(caplog, monkeypatch):
    import evaluation.metrics

    monkeypatch.setattr(evaluation.metrics, "_WARNED_DIMS", set())
    x = np.random.default_rng(0).normal(size=(20, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy LinAlgWarning
        with caplog.at_level(logging.WARNING):
            value = frechet_distance(x, x[::-1].copy())
            frechet_distance(x[:10], x)  # every later small set: no further line
    assert np.isfinite(value)
    assert len(caplog.records) == 1 and "fewer images than its 64 dimensions" in caplog.records[0].getMessage()
    assert np.isnan(frechet_distance(x[:1], x))


def test_a_set_scores_fd_zero_and_full_recall_against_itself(random_judge):
    images = [textured(200, 0, 0), textured(200, 1, 2)]
    scores = score_set([(x, x) for x in images], Features(random_judge), ("cat", "dog"))
    for c in ("cat", "dog"):
        assert scores[c]["fd"] == pytest.approx(0.0, abs=1e-4)
        assert scores[c]["precision"] == 1.0 and scores[c]["recall"] == 1.0
        assert scores[c]["n"] == 200 and sum(v for _, v in scores[c]["called"]) <= 1.0


def test_rows_scored_at_one_n_compare_where_plain_fd_is_biased_by_the_sample_count():
    """The same distribution drawn 1,000 and 200 times: plain FD against one reference differs by a factor of two (its
    small-n bias), and scoring both sets at the same n (chunks of 200, averaged) removes the difference."""

    def identity_features(images):  # a judge whose features are the pixels: FD's bias is then plain to see
        return torch.zeros(len(images), dtype=torch.long), images.flatten(1)

    g = torch.Generator().manual_seed(0)
    ref, big, small = (torch.rand(n, 3, 4, 4, generator=g) for n in (500, 1000, 200))
    plain = [frechet_distance(x.flatten(1).numpy(), ref.flatten(1).numpy()) for x in (big, small)]
    assert plain[1] > 2 * plain[0]
    n = equal_n(200, [big, small])
    scored = [score_set([(x, ref)] * 2, identity_features, ("cat", "dog"), n=n)["cat"] for x in (big, small)]
    assert n == 200 and [s["n"] for s in scored] == [200, 200] and [s["chunks"] for s in scored] == [5, 1]
    assert scored[0]["fd"] == pytest.approx(scored[1]["fd"], rel=0.1)
    assert scored[0]["recall"] == pytest.approx(scored[1]["recall"], abs=0.05)
    default = score_set([(big, ref)] * 2, identity_features, ("cat", "dog"))["cat"]  # default n: the reference's size
    assert default["n"] == 500 and default["chunks"] == 2


def test_calibration_ranks_blur_and_stereotype_below_real_images(random_judge):
    """FD and recall see blur and a lack of variety; precision cannot see the stereotype (it is made of real images)."""
    real = [textured(240, 0, 0), textured(240, 1, 2)]
    sets = calibration_sets(real, [gaussian_blur(x, 0.5) for x in real], torch.Generator().manual_seed(0))
    features = Features(random_judge)
    calibration = {name: score_set(pairs, features, ("cat", "dog")) for name, pairs in sets.items()}
    real_row, blur, stereo = (
        calibration["real held-out, half vs half"],
        calibration["blurred, sigma 1.0"],
        calibration["stereotype, 20 images repeated"],
    )
    for c in ("cat", "dog"):
        assert blur[c]["fd"] > 3 * real_row[c]["fd"] and stereo[c]["fd"] > 2 * real_row[c]["fd"]
        assert blur[c]["recall"] < real_row[c]["recall"] - 0.3 and stereo[c]["recall"] < real_row[c]["recall"] - 0.3
        assert stereo[c]["precision"] == 1.0
        assert calibration["blurred, sigma 0.7"][c]["fd"] < blur[c]["fd"]
        assert real_row[c]["n"] == 120 and stereo[c]["n"] == 240
    seen = blind_check(calibration)
    assert {"blurred, sigma 1.0", "stereotype, 20 images repeated"} <= set(seen["fd"]) and seen["recall"]
    assert "stereotype, 20 images repeated" not in seen["precision"]
    assert "colour saturated x2" in seen["colour_fd"]
    train = [textured(300, 10, 0), textured(300, 11, 2)]  # other images of the same two textures
    with_train = calibration_sets(real, real, torch.Generator().manual_seed(0), train)
    assert list(with_train)[1] == "real training images"
    floor = score_set(with_train["real training images"], features, ("cat", "dog"))
    assert all(floor[c]["n"] == 240 and floor[c]["fd"] < blur[c]["fd"] for c in ("cat", "dog"))


def test_colour_fd_sees_saturation_and_greyscale_and_not_a_resample():
    gen = torch.Generator().manual_seed(0)
    tint = torch.rand(600, 3, 1, 1, generator=gen) * 0.6
    real = (tint + 0.3 * torch.rand(600, 3, 32, 32, generator=gen)).clamp(0, 1)  # images of varied colour
    a, b = real[:300], real[300:]

    def colour_fd(x, y):
        return frechet_distance(colour_descriptor(x).numpy(), colour_descriptor(y).numpy())

    floor = colour_fd(a, b)
    assert colour_fd(saturate(a, 2.0), b) > 10 * floor and colour_fd(saturate(a, 0.0), b) > 10 * floor
    assert torch.allclose(saturate(a, 1.0), a) and colour_descriptor(a).shape == (300, 7)


def test_sample_sheet_holds_every_class_block_enlarged(tmp_path):
    images = [textured(64, 0, 0), textured(64, 1, 2)]
    path = save_sample_sheet(images, ("cat", "dog"), tmp_path / "sheet.png", scale=3)
    sheet = np.asarray(Image.open(path))
    block = (8 * 33 + 1) * 3  # 8 images of 32 pixels with 1-pixel gaps, 3x
    assert sheet.shape[1] == block and sheet.shape[0] == 2 * (block + 40)
    # the first cat sits under the first label, enlarged 3x with nearest neighbour
    first = sheet[40 + 3 : 40 + 3 + 96 : 3, 3 : 3 + 96 : 3]
    expected = (images[0][0].permute(1, 2, 0) * 255).round().numpy()
    assert np.abs(first.astype(float) - expected).max() <= 1


def test_reconstruction_sheet_puts_each_original_left_of_its_reconstruction(tmp_path):
    from visualization.samples import save_reconstruction_sheet

    originals, recons = [textured(10, 0, 0), textured(10, 1, 2)], [textured(10, 2, 0), textured(10, 3, 2)]
    sheet = np.asarray(Image.open(save_reconstruction_sheet(originals, recons, ("cat", "dog"), tmp_path / "r.png")))
    cell = 33 * 4  # a 32-pixel image and its 1-pixel gap, 4x
    assert sheet.shape[1] == 16 * cell + 4  # 8 pairs a row
    for column, expected in ((0, originals[0][0]), (1, recons[0][0]), (2, originals[0][1])):
        got = sheet[40 + 4 : 40 + 4 + 128 : 4, column * cell + 4 : column * cell + 4 + 128 : 4]
        assert np.abs(got.astype(float) - (expected.permute(1, 2, 0) * 255).round().numpy()).max() <= 1


def reference_dirs(image_folder, tmp_path):
    """The run's cat/dog folder plus a second root with two more classes (one CIFAR-10 name, one not)."""
    make_images(tmp_path / "others" / "frog", 20, 5, color=1)
    make_images(tmp_path / "others" / "Airplane", 20, 6, color=1)
    return [str(image_folder), str(tmp_path / "others")]


def test_labelled_folders_merge_roots_in_cifar_order_and_need_cats_and_dogs(image_folder, tmp_path):
    data, classes = load_labelled_folders(reference_dirs(image_folder, tmp_path))
    assert classes == ("airplane", "cat", "dog", "frog")
    assert torch.bincount(data.y).tolist() == [20, 24, 24, 20]
    with pytest.raises(UserInputError, match="no cat"):
        load_labelled_folders([str(tmp_path / "others")])
    with pytest.raises(UserInputError, match="does not exist"):
        load_labelled_folders([str(tmp_path / "missing")])


def test_reference_keeps_the_runs_held_out_images_out_of_the_judges_training(image_folder, tmp_path):
    everything, _ = load_image_folder(image_folder)
    held = everything.subset(torch.tensor([0, 1, 30, 31]))
    train = everything.subset(torch.tensor([i for i in range(len(everything)) if i not in (0, 1, 30, 31)]))
    ref = load_reference(
        reference_dirs(image_folder, tmp_path), str(image_folder), "unused", train, held, torch.Generator()
    )
    assert ref.classes == ("airplane", "cat", "dog", "frog")
    assert not set(image_keys(ref.train.x)) & set(image_keys(held.x))
    assert len(ref.train) == 44 + 18 + 18  # cats and dogs but the held-out 4; 90% of each other class
    # judged on: the run's held-out images relabelled to the judge's classes, and 2 of each other class
    assert ref.held.y.tolist()[:4] == [1, 1, 2, 2] and torch.bincount(ref.held.y).tolist() == [2, 2, 2, 2]


def test_without_reference_dirs_an_offline_run_gets_a_two_way_judge_with_a_warning(image_folder, caplog):
    data, _ = load_image_folder(image_folder)
    with caplog.at_level(logging.WARNING):
        ref = load_reference(None, str(image_folder), "unused", data, data, torch.Generator())
    assert ref.classes == ("cat", "dog") and "--eval-reference-dir" in caplog.text


def test_judge_is_cached_and_retrained_only_when_its_images_or_options_change(image_folder, tmp_path, monkeypatch):
    data, _ = load_image_folder(image_folder)
    ref = judge_module.Reference(data, data, ("cat", "dog"), "test")
    cfg = SimpleNamespace(**JUDGE_OPTIONS)
    first = get_judge(tmp_path, ref, cfg, torch.device("cpu"), seed=0)
    assert (tmp_path / JUDGE_FILE).is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge should have been loaded")

    monkeypatch.setattr(judge_module, "train_classifier", no_training)
    again = get_judge(tmp_path, ref, cfg, torch.device("cpu"), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    for changed_ref, changed_cfg, seed in (
        (judge_module.Reference(data.subset(torch.arange(40)), data, ("cat", "dog"), "test"), cfg, 0),
        (ref, SimpleNamespace(**{**JUDGE_OPTIONS, "classifier_epochs": 2}), 0),
        (ref, cfg, 1),
        (ref, SimpleNamespace(**{**JUDGE_OPTIONS, "retrain_classifier": True}), 0),
    ):
        with pytest.raises(AssertionError, match="cached judge"):
            get_judge(tmp_path, changed_ref, changed_cfg, torch.device("cpu"), seed)


def test_the_shape_judge_is_cached_beside_the_photo_judge_whose_cache_stays_valid(image_folder, tmp_path, monkeypatch):
    data, _ = load_image_folder(image_folder)
    ref = judge_module.Reference(data, data, ("cat", "dog"), "test")
    cfg = SimpleNamespace(**JUDGE_OPTIONS)
    photo = get_judge(tmp_path, ref, cfg, torch.device("cpu"), seed=0)
    shape = get_judge(tmp_path, ref, cfg, torch.device("cpu"), seed=0, view="shape")
    assert (tmp_path / "judge_shape.pt").is_file() and (tmp_path / JUDGE_FILE).is_file()
    assert photo.view == "photo" and shape.view == "shape"
    monkeypatch.setattr(judge_module, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached judge"))
    assert get_judge(tmp_path, ref, cfg, torch.device("cpu"), seed=0, view="shape").view == "shape"  # from its cache
    # a photo judge cached before views existed has the same fingerprint: it is not retrained
    assert judge_module.fingerprint(ref, cfg, 0) == judge_module.fingerprint(ref, cfg, 0, "photo")
    assert judge_module.fingerprint(ref, cfg, 0, "shape") != judge_module.fingerprint(ref, cfg, 0)


def test_judge_accuracy_counts_each_class_of_the_held_out_images(random_judge):
    images = torch.cat([textured(10, 0, 0), textured(10, 1, 2)])
    held = Split((images * 255).round().to(torch.uint8), torch.tensor([0] * 10 + [1] * 10))
    ref = judge_module.Reference(held, held, ("cat", "dog"), "test")
    pred = random_judge(to_model_range(held.x)).argmax(1)
    acc = judge_module.judge_accuracy(random_judge, ref, to_unit_range(to_model_range(held.x)))
    assert acc["overall"] == pytest.approx((pred == held.y).float().mean().item())
    assert acc["per_class"]["cat"] == pytest.approx((pred[:10] == 0).float().mean().item())
