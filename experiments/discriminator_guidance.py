"""Discriminator guidance (Kim et al. 2023) on a finished run: a small discriminator on noised latents, real against
sampled, conditioned on the noise level and the class, whose gradient corrects the denoiser's score while sampling.

    python experiments/discriminator_guidance.py RUN --data-dir DATA --eval-reference-dir DIR [DIR ...]
        [--fakes-per-class 2000] [--weight 1.0] [--min-t 0] [--eval-name dg] [--threads N]

1. The run's denoiser draws `--fakes-per-class` latents of each class with its default sampling (cached in
   RUN/dg_fakes.pt); the reals are posterior draws of the run's training latents and their mirrors.
2. The discriminator (models/conv_unet.py's residual blocks on the latent grid, two levels, time and class
   embeddings) learns to tell noised reals from noised fakes at noise levels drawn uniformly over the timesteps, with
   binary cross-entropy. A tenth of the fakes and the run's held-out latents are kept out; training stops when their
   cross-entropy has not improved for PATIENCE evaluations, and the best weights are kept (RUN/dg_discriminator.pt):
   on 9,000 images it overfits, so what it learned must hold on latents it did not see.
3. Sampling then uses eps' = eps - weight * sqrt(1 - a_t) * grad log(D / (1 - D)) for timesteps t >= min-t (the
   score plus the gradient of the log density ratio that D estimates), and `python main.py evaluate`'s numbers and sheet
   are written as RUN/EVAL_NAME.json with the run's cached judges, from the same noise as the run's own evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import commands  # noqa: E402
from cli import parse_args, recorded_config, resolve_configs  # noqa: E402
from evaluation.evaluate import evaluate_run, format_table  # noqa: E402
from models.conv_unet import ConvResBlock  # noqa: E402
from models.diffusion import ConditionalDenoiseDiffusion  # noqa: E402
from models.layers import timestep_embedding  # noqa: E402
from training.diffusion import encode_dataset  # noqa: E402

PATIENCE, EVAL_EVERY, MAX_STEPS, BATCH = 5, 100, 6000, 256


class LatentDiscriminator(nn.Module):
    """The logit that a noised latent z_t (N, D) at timesteps t (N,) of class y (N,) came from a real image."""

    def __init__(self, latent_channels: int, side: int, width: int = 64, cond_dim: int = 128, num_classes: int = 2):
        super().__init__()
        self.shape, self.cond_dim = (latent_channels, side, side), cond_dim
        self.time_mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.class_emb = nn.Embedding(num_classes, cond_dim)
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.fine = nn.ModuleList([ConvResBlock(width, width, cond_dim) for _ in range(2)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.coarse = nn.ModuleList([ConvResBlock(2 * width, 2 * width, cond_dim) for _ in range(2)])
        self.head = nn.Linear(2 * width, 1)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cond = self.time_mlp(timestep_embedding(t, self.cond_dim)) + self.class_emb(y)
        h = self.conv_in(z_t.view(-1, *self.shape))
        for block in self.fine:
            h = block(h, cond)
        h = self.down(h)
        for block in self.coarse:
            h = block(h, cond)
        return self.head(F.silu(h).mean(dim=(2, 3))).squeeze(1)


class DiscriminatorGuided(ConditionalDenoiseDiffusion):
    """The run's diffusion with the discriminator's correction added to every noise prediction at t >= min_t."""

    def __init__(
        self, base: ConditionalDenoiseDiffusion, discriminator: LatentDiscriminator, weight: float, min_t: int
    ):
        super().__init__(base.model, device=base.device)
        self.net, self.graphed = base.net, base.graphed
        self.discriminator, self.weight, self.min_t = discriminator.eval(), weight, min_t

    def predict_eps(self, z_t, t, y, guidance_scale: float = 1.0):
        eps = super().predict_eps(z_t, t, y, guidance_scale)
        if int(t[0]) < self.min_t:
            return eps
        with torch.enable_grad():
            z = z_t.detach().float().requires_grad_(True)
            grad = torch.autograd.grad(self.discriminator(z, t, y).sum(), z)[0]  # d log(D / (1 - D)) / d z_t
        a = self.alphas_cumprod[t][:, None]
        return eps - self.weight * (1 - a).sqrt() * grad


def fakes(run: Path, diffusion, per_class: int, options) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` sampled latents of each class (process space), drawn once and cached in the run folder."""
    path = run / "dg_fakes.pt"
    if path.exists():
        cached = torch.load(path)
        if len(cached["z"]) == 2 * per_class:
            return cached["z"], cached["y"]
    g = torch.Generator().manual_seed(12345)
    y = torch.arange(2).repeat_interleave(per_class)
    start, z = time.perf_counter(), []
    for part in y.split(250):
        z.append(diffusion.sample(part, options, generator=g))
        print(f"fakes: {sum(map(len, z))} of {len(y)}, {time.perf_counter() - start:.0f} s", flush=True)
    z = torch.cat(z)
    torch.save({"z": z, "y": y}, path)
    return z, y


