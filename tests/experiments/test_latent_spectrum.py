"""experiments/latent_spectrum.py: the radial power profile puts smooth maps low, checkerboards high, and sums to 1."""

import torch

from conftest import load_experiment


def test_smooth_maps_hold_low_frequencies_and_checkerboards_high_ones():
    spectrum = load_experiment("latent_spectrum")
    g = torch.Generator().manual_seed(0)
    side = 8
    wave = torch.cos(2 * torch.pi * torch.arange(side) / side)  # the lowest frequency the grid holds: 1/8 cycles
    smooth = torch.randn(64, 1, 1, 1, generator=g) * (wave[:, None] + wave[None, :])  # (64, 1, 8, 8)
    checker = (-1.0) ** (torch.arange(side)[:, None] + torch.arange(side)[None, :])
    rough = torch.randn(64, 1, 1, 1, generator=g) * checker
    power = spectrum.power_spectrum(torch.cat([smooth, rough], dim=1))  # two channels
    assert torch.allclose(power.sum(dim=(1, 2)), torch.ones(2, dtype=power.dtype))
    high = spectrum.high_share(power)
    assert high[0] < 1e-9 and high[1] > 0.99  # the wave's power is low, the checkerboard's all at Nyquist
    radii, profile = spectrum.radial_profile(power)
    assert radii[0] == 0 and radii == sorted(radii) and profile.shape == (2, len(radii))
    assert torch.allclose(profile.sum(1), torch.ones(2, dtype=profile.dtype))


def test_white_noise_spreads_its_power_evenly_over_the_bins():
    spectrum = load_experiment("latent_spectrum")
    noise = torch.randn(4000, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    power = spectrum.power_spectrum(spectrum.standardise(noise.flatten(1)).view_as(noise))
    assert torch.allclose(power, torch.full_like(power, 1 / 16), atol=0.01)
