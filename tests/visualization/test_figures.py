"""Every figure function writes a real, decodable file; none touches the global RNG or leaves a mode changed."""

import warnings

import imageio.v3 as iio
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from data import Split
from models import ConditionalDenoiseDiffusion, ConditionalUNet, SamplingOptions, SimpleAutoencoder
from visualization import (
    create_diffusion_animation,
    generate_samples_grid,
    loss_curve_figure,
    plot_loss_curves,
    record_trajectory,
    visualize_denoising_steps,
    visualize_latent_space,
    visualize_reconstructions,
)
from visualization.curves import phase_starts
from visualization.denoising import decode_latents

FAST = SamplingOptions(steps=6, guidance_scale=2.0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ae = SimpleAutoencoder()
    unet = ConditionalUNet()
    with torch.no_grad():  # non-zero output layer, so trajectories move
        unet.backbone.out.weight.normal_(0, 0.02)
    return ae, ConditionalDenoiseDiffusion(unet, n_steps=1000, device="cpu")


@pytest.fixture(scope="module")
def held():
    gen = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.tensor([0, 1] * 20))


def png_size(path):
    with Image.open(path) as img:
        img.load()
        return img.size


@pytest.fixture(autouse=True)
def guarantees(models):
    """Around every test: the global RNG is unchanged, modes are restored, and no figure is left open."""
    ae, diffusion = models
    ae.train()
    diffusion.model.eval()
    state = torch.get_rng_state()
    yield
    assert torch.equal(state, torch.get_rng_state())
    assert ae.training and not diffusion.model.training
    assert plt.get_fignums() == []


def test_reconstructions(models, held, tmp_path):
    path = visualize_reconstructions(models[0], held, tmp_path / "r.png", num_images=6)
    w, h = png_size(path)
    assert w > 400 and h > 150


