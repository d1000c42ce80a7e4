import pytest
import torch

from data import Split, to_model_range
from models import SimpleAutoencoder
from training.config import VAEConfig
from training.vae import PHASES, evaluate, fit_latent_normalization, loss_weights, phase_of, vae_losses


def test_progressive_schedule_follows_the_config():
    cfg = VAEConfig(steps=100, kl_start=0.1, kl_ramp=0.2, cls_start=0.4, finetune_start=0.7)
    assert [PHASES[phase_of(s, cfg)] for s in (0, 9, 10, 39, 40, 69, 70, 99)] == [
        "reconstruction",
        "reconstruction",
        "kl",
        "kl",
        "classifier",
        "classifier",
        "finetune",
        "finetune",
    ]
    w = [loss_weights(s, cfg) for s in (0, 20, 30, 40, 55, 70, 99)]
    assert w[0]["kl"] == 0 and w[0]["cls"] == 0 and w[0]["pixel"] == cfg.pixel_weight
    assert w[1]["kl"] == pytest.approx(cfg.kl_weight / 2) and w[2]["kl"] == pytest.approx(cfg.kl_weight)
    assert w[3]["cls"] == 0 and w[4]["cls"] == pytest.approx(cfg.cls_weight / 2)
    assert w[5]["center"] == pytest.approx(cfg.center_weight) and w[6]["cls"] == pytest.approx(cfg.cls_weight)


def test_losses_have_the_right_shapes_and_classification_runs():
    ae = SimpleAutoencoder()
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 1, 0])
    losses, _ = vae_losses(ae, x, y, None, torch.Generator().manual_seed(0))
    assert set(losses) == {"pixel", "kl", "cls", "center"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())


def test_scale_equivariance_term_decodes_the_pooled_latent_and_falls_when_trained():
    torch.manual_seed(0)
    ae = SimpleAutoencoder()
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    y = torch.tensor([0, 1] * 4)
    losses, _ = vae_losses(ae, x, y, None, torch.Generator().manual_seed(0), scale_equivariance=True)
    mu, logvar = ae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0))
    pooled = torch.nn.functional.avg_pool2d(z.view(8, ae.latent_channels, ae.side, ae.side), 2)
    by_hand = torch.nn.functional.mse_loss(ae.decoder(pooled), torch.nn.functional.avg_pool2d(x, 2))
    assert losses["scale_eq"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    terms = []
    for _ in range(30):
        losses, _ = vae_losses(ae, x, y, None, gen, scale_equivariance=True)
        opt.zero_grad()
        (losses["pixel"] + losses["scale_eq"]).backward()
        opt.step()
        terms.append(losses["scale_eq"].item())
    assert sum(terms[-5:]) < 0.3 * sum(terms[:5])


def test_losses_stay_float32_under_bf16_autocast():
    ae = SimpleAutoencoder()
    x, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.tensor([0, 1, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = vae_losses(ae, x, y, None, torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float32 for v in losses.values())  # the KL sums 256 terms: bf16 would round it
    exact, _ = vae_losses(ae, x, y, None, torch.Generator().manual_seed(0))
    assert losses["kl"].item() == pytest.approx(exact["kl"].item(), rel=0.05)


def test_vae_loss_falls_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    ae = SimpleAutoencoder()
    # smooth images (upsampled 4x4 noise), which a VAE can actually fit
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4) * 2 - 1, size=32, mode="bilinear")
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    totals, pixels = [], []
    for _ in range(40):
        losses, _ = vae_losses(ae, x, y, None, gen)
        total = losses["pixel"] + 1e-5 * losses["kl"] + 0.1 * losses["cls"] + 0.01 * losses["center"]
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
        pixels.append(losses["pixel"].item())
    assert sum(totals[-5:]) < 0.5 * sum(totals[:5])
    assert sum(pixels[-5:]) < 0.3 * sum(pixels[:5])


def test_latent_normalization_gives_unit_variance():
    ae = SimpleAutoencoder().eval()
    data = Split(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 2, (64,)))
    fit_latent_normalization(ae, data)
    mu, logvar = ae.encode(to_model_range(data.x))
    z = ae.normalize_latent(ae.reparameterize(mu, logvar, torch.Generator().manual_seed(0)))
    assert z.mean(0).abs().mean() < 0.3 and 0.7 < z.std(0).mean() < 1.3


def test_evaluate_reports_psnr_and_accuracy():
    ae = SimpleAutoencoder()
    data = Split(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 2, (10,)))
    scores = evaluate(ae, data)
    assert 0 < scores["psnr"] < 40 and 0 <= scores["latent_acc"] <= 1
    assert ae.training  # evaluate restored the mode it found


def test_missing_vgg_weights_mean_a_warning_and_no_perceptual_term(monkeypatch, caplog):
    import urllib.error

    import torchvision

    from training.perceptual import VGGPerceptualLoss, load_perceptual_loss

    # with weights (random here: the cost and the interface do not depend on them) the term is a positive scalar
    loss = VGGPerceptualLoss(torchvision.models.vgg16().features)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models, "vgg16", offline)
    assert load_perceptual_loss(torch.device("cpu")) is None
    assert "VGG16 weights unavailable" in caplog.text and "without the perceptual loss" in caplog.text
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6) and loss(x.flip(3), x).item() > 0


def test_batched_encoding_equals_one_batch_and_restores_the_mode():
    from models.batched import encode_images, reconstruct_images

    ae = SimpleAutoencoder().train()
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    mu_small, logvar_small = encode_images(ae, x, batch_size=3)
    mu_all, logvar_all = encode_images(ae, x, batch_size=500)
    assert mu_small.shape == (10, 256) and torch.allclose(mu_small, mu_all, atol=1e-5)
    assert torch.allclose(logvar_small, logvar_all, atol=1e-5)
    mu_flip, _ = encode_images(ae, x, flip=True)
    assert torch.allclose(mu_flip, encode_images(ae, x.flip(3))[0], atol=1e-6)
    recon = reconstruct_images(ae, x, batch_size=4)
    assert recon.shape == (10, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1
    assert ae.training
