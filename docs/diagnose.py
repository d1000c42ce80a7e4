"""Where does a trained run lose its samples' quality? Two probes with the evaluation's own judge and metrics.

python docs/diagnose.py RUN_DIR --eval-reference-dir CATDOG_DIR OTHER_DIR [--judge-dir DIR] [--threads N]

1. The decoder's tolerance: the held-out images' mu, in the diffusion's normalised units, plus Gaussian noise of
   standard deviation s, decoded. How far must a generated latent be from a real one before the image suffers?
2. SDEdit (Meng et al. 2022): the held-out latents noised to timestep t and taken back to t = 0 by the run's own
   denoiser (DDIM, eta 1, no guidance, the true label). A denoiser that models the data returns images about as good
   as the reconstructions; one that does not returns images about as bad as the noisy latents decoded.

3. The Gaussian baseline: the best denoiser that knows only each class's mean and covariance of the (normalised)
   training latents, z_0 ~ N(m_y, S_y). Its noise prediction is linear and exact: E[eps | z_t] =
   sqrt(1 - a_t) (a_t S_y + (1 - a_t) I)^-1 (z_t - sqrt(a_t) m_y). Printed: the run's network's eps-MSE (true label,
   no guidance) against this baseline's on the held-out latents at several t, and the baseline's own samples scored
   like the others (a denoiser close to the baseline can only draw what a Gaussian draws).

Per class against the held-out images: feature FD, recall and colour FD, as `python main.py evaluate` prints them. The
judge is read from JUDGE_DIR/judge_classifier.pt (default: the run folder) and trained there if it is missing.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import to_model_range, to_unit_range  # noqa: E402
from evaluation.evaluate import Features, score_set  # noqa: E402
from evaluation.judge import get_judge, load_reference  # noqa: E402
from main import load_splits  # noqa: E402
from models.batched import encode_images  # noqa: E402
from models.diffusion import spaced_timesteps  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402
from models.samplers import SAMPLERS  # noqa: E402
from training.config import EvalConfig, RunConfig  # noqa: E402

NOISE_LEVELS = (0.0, 0.1, 0.25, 0.5)
SDEDIT_STEPS = (100, 300, 500)
BASELINE_STEPS = (50, 100, 200, 300, 500, 700, 900)


def posterior_samples(
    ae, diffusion, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """z ~ q(z|x) in the diffusion's units (what the denoiser trains on), drawn 500 at a time, float64."""
    z = [ae.reparameterize(m, lv, generator) for m, lv in zip(mu.split(500), logvar.split(500))]
    return diffusion.from_vae_latents(ae, torch.cat(z)).double()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--eval-reference-dir", nargs="+", required=True)
    p.add_argument("--judge-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = json.loads((a.run_dir / "config.json").read_text())
    run = RunConfig(**{k: v for k, v in cfg["run"].items() if k in RunConfig.__dataclass_fields__})
    train, held = load_splits(run)
    ae, diffusion = load_pipeline(a.run_dir, "cpu")
    ref = load_reference(
        a.eval_reference_dir, run.data_dir, run.download_dir, train, held, torch.Generator().manual_seed(0)
    )
    judge = get_judge(a.judge_dir or a.run_dir, ref, EvalConfig(), torch.device("cpu"), run.seed)
    features = Features(judge)
    real_all = to_unit_range(to_model_range(held.x))
    real = [real_all[held.y == c] for c in range(2)]
    gen = torch.Generator().manual_seed(0)

    def row(name: str, z: torch.Tensor) -> None:
        images = to_unit_range(ae.decode(diffusion.to_vae_latents(ae, z)))
        s = score_set(list(zip([images[held.y == c] for c in range(2)], real)), features, ref.classes)
        print(
            f"{name:34s} FD {s['cat']['fd']:.2f} / {s['dog']['fd']:.2f}   recall {s['cat']['recall']:.2f} / "
            f"{s['dog']['recall']:.2f}   colour FD {s['cat']['colour_fd']:.0f} / {s['dog']['colour_fd']:.0f}",
            flush=True,
        )

    with torch.no_grad():
        mu, logvar = encode_images(ae, held.x)  # the held-out images, encoded once
        mu_n = diffusion.from_vae_latents(ae, mu)
        sigma_n = torch.exp(0.5 * logvar) / (ae.latent_scale if diffusion.normalize_latents else 1.0)
        print(f"posterior sigma in the diffusion's units: mean {sigma_n.mean():.3f}; std of mu: {mu_n.std():.3f}")
        for s in NOISE_LEVELS:
            row(f"decoded mu + {s:g} N(0, 1)", mu_n + s * torch.randn(mu_n.shape, generator=gen))
        y = held.y.long()
        for t0 in SDEDIT_STEPS:
            a_t = diffusion.alphas_cumprod[t0]
            z = diffusion.q_sample(mu_n, torch.full((len(y),), t0), torch.randn(mu_n.shape, generator=gen))
            timesteps = [t0] + [t for t in spaced_timesteps(diffusion.n_steps, 50) if t < t0]

            def eps_fn(zz: torch.Tensor, tt: int) -> torch.Tensor:
                return diffusion.predict_eps(zz, torch.full((len(zz),), tt, dtype=torch.long), y, 1.0)

            row(f"noised to t={t0}, decoded as is", z / a_t.sqrt())
            out = SAMPLERS["ddim"](eps_fn, z, diffusion.alphas_cumprod, timesteps, generator=gen, eta=1.0)
            row(f"noised to t={t0}, denoised (SDEdit)", out)

        z_train = posterior_samples(ae, diffusion, *encode_images(ae, train.x), gen)
        z_held = posterior_samples(ae, diffusion, mu, logvar, gen)
        eye = torch.eye(z_train.shape[1], dtype=torch.float64)
        gauss = [(z_train[train.y == c].mean(0), torch.cov(z_train[train.y == c].T)) for c in range(2)]
        print("t     eps-MSE of the network   of the Gaussian baseline   (held-out latents, true label)")
        for t0 in BASELINE_STEPS:
            a_t = diffusion.alphas_cumprod[t0].double()
            eps = torch.randn(z_held.shape, generator=gen, dtype=torch.float64)
            z_t = a_t.sqrt() * z_held + (1 - a_t).sqrt() * eps
            net = diffusion.predict_eps(z_t.float(), torch.full((len(z_t),), t0), y, 1.0).double()
            base = torch.empty_like(z_t)
            for c, (m, cov) in enumerate(gauss):
                sel = y == c
                base[sel] = (1 - a_t).sqrt() * torch.linalg.solve(
                    a_t * cov + (1 - a_t) * eye, (z_t[sel] - a_t.sqrt() * m).T
                ).T
            print(f"{t0:<5d} {((net - eps) ** 2).mean():.4f}                   {((base - eps) ** 2).mean():.4f}")
        samples = torch.empty_like(z_held)
        for c, (m, cov) in enumerate(gauss):
            sel = y == c
            chol = torch.linalg.cholesky(cov + 1e-6 * eye)
            samples[sel] = m + torch.randn(int(sel.sum()), len(m), generator=gen, dtype=torch.float64) @ chol.T
        row("samples of the Gaussian baseline", samples.float())


if __name__ == "__main__":
    main()
