"""The decoder stage: the discriminator and its adaptive weight, a fine-tuning that leaves the latent space alone, and
the stage as main.py runs it (skipped when done, run again with --retrain-decoder, the denoiser untouched)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, run_main, same_state
from data import Split
from errors import UserInputError
from evaluation.metrics import gaussian_blur
from models import SimpleAutoencoder
from models.discriminator import PatchDiscriminator
from training.config import DecoderConfig
from training.context import RunContext
from training.decoder import Adversary, LatentSpace, latent_space_fingerprint, train_decoder
from training.vae import evaluate

CPU = torch.device("cpu")
OUT = "cifar_cat_dog_conditional_improved"


def test_discriminator_separates_real_from_reconstructed_images_on_a_tiny_batch():
    """Overfitting one batch: the hinge loss falls and real images score above their blurred 'reconstructions'."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    x_hat = gaussian_blur(x, 1.0)  # what a soft decoder gives back
    ctx = RunContext(CPU, Path("."))
    adversary = Adversary(PatchDiscriminator(), 2e-4, ctx)
    losses = [adversary.step(x, x_hat, ctx).item() for _ in range(60)]
    assert losses[0] == pytest.approx(2.0, abs=0.3)  # hinge loss at chance
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])
    with torch.no_grad():
        assert adversary.discriminator(x).mean() > adversary.discriminator(x_hat).mean() + 1


def test_the_output_gradient_is_the_weighted_sum_and_the_adaptive_weight_balances_its_two_parts():
    """Without feature matching, the gradient the decoder stage backpropagates from x_hat is that of pixel + w * g
    with w held constant; w makes the two pulls equal; the discriminator's parameters get no gradient from it."""
    torch.manual_seed(0)
    adversary = Adversary(PatchDiscriminator(), 2e-4, RunContext(CPU, Path(".")))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    cfg = DecoderConfig(adversarial_weight=0.5, feature_matching_weight=0.0)
    rec = torch.nn.functional.mse_loss(x_hat, x)
    gradient, parts = adversary.output_gradient(x_hat, x, rec, cfg)
    weight = parts["adaptive_weight"]
    rec_grad = torch.autograd.grad(rec, x_hat)[0]
    adv_grad = torch.autograd.grad(weight * adversary.discriminator(x_hat).mean().neg(), x_hat)[0]
    assert not weight.requires_grad
    assert parts["adversarial"].item() == pytest.approx(-adversary.discriminator(x_hat).mean().item())
    assert adv_grad.norm().item() == pytest.approx(rec_grad.norm().item(), rel=0.01)  # equal pull once weighted
    assert torch.allclose(gradient, rec_grad + 0.5 * adv_grad, atol=1e-6)
    assert all(p.grad is None for p in adversary.discriminator.parameters())
    _, doubled = adversary.output_gradient(x_hat, x, 4 * torch.nn.functional.mse_loss(x_hat, x), cfg)
    assert doubled["adaptive_weight"].item() == pytest.approx(4 * weight.item(), rel=1e-4)


def test_feature_matching_pulls_the_reconstruction_towards_its_originals_features():
    """With feature matching, the reconstruction part of the gradient is that of pixel + lambda * fm, fm being the
    L1 distance of the discriminator's hidden features of x_hat from those of x (zero when x_hat is x), and the
    adaptive weight balances the hinge term against that whole part."""
    torch.manual_seed(0)
    adversary = Adversary(PatchDiscriminator(), 2e-4, RunContext(CPU, Path(".")))
    d = adversary.discriminator
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert len(d.features(x)) == 4 and torch.equal(d.features(x)[-1], d(x))  # three hidden layers, then the logits
    x_hat = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    cfg = DecoderConfig(adversarial_weight=0.5, feature_matching_weight=0.3)
    rec = torch.nn.functional.mse_loss(x_hat, x)
    gradient, parts = adversary.output_gradient(x_hat, x, rec, cfg)
    fm = sum((a - b).abs().mean() for a, b in zip(d.features(x_hat)[:3], d.features(x)[:3]))
    assert parts["feature_matching"].item() == pytest.approx(fm.item(), rel=1e-5) and fm.item() > 0
    pixel_grad = torch.autograd.grad(rec, x_hat, retain_graph=True)[0]
    rec_grad = torch.autograd.grad(rec + 0.3 * fm, x_hat)[0]
    adv_grad = torch.autograd.grad(d(x_hat).mean().neg(), x_hat)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    assert parts["adaptive_weight"].item() == pytest.approx(weight.item(), rel=1e-4)
    assert torch.allclose(gradient, rec_grad + 0.5 * weight * adv_grad, atol=1e-6)
    assert (rec_grad - pixel_grad).norm() > 0.1 * pixel_grad.norm()  # the features do pull
    x_same = x.clone().requires_grad_(True)
    _, same = adversary.output_gradient(x_same, x, torch.nn.functional.mse_loss(x_same, x), cfg)
    assert same["feature_matching"].item() == 0