def test_latent_space_with_separability_in_the_title(models, held, tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr(plt.Axes, "set_title", lambda self, text, **kw: titles.append(text))
    path = visualize_latent_space(models[0], held, tmp_path / "t.png", max_iter=250)
    assert png_size(path)[0] > 300
    assert "linear probe accuracy" in titles[0] and "silhouette" in titles[0]


def test_a_split_too_small_for_the_latent_map_gets_a_warning_not_a_traceback(models, held, tmp_path, caplog):
    """Before: 1 held-out image per class raised sklearn's ValueError (silhouette) after the VAE had trained."""
    from visualization.report import write_vae_figures

    tiny = held.subset(torch.tensor([int((held.y == 0).nonzero()[0]), int((held.y == 1).nonzero()[0])]))
    paths = write_vae_figures(models[0], tiny, tmp_path, "final")
    assert [p.name for p in paths] == ["vae_reconstruction_final.png"] and paths[0].is_file()
    assert "latent-space figure skipped: 1 held-out image(s) of a class" in caplog.text


def test_samples_grid_has_one_row_per_class(models, tmp_path):
    path = generate_samples_grid(
        *models, tmp_path / "g.png", num_per_class=4, generator=torch.Generator().manual_seed(0), options=FAST
    )
    w, h = png_size(path)
    assert w > h > 100


def test_trajectory_ends_at_the_sample(models):
    ae, diffusion = models
    traj = record_trajectory(diffusion, 1, 2, torch.Generator().manual_seed(5), FAST)
    assert traj.latents.shape == (7, 2, 256) and traj.timesteps[0] == 1000 and traj.timesteps[-1] == 0
    direct = diffusion.sample(torch.tensor([1, 1]), FAST, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(traj.latents[-1], direct)


def test_denoising_path_is_drawn_from_the_same_trajectory_as_the_images(models, held, tmp_path):
    ae, diffusion = models
    drawn = visualize_denoising_steps(
        ae, diffusion, held, tmp_path / "d.png", num_shown=4, generator=torch.Generator().manual_seed(0), options=FAST
    )
    assert png_size(drawn["path"])[1] > 400
    for name in ("cat", "dog"):
        d = drawn[name]
        assert len(d["images"]) == 4 and d["shown_steps"][-1] == len(d["latents"]) - 1
        # the last image shown is the decoded end point of the drawn path
        assert torch.allclose(d["images"][-1], decode_latents(ae, diffusion, d["latents"][-1:])[0], atol=1e-6)
        assert np.allclose(d["path_2d"][-1], d["pca"].transform(d["latents"][-1:].numpy())[0])
    assert not torch.equal(drawn["cat"]["latents"], drawn["dog"]["latents"])


def test_animation_frames_and_timing(models, tmp_path):
    path = create_diffusion_animation(
        *models,
        "dog",
        tmp_path / "a.gif",
        num_frames=5,
        fps=4,
        num_samples=2,
        generator=torch.Generator().manual_seed(0),
        hold_last_ms=1000,
        options=FAST,
    )
    frames = iio.imread(path, index=None)
    assert frames.shape[0] == 5 and frames.shape[1] > 96
    meta = iio.immeta(path, index=0)
    assert meta["duration"] == 250 and meta.get("loop") == 0
    assert list(tmp_path.iterdir()) == [path]  # nothing else left behind


def test_animation_runs_enough_steps_for_the_frames_asked(models, tmp_path):
    path = create_diffusion_animation(
        *models, 0, tmp_path / "a.gif", num_frames=12, num_samples=1, options=SamplingOptions(steps=3)
    )
    assert iio.imread(path, index=None).shape[0] == 12


def test_loss_curves_from_metrics_files(tmp_path):
    vae = tmp_path / "v.jsonl"
    vae.write_text(
        "\n".join(
            f'{{"step": {s}, "total": {1 / s}, "pixel": {1 / s}, "kl": 300, "cls": 0.7, "center": 1.0, '
            f'"phase": "{"reconstruction" if s < 5 else "kl"}"}}'
            for s in range(1, 10)
        )
    )
    diff = tmp_path / "d.jsonl"
    diff.write_text(
        "\n".join(f'{{"step": {s}, "total": 0.5, "loss_quartiles": [0.9, 0.5, 0.3, 0.1]}}' for s in range(1, 5))
    )
    config = {"steps": 10, "kl_start": 0.1, "cls_start": 0.4, "finetune_start": 0.7}
    assert phase_starts(config) == [(1, "kl"), (4, "classifier"), (7, "finetune")]
    path = plot_loss_curves(vae, diff, tmp_path / "c.png", config)
    assert png_size(path)[0] > 800
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "No artists with labels found to put in legend"
        # a run whose VAE stage was skipped: phase lines but no VAE metrics, and a v-predicting denoiser
        skipped = plot_loss_curves(tmp_path / "none.jsonl", diff, tmp_path / "s.png", config, prediction="v")
        assert plot_loss_curves(tmp_path / "none.jsonl", tmp_path / "none2.jsonl", tmp_path / "e.png").is_file()
    assert png_size(skipped)[0] > 800


def test_a_stage_logged_once_is_drawn_as_a_point_not_an_empty_legend_entry(tmp_path):
    """Before: the decoder stage of a cpu or smoke run logged one record, and its three legend entries drew nothing."""
    vae, decoder = tmp_path / "v.jsonl", tmp_path / "dec.jsonl"
    vae.write_text("\n".join(f'{{"step": {s}, "total": {1 / s}, "pixel": {1 / s}}}' for s in range(1, 10)))
    decoder.write_text('{"step": 10, "total": 0.3, "pixel": 0.02, "adversarial": -0.4, "discriminator": 1.9}\n')
    fig = loss_curve_figure(vae, tmp_path / "none.jsonl", decoder_metrics=decoder)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    once = [lines[label] for label in lines if label.startswith("decoder stage")]
    assert len(once) == 3 and all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in once)
    assert lines["total"].get_marker() == "None"  # a series with enough points stays a plain line
    plt.close(fig)
