import pytest
import torch

from models import SimpleAutoencoder


def test_public_constructor_shapes():
    ae = SimpleAutoencoder(in_channels=3, latent_dim=256, num_classes=2)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    x_hat, mu, logvar, z = ae(x, torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape
    assert mu.shape == logvar.shape == z.shape == (3, 256)
    assert ae.classify(mu).shape == (3, 2)
    assert ae.class_centers.shape == (2, 256)


def test_decoder_sees_only_the_latent(randomize):
    """Generation has no encoder features: decode(z) must not depend on anything encoded before."""
    ae = randomize(SimpleAutoencoder()).eval()
    z = torch.randn(2, 256)
    before = ae.decode(z)
    ae.encode(torch.rand(5, 3, 32, 32))
    assert torch.equal(before, ae.decode(z))


def test_encoder_is_batch_independent(randomize):
    ae = randomize(SimpleAutoencoder()).train()
    x = torch.rand(4, 3, 32, 32)
    mu_batch, _ = ae.encode(x)
    mu_one, _ = ae.encode(x[:1])
    assert torch.allclose(mu_batch[:1], mu_one, atol=1e-5)


def test_latent_normalization_round_trips():
    ae = SimpleAutoencoder()
    ae.latent_shift.normal_()
    ae.latent_scale.uniform_(0.5, 2.0)
    z = torch.randn(4, 256)
    assert torch.allclose(ae.denormalize_latent(ae.normalize_latent(z)), z, atol=1e-5)
    assert "latent_scale" in ae.state_dict()  # stored with the model, never left to the user


def test_reparameterize_is_seeded():
    mu, logvar = torch.zeros(3, 256), torch.zeros(3, 256)
    a = SimpleAutoencoder.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    b = SimpleAutoencoder.reparameterize(mu, logvar, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.std() > 0.5


def test_inconsistent_latent_layout_is_refused():
    with pytest.raises(ValueError, match="latent_dim"):
        SimpleAutoencoder(latent_dim=100)
