"""Image metrics: PSNR, SSIM, Frechet distance of features, and FID/KID through torchmetrics when weights exist."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import linalg

log = logging.getLogger(__name__)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of images in [0, 1]."""
    mse = (a - b).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return (-10 * torch.log10(mse)).mean().item()


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window 11, sigma 1.5) of images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(a, b, data_range=1.0).item()


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets x (N, F) and y (M, F) (Heusel et al. 2017)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the reference implementation does
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


class InceptionMetrics:
    """FID and KID (torchmetrics, Inception-v3 features); `available` is False, with `reason`, without weights."""

    def __init__(self, weights_path: str | None, device: torch.device):
        self.available, self.reason = False, ""
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance

            self.fid = FrechetInceptionDistance(
                feature=2048, normalize=True, feature_extractor_weights_path=weights_path
            ).to(device)
            self.available = True
        except Exception as err:  # noqa: BLE001 - offline download, missing torch-fidelity, bad file: same outcome
            self.reason = f"{type(err).__name__}: {str(err).splitlines()[0][:150] if str(err) else ''}"
        self.device = device

    def compute(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """FID and KID (mean, std) between real and fake images (N, 3, 32, 32) in [0, 1]."""
        from torchmetrics.image.kid import KernelInceptionDistance

        self.fid.reset()
        kid = KernelInceptionDistance(
            feature=self.fid.inception, normalize=True, subset_size=min(1000, len(real), len(fake)), subsets=50
        ).to(self.device)
        for metric in (self.fid, kid):
            for images, is_real in ((real, True), (fake, False)):
                for start in range(0, len(images), 250):
                    metric.update(images[start : start + 250].to(self.device), real=is_real)
        kid_mean, kid_std = kid.compute()
        return {"fid": self.fid.compute().item(), "kid_mean": kid_mean.item(), "kid_std": kid_std.item()}
