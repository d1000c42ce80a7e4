"""A cheap screen for what makes the denoiser learn faster: train the cpu preset's denoiser on a finished run's cached
latents for a few hundred steps, then score its EMA weights on one fixed held-out set of (z_0, t, eps).

    python experiments/denoiser_screen.py RUN --data-dir DATA [--steps 600] [--optimizer adamw|muon] [--muon-lr 0.01]
        [--repa-weight 0.5 --repa-layer backbone.up.5] [--layersync-weight 0.5 --layersync-layers EARLY LATE]
        [--tag NAME] [--log FILE]

RUN is a run folder with a trained VAE (its split and seed come from its config.json). The held-out set is every
held-out latent and its mirror, four posterior draws each, with noise levels and noise drawn from a fixed generator:
the same set for every variant, so two variants' losses are paired and differ by what they learned, not by the draw.
The score is the held-out v-loss, Min-SNR-5-weighted (what the cpu preset trains on) and unweighted per quarter of the
timestep range. Read a variant against `--optimizer adamw` at equal wall time (the `train_s` it prints) and against
adamw at twice the steps, which says what doubling the compute buys on this scale.

Three variants that are not in the training code (all lost here, docs/shape_yardstick.md):
- `--optimizer muon`: Muon (Jordan et al. 2024: the momentum of every hidden convolution and linear weight,
  orthogonalised by five Newton-Schulz iterations in bf16) with AdamW for the first and last convolution, the class
  embedding, biases and norms;
- `--repa-weight W`: representation alignment (REPA, Yu et al. 2025) with a teacher trained here, since no pretrained
  encoder can be downloaded: a cat-versus-dog CNN (the judges' architecture, 10 epochs on the run's training images),
  whose last 8x8 feature map (128 channels) the denoiser's `--repa-layer` output, through a 1x1-conv MLP, is pulled
  towards by cosine similarity, weighted W. The teacher is trained once per run folder and cached there;
- `--layersync-weight W`: LayerSync (Haghighi et al. 2026), the cosine similarity per position between an early layer's
  output and a deeper layer's of the same grid and width (detached), weighted W; no teacher, no parameter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import load_dataset, to_model_range  # noqa: E402
from evaluation.classifier import train_classifier  # noqa: E402
from models import ConditionalUNet  # noqa: E402
from models.diffusion import ConditionalDenoiseDiffusion  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402
from training.config import PRESETS, DiffusionConfig  # noqa: E402
from training.context import RunContext, native_bf16  # noqa: E402
from training.diffusion import encode_dataset, train_step  # noqa: E402
from training.optim import EMA, make_optimizer, warmup_cosine  # noqa: E402

CPU = torch.device("cpu")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic iteration of Jordan et al. 2024


@torch.no_grad()
def orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to g (rows x cols), approximately, by Newton-Schulz iterations in bf16."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(torch.bfloat16)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for matrices (conv weights flattened to out x in*k*k): Nesterov momentum, orthogonalised, scaled by
    sqrt(max(1, rows / cols))."""

    def __init__(self, params, lr: float, momentum: float = 0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"]).reshape(len(p), -1)
                p.add_(orthogonalise(g).view_as(p), alpha=-group["lr"] * max(1.0, g.size(0) / g.size(1)) ** 0.5)


class Together:
    """Optimizers, or their schedules, stepped as one."""

    def __init__(self, *parts):
        self.parts = parts

    def zero_grad(self, set_to_none: bool = True):
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self):
        for part in self.parts:
            part.step()