def noised(diffusion, z0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """z_t of z0 at timesteps drawn uniformly, and those timesteps."""
    t = torch.randint(0, diffusion.n_steps, (len(z0),), generator=g)
    return diffusion.q_sample(z0, t, torch.randn(z0.shape, generator=g)), t


def train_discriminator(diffusion, real, fake, held_real, held_fake, side: int, channels: int) -> LatentDiscriminator:
    """D trained until its held-out cross-entropy stops improving; the best weights. real/fake: (z0, y) pairs."""
    torch.manual_seed(0)
    disc = LatentDiscriminator(channels, side)
    opt = torch.optim.AdamW(disc.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.01)
    g, eval_g = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    held = [(noised(diffusion, z, eval_g), y, label) for (z, y), label in ((held_real, 1.0), (held_fake, 0.0))]
    best, best_state, waited = float("inf"), None, 0
    for step in range(1, MAX_STEPS + 1):
        parts = []
        for (z, y), label in ((real, 1.0), (fake, 0.0)):
            idx = torch.randint(0, len(z), (BATCH // 2,), generator=g)
            (z_t, t), yy = noised(diffusion, z[idx], g), y[idx]
            parts.append(F.binary_cross_entropy_with_logits(disc(z_t, t, yy), torch.full((len(idx),), label)))
        loss = sum(parts) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                held_loss = (
                    sum(
                        F.binary_cross_entropy_with_logits(disc(z_t, t, y), torch.full((len(y),), label)).item()
                        for (z_t, t), y, label in held
                    )
                    / 2
                )
            print(f"discriminator step {step}: train {loss.item():.4f}, held-out {held_loss:.4f}", flush=True)
            if held_loss < best - 1e-4:
                best, best_state, waited = held_loss, {k: v.clone() for k, v in disc.state_dict().items()}, 0
            else:
                waited += 1
                if waited >= PATIENCE:
                    break
    disc.load_state_dict(best_state)
    print(f"discriminator: best held-out cross-entropy {best:.4f} (chance: {torch.log(torch.tensor(2.0)):.4f})")
    return disc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--eval-reference-dir", nargs="+", required=True)
    p.add_argument("--fakes-per-class", type=int, default=2000)
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--min-t", type=int, default=0)
    p.add_argument("--eval-name", default="dg")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    argv = ["evaluate", "--output-dir", str(args.run), "--data-dir", args.data_dir, "--eval-reference-dir"]
    argv += [*args.eval_reference_dir, "--eval-name", args.eval_name, "--device", "cpu"]
    argv += ["--threads", str(args.threads)] if args.threads else []
    parsed = parse_args(argv)
    cfg = resolve_configs(parsed, None, recorded_config(parsed))
    parts = commands.judged_run(cfg)
    autoencoder, diffusion = parts["autoencoder"], parts["diffusion"]
    z_fake, y_fake = fakes(args.run, diffusion, args.fakes_per_class, parts["options"])
    mu, logvar, y_real = encode_dataset(autoencoder, parts["train"])
    g = torch.Generator().manual_seed(3)
    z_real = diffusion.from_vae_latents(autoencoder, autoencoder.reparameterize(mu, logvar, g))
    h_mu, h_logvar, h_y = encode_dataset(autoencoder, parts["held"])
    z_held = diffusion.from_vae_latents(autoencoder, autoencoder.reparameterize(h_mu, h_logvar, g))
    order = torch.randperm(len(z_fake), generator=g)
    cut = len(order) // 10
    held_fake, train_fake = order[:cut], order[cut:]
    path = args.run / "dg_discriminator.pt"
    disc = train_discriminator(
        diffusion,
        (z_real, y_real),
        (z_fake[train_fake], y_fake[train_fake]),
        (z_held, h_y),
        (z_fake[held_fake], y_fake[held_fake]),
        autoencoder.side,
        autoencoder.latent_channels,
    )
    torch.save(disc.state_dict(), path)
    parts["diffusion"] = DiscriminatorGuided(diffusion, disc, args.weight, args.min_t)
    result = evaluate_run(**parts)
    print(format_table(result))
    print(json.dumps({"weight": args.weight, "min_t": args.min_t, "written": f"{args.run / args.eval_name}.json"}))


if __name__ == "__main__":
    main()
