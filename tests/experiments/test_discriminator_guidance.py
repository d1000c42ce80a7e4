"""experiments/discriminator_guidance.py: the discriminator's shapes, and the correction it adds to the score."""

import torch

from conftest import load_experiment
from models import ConditionalDenoiseDiffusion, ConditionalUNet


class Linear(torch.nn.Module):
    """A 'discriminator' whose logit is c . z_t: its gradient is c everywhere."""

    def __init__(self, c: torch.Tensor):
        super().__init__()
        self.c = c

    def forward(self, z_t, t, y):
        return z_t @ self.c


def test_the_discriminator_scores_each_latent_of_a_batch_alone(randomize):
    dg = load_experiment("discriminator_guidance")
    disc = randomize(dg.LatentDiscriminator(4, 8))
    z, t, y = torch.randn(6, 256), torch.randint(0, 1000, (6,)), torch.randint(0, 2, (6,))
    logits = disc(z, t, y)
    assert logits.shape == (6,)
    assert torch.allclose(disc(z[:2], t[:2], y[:2]), logits[:2], atol=1e-5)  # no mixing across the batch


def test_the_correction_is_the_gradient_of_the_log_ratio_scaled_to_eps_and_only_above_min_t(randomize):
    dg = load_experiment("discriminator_guidance")
    torch.manual_seed(0)
    base = ConditionalDenoiseDiffusion(randomize(ConditionalUNet()).eval(), device="cpu")
    c = torch.randn(256)
    guided = dg.DiscriminatorGuided(base, Linear(c), weight=2.0, min_t=500)
    z, y = torch.randn(3, 256), torch.tensor([0, 1, 0])
    for step in (700, 100):
        t = torch.full((3,), step)
        eps, corrected = base.predict_eps(z, t, y, 3.0), guided.predict_eps(z, t, y, 3.0)
        a = base.alphas_cumprod[step]
        expected = eps - 2.0 * (1 - a).sqrt() * c if step >= 500 else eps
        assert torch.allclose(corrected, expected, atol=1e-5)