class AlignedDiffusion(ConditionalDenoiseDiffusion):
    """The denoising loss minus REPA's term: `weight` x the mean cosine similarity between one of the denoiser's layer
    outputs (kept by a hook), through a 1x1-conv MLP, and the teacher's features of the batch (`teacher_batch`, set
    before each step)."""

    def __init__(self, unet: ConditionalUNet, layer: str, target_channels: int, weight: float, **kwargs):
        super().__init__(unet, **kwargs)
        self.outputs, self.weight, self.teacher_batch = {}, weight, None
        dict(unet.named_modules())[layer].register_forward_hook(lambda m, i, out: self.outputs.__setitem__("h", out))
        with torch.no_grad():
            unet(torch.zeros(1, 256), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        width = self.outputs["h"].shape[1]
        self.projector = nn.Sequential(
            nn.Conv2d(width, 256, 1), nn.SiLU(), nn.Conv2d(256, 256, 1), nn.SiLU(), nn.Conv2d(256, target_channels, 1)
        )

    def loss(self, z0, y, generator=None, model=None):
        loss, t, per_sample = super().loss(z0, y, generator, model)
        projected = self.projector(self.outputs["h"]).float()
        similarity = F.cosine_similarity(projected, self.teacher_batch.float(), dim=1).mean()
        return loss - self.weight * similarity, t, per_sample


class SyncedDiffusion(ConditionalDenoiseDiffusion):
    """The denoising loss minus LayerSync's term (Haghighi et al. 2026): `weight` x the mean cosine similarity, per
    grid position, between an early layer's output and a deeper layer's of the same width and grid, the deeper one
    detached: the network's own later features guide its earlier ones, with no parameter and no teacher."""

    def __init__(self, unet: ConditionalUNet, early: str, late: str, weight: float, **kwargs):
        super().__init__(unet, **kwargs)
        self.outputs, self.weight = {}, weight
        modules = dict(unet.named_modules())
        for key, layer in (("early", early), ("late", late)):
            modules[layer].register_forward_hook(lambda m, i, out, key=key: self.outputs.__setitem__(key, out))

    def loss(self, z0, y, generator=None, model=None):
        loss, t, per_sample = super().loss(z0, y, generator, model)
        early, late = self.outputs["early"].float(), self.outputs["late"].detach().float()
        return loss - self.weight * F.cosine_similarity(early, late, dim=1).mean(), t, per_sample


def muon_split(model: nn.Module) -> tuple[list, list]:
    """(hidden matrices for Muon, the rest for AdamW)."""
    outer = ("backbone.conv_in.", "backbone.out.", "class_emb.")
    muon, rest = [], []
    for name, p in model.named_parameters():
        (muon if p.dim() >= 2 and not name.startswith(outer) else rest).append(p)
    return muon, rest


def teacher_features(run: Path, train) -> torch.Tensor:
    """The REPA teacher's last 8x8 feature map (2N, 128, 8, 8) of every training image and its mirror, in the order
    of `encode_dataset`; trained once and cached in the run folder."""
    path = run / "screen_teacher.pt"
    if path.exists():
        return torch.load(path)
    start = time.perf_counter()
    teacher = train_classifier(
        train, CPU, num_classes=2, epochs=10, batch_size=128, lr=3e-3, generator=torch.Generator().manual_seed(99)
    )
    body = teacher.body[:-1]  # without the global pooling
    x = to_model_range(train.x)
    with torch.no_grad():
        feats = torch.cat([body(part) for image in (x, x.flip(-1)) for part in image.split(500)]).to(torch.bfloat16)
    print(f"teacher trained and applied in {time.perf_counter() - start:.0f} s", flush=True)
    torch.save(feats, path)
    return feats


def held_out_loss(diffusion: ConditionalDenoiseDiffusion, autoencoder, held_latents, gamma: float) -> dict:
    """The EMA model's v-loss on the fixed held-out set: Min-SNR-weighted mean, unweighted mean and quarters."""
    mu, logvar, y = (v.repeat(4, *[1] * (v.dim() - 1)) for v in held_latents)
    g = torch.Generator().manual_seed(7)
    z0 = diffusion.from_vae_latents(autoencoder, autoencoder.reparameterize(mu, logvar, g))
    t = diffusion.sample_timesteps(len(y), g)
    eps = torch.randn(z0.shape, generator=g)
    chunks = zip(z0.split(1000), t.split(1000), eps.split(1000), y.split(1000))
    with torch.no_grad():
        out = torch.cat([diffusion.model(diffusion.q_sample(z, s, e), s, c) for z, s, e, c in chunks])
    per = (out - diffusion.target(z0, t, eps)).square().mean(1)
    a = diffusion.alphas_cumprod[t]
    snr = a / (1 - a)
    quarter = (t * 4 // diffusion.n_steps).clamp(max=3)
    return {
        "weighted": round((per * snr.clamp(max=gamma) / (snr + 1)).mean().item(), 5),
        "unweighted": round(per.mean().item(), 5),
        "quarters": [round(per[quarter == k].mean().item(), 4) for k in range(4)],
        "n": len(y),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--muon-lr", type=float, default=0.01)
    p.add_argument("--repa-weight", type=float, default=0.0)
    p.add_argument("--repa-layer", default="backbone.up.5")
    p.add_argument("--layersync-weight", type=float, default=0.0)
    p.add_argument(
        "--layersync-layers", nargs=2, default=["backbone.down.1", "backbone.up.6"], metavar=("EARLY", "LATE")
    )
    p.add_argument("--tag", default="")
    p.add_argument("--log", type=Path, help="append the result (one JSON line) to this file")
    args = p.parse_args()

    recorded = json.loads((args.run / "config.json").read_text())["run"]
    cfg = dataclasses.replace(DiffusionConfig(), **{**PRESETS["cpu"]["diffusion"], "steps": args.steps})
    autoencoder, _ = load_pipeline(args.run)
    train, held = load_dataset(
        args.data_dir,
        download_root=Path(__file__).resolve().parents[1] / "data",
        holdout_fraction=recorded["holdout_fraction"],
        max_images=recorded["max_images"],
        generator=torch.Generator().manual_seed(recorded["seed"]),
    )
    cache = args.run / "screen_latents.pt"
    if not cache.exists():
        with torch.no_grad():
            torch.save({"train": encode_dataset(autoencoder, train), "held": encode_dataset(autoencoder, held)}, cache)
    latents = torch.load(cache)
    mu, logvar, y_all = latents["train"]

    torch.manual_seed(0)
    unet = ConditionalUNet(prediction=cfg.prediction)
    process = dict(
        device=CPU,
        class_dropout=cfg.class_dropout,
        min_snr_gamma=cfg.min_snr_gamma,
        timestep_sampling=cfg.timestep_sampling,
    )
    extra = []
    if args.repa_weight > 0:
        target = teacher_features(args.run, train)
        diffusion = AlignedDiffusion(unet, args.repa_layer, target.shape[1], args.repa_weight, **process)
        extra = list(diffusion.projector.parameters())
    elif args.layersync_weight > 0:
        diffusion = SyncedDiffusion(unet, *args.layersync_layers, args.layersync_weight, **process)
    else:
        diffusion = ConditionalDenoiseDiffusion(unet, **process)
    ema = EMA(unet, cfg.ema_decay)
    if args.optimizer == "muon":
        matrices, rest = muon_split(unet)
        parts = [Muon(matrices, args.muon_lr), torch.optim.AdamW(rest + extra, lr=cfg.lr, betas=(0.9, 0.99))]
    elif extra:
        parts = [torch.optim.AdamW(list(unet.parameters()) + extra, lr=cfg.lr, betas=(0.9, 0.99))]
    else:
        parts = [make_optimizer(unet, cfg.lr, cfg.weight_decay, CPU)]  # the training stage's own
    optimizer = Together(*parts)
    schedule = Together(*(warmup_cosine(opt, cfg.warmup_steps, cfg.steps) for opt in parts))
    ctx = RunContext(CPU, args.run, amp=native_bf16(CPU))
    g = torch.Generator().manual_seed(1000)
    start = time.perf_counter()
    for step in range(cfg.steps):  # the diffusion stage's step (training/diffusion.py) on the cached latents
        idx = torch.randint(0, len(y_all), (cfg.batch_size,), generator=g)
        z0 = diffusion.from_vae_latents(autoencoder, autoencoder.reparameterize(mu[idx], logvar[idx], g))
        if extra:
            diffusion.teacher_batch = target[idx]
        loss = train_step(unet, diffusion, optimizer, schedule, ema, z0, y_all[idx], cfg, ctx, g)["total"]
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    result = {
        "tag": args.tag,
        "optimizer": args.optimizer,
        "steps": cfg.steps,
        "repa_weight": args.repa_weight,
        "layersync_weight": args.layersync_weight,
        "train_s": round(time.perf_counter() - start),
        **held_out_loss(
            ConditionalDenoiseDiffusion(ema.model.eval(), device=CPU, timestep_sampling=cfg.timestep_sampling),
            autoencoder,
            latents["held"],
            cfg.min_snr_gamma,
        ),
    }
    print(json.dumps(result), flush=True)
    if args.log:
        with args.log.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