def tiny_split(n: int, seed: int) -> Split:
    """n smooth images (random 4x4 colour fields, upsampled): something a decoder can learn in a few steps."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return Split((255 * x).round().to(torch.uint8), torch.arange(n) % 2)


def test_fine_tuning_trains_the_decoder_alone_and_leaves_the_latent_space_bit_identical(tmp_path):
    torch.manual_seed(0)
    ae = SimpleAutoencoder()
    ae.latent_shift.normal_()  # fitted statistics, which the stage must never touch
    before = {k: v.clone() for k, v in ae.state_dict().items() if isinstance(v, torch.Tensor)}
    fingerprint = latent_space_fingerprint(ae)
    train, held = tiny_split(16, 0), tiny_split(8, 1)
    psnr_before = evaluate(ae, train)["psnr"]
    ctx = RunContext(CPU, tmp_path, log_every=10, checkpoint_every=100)
    cfg = DecoderConfig(steps=40, batch_size=8, lr=2e-3, warmup_steps=1)
    train_decoder(ae, train, held, cfg, ctx, torch.Generator().manual_seed(0))
    after = ae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)
    assert latent_space_fingerprint(ae) == fingerprint
    assert evaluate(ae, train)["psnr"] > psnr_before + 1.5  # it learned to draw its training images (+2 dB seen)
    logged = [json.loads(line) for line in (tmp_path / "metrics_decoder.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged if "lr" in r] == [cfg.lr] * 4  # held after warm-up to the last step, not annealed
    public = torch.load(tmp_path / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    assert same_state(public, ae.state_dict())  # the public file: the EMA decoder in the unchanged autoencoder
    fresh = SimpleAutoencoder(in_channels=3, latent_dim=256, num_classes=2)
    fresh.load_state_dict(public)  # the seed's snippet still loads it


def test_the_fingerprint_follows_the_encoder_and_the_statistics_not_the_decoder():
    ae = SimpleAutoencoder()
    first = latent_space_fingerprint(ae)
    with torch.no_grad():
        ae.decoder.net[0].weight.add_(1.0)
    assert latent_space_fingerprint(ae) == first
    saved = LatentSpace(ae).state_dict()
    with torch.no_grad():
        ae.latent_scale.mul_(2.0)
    assert latent_space_fingerprint(ae) != first
    with pytest.raises(UserInputError, match="trained on another latent space .*--no-resume"):
        LatentSpace(ae).load_state_dict(saved)  # resuming a decoder stage on another VAE is refused


def test_resuming_with_another_discriminator_width_is_refused_in_one_line():
    ctx = RunContext(CPU, Path("."))
    saved = Adversary(PatchDiscriminator(width=64), 2e-4, ctx).state_dict()  # the width before it became 32
    with pytest.raises(UserInputError, match="discriminator of width 64, not 32: .*--decoder-discriminator-width 64"):
        Adversary(PatchDiscriminator(width=32), 2e-4, ctx).load_state_dict(saved)
    Adversary(PatchDiscriminator(width=64), 2e-4, ctx).load_state_dict(saved)


@pytest.mark.slow
def test_retrain_decoder_reruns_the_stage_from_the_pixel_decoder_and_leaves_the_denoiser_alone(
    trained_run, image_folder, tmp_path
):
    out = tmp_path / OUT
    shutil.copytree(trained_run / OUT, out)
    base = [*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--no-figures"]
    vae_before = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    denoiser = (out / "conditional_diffusion_final.pt").read_bytes()
    proc = run_main(*base, "--retrain-decoder")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping VAE training" in proc.stderr and "skipping diffusion training" in proc.stderr
    # the same stage from the same pixel-loss decoder and seed: the same decoder, bit for bit; nothing else moved
    assert same_state(torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True), vae_before)
    assert (out / "conditional_diffusion_final.pt").read_bytes() == denoiser
    proc = run_main(*base, "--retrain-decoder", "--decoder-lr", "0.003")
    assert proc.returncode == 0, proc.stderr[-2000:]
    other = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    differs = {k for k in other if isinstance(other[k], torch.Tensor) and not torch.equal(other[k], vae_before[k])}
    assert differs and all(k.startswith("decoder.") for k in differs)
    assert (out / "conditional_diffusion_final.pt").read_bytes() == denoiser


@pytest.mark.slow
def test_a_run_without_the_stage_gets_it_later_without_retraining_the_denoiser(image_folder, tmp_path):
    out = tmp_path / OUT
    base = [*TINY_RUN, "--data-dir", str(image_folder), "--output-dir", str(out), "--no-figures"]
    proc = run_main(*base, "--decoder-steps", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / "decoder_train_state.pt").exists()
    denoiser = (out / "conditional_diffusion_final.pt").read_bytes()
    pixel_decoder = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    proc = run_main(*base)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping diffusion training" in proc.stderr
    assert (out / "conditional_diffusion_final.pt").read_bytes() == denoiser
    tuned = torch.load(out / "cifar_cat_dog_autoencoder.pt", weights_only=True)
    assert not torch.equal(tuned["decoder.net.0.weight"], pixel_decoder["decoder.net.0.weight"])
    assert torch.equal(tuned["latent_scale"], pixel_decoder["latent_scale"])
