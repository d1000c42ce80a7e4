"""The loss ladder of `python main.py diagnose`: a denoiser's noise-prediction error per noise level, beside two
denoisers whose answers are known exactly.

- The exact per-class Gaussian: the best denoiser that knows only each class's mean m and covariance S of the
  training latents. Its prediction is linear, E[eps | z_t] = sqrt(1 - a) (a S + (1 - a) I)^-1 (z_t - sqrt(a) m), and
  a denoiser that learns nothing beyond second-order statistics sits on it.
- The empirical optimum: the posterior mean over the training latents themselves given z_t (a softmax over the
  training set, Karras et al. 2022, appendix B.3). It is the minimiser of the training loss: on training latents its
  error goes to zero as the noise falls (it recalls the very latent), on held-out latents it snaps to the nearest
  training latent. It is the memorising answer and a bound, not a goal; its effective number of training latents,
  1 / sum_i w_i^2, says how many training latents a noise level still mixes.

Latents are in the diffusion's space (flat, (N, D)); every computation is in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LADDER_STEPS = (50, 100, 200, 300, 500, 700, 900)


@dataclass
class ClassGaussian:
    """Mean (D,) and covariance (D, D) of one class's training latents."""

    mean: torch.Tensor
    cov: torch.Tensor

    @classmethod
    def fit(cls, z: torch.Tensor) -> "ClassGaussian":
        z = z.double()
        return cls(z.mean(0), torch.cov(z.T))

    def eps(self, z_t: torch.Tensor, a: float) -> torch.Tensor:
        """The exact noise prediction E[eps | z_t] (N, D) at alpha-bar a for latents drawn from this Gaussian."""
        eye = torch.eye(len(self.mean), dtype=torch.float64, device=self.mean.device)
        rhs = (z_t.double() - a**0.5 * self.mean).T
        return (1 - a) ** 0.5 * torch.linalg.solve(a * self.cov + (1 - a) * eye, rhs).T

    def expected_mse(self, a: float) -> float:
        """Its mean eps-MSE per dimension on data with these moments: mean over eigenvalues l of a l / (a l + 1 - a)."""
        lam = torch.linalg.eigvalsh(self.cov).clamp(min=0)
        return (a * lam / (a * lam + 1 - a)).mean().item()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n latents (n, D) drawn from the Gaussian."""
        eye = torch.eye(len(self.mean), dtype=torch.float64, device=self.mean.device)
        chol = torch.linalg.cholesky(self.cov + 1e-6 * eye)
        noise = torch.randn(n, len(self.mean), generator=generator, dtype=torch.float64, device=self.mean.device)
        return self.mean + noise @ chol.T


def empirical_eps(
    z_t: torch.Tensor, a: float, bank: torch.Tensor, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean of the noise given z_t (N, D) when z_0 is one of the `bank` latents (M, D), uniformly:
    weights w_i proportional to exp(-|z_t - sqrt(a) b_i|^2 / (2 (1 - a))). Returns (eps_hat (N, D), the effective
    number of bank latents 1 / sum_i w_i^2 per query (N,)). One matrix multiply per chunk of queries."""
    bank = bank.double()
    bank_sq = bank.pow(2).sum(1)  # (M,)
    eps_out, n_eff = [], []
    for z in z_t.double().split(chunk):
        # -|z - sqrt(a) b|^2 / (2 (1 - a)), dropping |z|^2, which is the same for every b
        logits = (a**0.5 * z @ bank.T - 0.5 * a * bank_sq) / (1 - a)  # (n, M)
        w = logits.softmax(dim=1)
        z0_hat = w @ bank
        eps_out.append((z - a**0.5 * z0_hat) / (1 - a) ** 0.5)
        n_eff.append(1 / w.pow(2).sum(1))
    return torch.cat(eps_out), torch.cat(n_eff)


def mse(eps_hat: torch.Tensor, eps: torch.Tensor) -> float:
    """Mean squared error per dimension."""
    return (eps_hat.double() - eps.double()).pow(2).mean().item()


def class_ladder(
    denoiser_eps,
    queries: torch.Tensor,
    bank: torch.Tensor,
    gaussian: ClassGaussian,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    steps: tuple[int, ...] = LADDER_STEPS,
) -> dict[int, dict[str, float]]:
    """For one class and one set of query latents z_0 (N, D): at each timestep t of `steps`, noise them once (the same
    noise for every row) and report the eps-MSE of `denoiser_eps(z_t, t) -> eps_hat`, of the Gaussian and of the
    empirical optimum over `bank`, and the latter's mean effective number of bank latents."""
    rows = {}
    for t in steps:
        a = float(alphas_cumprod[t])
        eps = torch.randn(queries.shape, generator=generator, dtype=torch.float64, device=queries.device)
        z_t = a**0.5 * queries.double() + (1 - a) ** 0.5 * eps
        emp, n_eff = empirical_eps(z_t, a, bank)
        rows[t] = {
            "denoiser": mse(denoiser_eps(z_t.float(), t), eps),
            "gaussian": mse(gaussian.eps(z_t, a), eps),
            "empirical": mse(emp, eps),
            "effective_latents": n_eff.mean().item(),
        }
    return rows
