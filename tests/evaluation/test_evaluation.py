import json
import numpy as np
import pytest
import torch

from data import load_image_folder, to_model_range, to_unit_range
from evaluation.classifier import classify, train_classifier
from evaluation.metrics import InceptionMetrics, frechet_distance, ssim
from models.batched import psnr
from PIL import Image

from conftest import make_images, run_main


def test_psnr_and_ssim_known_values():
    a = torch.full((2, 3, 32, 32), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-3)
    assert ssim(a, a) == pytest.approx(1.0) and ssim(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)) < 0.2


def test_frechet_distance_is_zero_for_the_same_gaussian_and_the_squared_shift_otherwise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x + 2.0) == pytest.approx(8 * 4.0, rel=1e-3)


def test_judge_classifier_learns_a_separable_task(image_folder):
    """15 epochs (45 steps here), the default: after 8, BatchNorm's running statistics could still leave it at 50%."""
    data, _ = load_image_folder(image_folder)
    model = train_classifier(
        data,
        torch.device("cpu"),
        num_classes=2,
        epochs=15,
        batch_size=16,
        lr=3e-3,
        generator=torch.Generator().manual_seed(0),
    )
    preds, feats = classify(model, to_unit_range(to_model_range(data.x)))
    assert (preds == data.y).float().mean() > 0.9
    assert feats.shape == (len(data), 128)


def test_judge_depends_on_its_generator_only_and_leaves_the_global_rng_alone(image_folder):
    """Initialisation and dropout come from the generator: the global RNG neither changes the judge nor is changed."""
    data, _ = load_image_folder(image_folder)
    kwargs = dict(num_classes=2, epochs=1, batch_size=16, lr=3e-3)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        model = train_classifier(data, torch.device("cpu"), generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.equal(torch.get_rng_state(), before)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = train_classifier(data, torch.device("cpu"), generator=torch.Generator().manual_seed(1), **kwargs)
    assert not torch.equal(other.state_dict()["head.1.weight"], weights[0]["head.1.weight"])


def test_missing_inception_weights_are_reported_not_raised(tmp_path):
    metrics = InceptionMetrics(str(tmp_path / "missing.pth"), torch.device("cpu"))
    assert not metrics.available and metrics.reason


@pytest.mark.slow
def test_evaluate_command_writes_json_table_and_sheet(trained_run, tmp_path):
    out = trained_run / "cifar_cat_dog_conditional_improved"
    make_images(tmp_path / "others" / "frog", 12, 5, color=1)
    config = json.loads((out / "config.json").read_text())
    not_weights = tmp_path / "not_inception.pth"
    not_weights.write_bytes(b"not a weights file")
    proc = run_main(
        "evaluate",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--eval-samples",
        "6",
        "--eval-classifier-epochs",
        "2",
        "--sample-steps",
        "4",
        "--eval-reference-dir",
        config["run"]["data_dir"],
        str(tmp_path / "others"),
        "--fid-weights",
        str(not_weights),  # a file, but not Inception's: FID is skipped without reaching for the network
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FID/KID skipped" in proc.stderr and "calibration" in proc.stdout and "recall" in proc.stdout
    result = json.loads((out / "evaluation.json").read_text())
    assert result["fid_available"] is False
    assert result["judge"]["classes"] == ["cat", "dog", "frog"]
    assert set(result["samples"]) == {"cat", "dog"}
    # every row at one n, the held-out images of a class (2 here): the 6 samples are scored as 3 chunks of 2
    assert result["samples"]["cat"]["n"] == 2 and result["samples"]["cat"]["chunks"] == 3
    assert 0 <= result["samples"]["dog"]["fidelity"] <= 1
    assert set(result["calibration"]) == {
        "real held-out, half vs half",
        "real training images",
        "blurred, sigma 0.7",
        "blurred, sigma 1.0",
        "stereotype, 20 images repeated",
        "colour saturated x2",
        "VAE reconstructions",
    }
    metrics = {"fd", "colour_fd", "precision", "recall", "fidelity", "shape_fd", "shape_recall"}
    assert set(result["metric_sees_failures"]) == metrics
    # 2 held-out images a class: FD in 128 dimensions is only a number here (biased, even negative), recall a share
    rows = [result["samples"], *result["calibration"].values()]
    shape = [(row[c]["shape_fd"], row[c]["shape_recall"]) for row in rows for c in ("cat", "dog")]
    assert all(isinstance(fd, (float, type(None))) for fd, _ in shape)
    assert all(r is None or 0 <= r <= 1 for _, r in shape)
    assert isinstance(result["samples"]["cat"]["shape_fd"], float)
    assert 0 <= result["shape_judge"]["accuracy"]["overall"] <= 1 and "shape judge:" in proc.stdout
    assert "shape FD" in proc.stdout and (out / "judge_shape.pt").is_file()
    assert result["samples"]["cat"]["colour_fd"] >= 0
    assert result["reconstruction"]["psnr"] > 5 and -1 <= result["reconstruction"]["ssim"] <= 1
    assert result["sampling"]["steps"] == 4 and result["sampling"]["samples_per_class"] == 6
    assert result["held_out_images"] == 4  # the run's own split (10% of 48, per class), read from its config.json
    assert (out / "judge_classifier.pt").is_file()
    assert Image.open(out / "evaluation_reconstructions.png").width > Image.open(out / "evaluation_sheet.png").width
    sheet = Image.open(out / "evaluation_sheet.png")
    assert sheet.width >= 3 * 6 * 32  # 6 samples in a row, enlarged at least 3x


def test_the_shape_view_keeps_luminance_only():
    from evaluation.shape import shape_view

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=gen)
    grey = shape_view(x)
    assert grey.shape == x.shape and torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert torch.allclose(grey[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.allclose(shape_view(grey), grey)  # a grey image is its own view


def test_randomise_texture_is_seeded_per_image_and_keeps_the_range_and_the_grey():
    from evaluation.shape import randomise_texture, shape_view

    gen = torch.Generator().manual_seed(0)
    x = shape_view(torch.rand(64, 3, 16, 16, generator=gen)) * 2 - 1
    a = randomise_texture(x, torch.Generator().manual_seed(1))
    b = randomise_texture(x, torch.Generator().manual_seed(1))
    c = randomise_texture(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)  # the generator decides, nothing else
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])  # grey in, grey out: noise on one plane
    change = (a - x).abs().mean((1, 2, 3))
    assert change.min() > 0 and change.max() > 3 * change.min()  # each image drew its own blur, noise and contrast


def test_the_shape_judge_sees_luminance_not_colour(image_folder):
    """A shape judge scores an image and its grey version alike; the photo judge does not."""
    from evaluation.shape import shape_view

    data, _ = load_image_folder(image_folder)
    kwargs = dict(num_classes=2, epochs=2, batch_size=16, lr=3e-3, generator=torch.Generator().manual_seed(0))
    shape = train_classifier(data, torch.device("cpu"), view="shape", **kwargs)
    photo = train_classifier(data, torch.device("cpu"), **kwargs)
    images = to_unit_range(to_model_range(data.x[:8]))
    assert shape.view == "shape" and photo.view == "photo"
    assert torch.allclose(classify(shape, images)[1], classify(shape, shape_view(images))[1], atol=1e-5)
    assert not torch.allclose(classify(photo, images)[1], classify(photo, shape_view(images))[1], atol=1e-3)
