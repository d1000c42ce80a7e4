"""Does a model copy its training images? The samples that lie closest to a training image, shown beside it.

    python experiments/nearest_copies.py RUN --data-dir DATA [--per-class 1000] [--show 8] [--figure F.png]
        [--json F.json] [--threads N]

Draws `--per-class` samples of each class as `python main.py evaluate` does (the run's sampling options, the run's
seed), and for each sample finds its nearest training image of its class in two spaces: the features of the run's
cached photo judge (judge_classifier.pt, written by `evaluate`), and the diffusion latent space (the sample's latent
against the training images' mean latents, unit variance per dimension). In each space the copy share is the
share of samples nearer to a training image than 95% of the held-out images are to theirs (held-out images score 0.05
by construction; evaluate's "copies" column is the feature-space one). The figure shows the `--show` samples with the
smallest feature distance relative to that threshold, each above its nearest training image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import load_file  # noqa: E402
from data import CLASS_NAMES, load_dataset, to_model_range, to_unit_range  # noqa: E402
from evaluation.classifier import JudgeClassifier, classify  # noqa: E402
from models.batched import encode_images  # noqa: E402
from models.diffusion import SamplingOptions  # noqa: E402
from models.pipeline import load_pipeline  # noqa: E402
from visualization.samples import labelled_sheet  # noqa: E402

QUANTILE = 0.05


def nearest(queries: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query's nearest row of `train`."""
    d = torch.cdist(queries.double(), train.double())
    return d.min(dim=1)


def threshold(held: torch.Tensor, train: torch.Tensor) -> float:
    """The distance under which only QUANTILE of held-out points lie from their nearest training point."""
    return torch.quantile(nearest(held, train)[0], QUANTILE).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--show", type=int, default=8)
    p.add_argument("--figure", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    record = json.loads((args.run / "config.json").read_text())
    autoencoder, diffusion = load_pipeline(args.run)
    train, held = load_dataset(
        args.data_dir,
        download_root=args.run / "data",
        holdout_fraction=record["run"]["holdout_fraction"],
        max_images=record["run"]["max_images"],
        generator=torch.Generator().manual_seed(record["run"]["seed"]),
    )
    saved = load_file(args.run / "judge_classifier.pt")
    judge = JudgeClassifier(len(saved["classes"]), record["eval"]["judge_width"], "photo")
    judge.load_state_dict(saved["state_dict"])
    options = SamplingOptions(
        **{k: v for k, v in record["sample"].items() if k in SamplingOptions.__dataclass_fields__}
    )
    g = torch.Generator().manual_seed(record["run"]["seed"])
    summary, shown = {}, []
    for label, name in enumerate(CLASS_NAMES):
        y = torch.full((args.per_class,), label)
        with torch.no_grad():
            z = diffusion.sample(y, options, generator=g)  # process space: unit variance per dimension
            samples = to_unit_range(autoencoder.decode(diffusion.to_vae_latents(autoencoder, z))).float()
        train_x, held_x = train.x[train.y == label], held.x[held.y == label]
        feats = {
            k: classify(judge, to_unit_range(to_model_range(x)))[1] for k, x in (("train", train_x), ("held", held_x))
        }
        sample_feats = classify(judge, samples)[1]
        latents = {
            k: diffusion.from_vae_latents(autoencoder, encode_images(autoencoder, x)[0])
            for k, x in (("train", train_x), ("held", held_x))
        }
        out = {}
        for space, (q, ref, hld) in {
            "judge features": (sample_feats, feats["train"], feats["held"]),
            "latent space": (z, latents["train"], latents["held"]),
        }.items():
            limit = threshold(hld, ref)
            dist, idx = nearest(q, ref)
            out[space] = {"copies": round((dist < limit).double().mean().item(), 3), "threshold": round(limit, 3)}
            if space == "judge features":
                ratio = dist / limit
                for i in ratio.argsort()[: args.show].tolist():
                    shown.append((ratio[i].item(), name, samples[i], to_unit_range(to_model_range(train_x[idx[i]]))))
        summary[name] = out
        print(name, json.dumps(out), flush=True)
    if args.figure:
        shown.sort(key=lambda item: item[0])
        pairs = shown[: args.show]
        top = torch.stack([s for _, _, s, _ in pairs])
        bottom = torch.stack([t for _, _, _, t in pairs]).float()
        ratios = f"{pairs[0][0]:.2f}-{pairs[-1][0]:.2f}"
        labels = [f"the {len(pairs)} samples nearest a training image (distance / threshold {ratios})", "those images"]
        labelled_sheet([top, bottom], labels, args.figure, len(pairs), 4)
    if args.json:
        args.json.write_text(
            json.dumps({"run": str(args.run), "per_class": args.per_class, **summary}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
