"""Networks (VAE, latent denoiser) and the diffusion process; `generate_class_samples` is the public sampler."""

from models.diffusion import ConditionalDenoiseDiffusion, SamplingOptions
from models.generate import generate_class_samples
from models.unet import ConditionalUNet
from models.vae import SimpleAutoencoder

__all__ = [
    "SimpleAutoencoder",
    "ConditionalUNet",
    "ConditionalDenoiseDiffusion",
    "SamplingOptions",
    "generate_class_samples",
]
