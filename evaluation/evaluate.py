"""`python main.py evaluate`: numbers for a trained run, on held-out real images, written to JSON and printed."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from data import CLASS_NAMES, Split, to_model_range, to_unit_range
from evaluation.classifier import CatDogClassifier, classify, train_classifier
from evaluation.metrics import InceptionMetrics, frechet_distance, psnr, ssim
from models.batched import reconstruct_images
from models.generate import generate_class_samples
from training.common import atomic_save, load_weights

log = logging.getLogger(__name__)
CLASSIFIER_FILE = "catdog_classifier.pt"


def reconstruction_scores(autoencoder, held: Split) -> tuple[dict[str, float], list[torch.Tensor]]:
    """PSNR and SSIM of held-out images against their reconstructions from mu; and the reconstructions per class."""
    originals, recons = to_unit_range(to_model_range(held.x)), reconstruct_images(autoencoder, held.x)
    per_class = [recons[held.y == label] for label in range(len(CLASS_NAMES))]
    return {"psnr": psnr(originals, recons), "ssim": ssim(originals, recons)}, per_class


def get_classifier(out_dir: Path, train: Split, cfg, device: torch.device, seed: int) -> CatDogClassifier:
    """Load the run's judge classifier (or train and save it), in eval mode."""
    model, path = CatDogClassifier().to(device), out_dir / CLASSIFIER_FILE
    if path.is_file() and not cfg.retrain_classifier:
        load_weights(model, path, device)
    else:
        model = train_classifier(
            train,
            device,
            epochs=cfg.classifier_epochs,
            batch_size=cfg.classifier_batch_size,
            lr=cfg.classifier_lr,
            generator=torch.Generator(device).manual_seed(seed),
        )
        atomic_save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return model.eval()


def sample_classes(autoencoder, diffusion, n: int, sample_kwargs: dict, seed: int) -> tuple[list[torch.Tensor], float]:
    """n samples of each class and the sampling rate in images per second."""
    gen = torch.Generator(diffusion.device).manual_seed(seed)
    start = time.perf_counter()
    samples = [
        generate_class_samples(autoencoder, diffusion, label, n, generator=gen, **sample_kwargs)
        for label in range(len(CLASS_NAMES))
    ]
    return samples, len(CLASS_NAMES) * n / (time.perf_counter() - start)


def sample_scores(
    samples: list[torch.Tensor],
    held: Split,
    real_feat: torch.Tensor,
    judge: CatDogClassifier,
    inception: InceptionMetrics,
) -> dict:
    """Per class and overall: class fidelity, classifier-feature Frechet distance to the held-out images (whose judge
    features are `real_feat`), and FID/KID when available."""
    real = to_unit_range(to_model_range(held.x))
    scores, fakes, fake_feats, labels = {}, [], [], []
    for label, (name, fake) in enumerate(zip(CLASS_NAMES, samples)):
        pred, feat = classify(judge, fake)
        sel = held.y == label
        scores[name] = {
            "class_fidelity": (pred == label).float().mean().item(),
            "feature_fd": frechet_distance(feat.numpy(), real_feat[sel].numpy()),
        }
        if inception.available:
            scores[name].update(inception.compute(real[sel], fake))
        fakes.append(fake), fake_feats.append(feat), labels.append(pred == label)
    scores["overall"] = {
        "class_fidelity": torch.cat(labels).float().mean().item(),
        "feature_fd": frechet_distance(torch.cat(fake_feats).numpy(), real_feat.numpy()),
    }
    if inception.available:
        scores["overall"].update(inception.compute(real, torch.cat(fakes)))
    return scores


def evaluate_run(
    autoencoder, diffusion, train: Split, held: Split, out_dir: Path, eval_cfg, sample_kwargs: dict, seed: int
) -> dict:
    """Every number of the evaluation as one JSON-ready dict (also written to out_dir/<eval_cfg.name>.json)."""
    device = diffusion.device
    inception = InceptionMetrics(eval_cfg.fid_weights, device)
    if not inception.available:
        log.warning(
            "FID/KID skipped: Inception weights unavailable (%s); pass --fid-weights PATH "
            "(pt_inception-2015-12-05-6726825d.pth)",
            inception.reason,
        )
    judge = get_classifier(out_dir, train, eval_cfg, device, seed)
    real_pred, real_feat = classify(judge, to_unit_range(to_model_range(held.x)))
    samples, rate = sample_classes(autoencoder, diffusion, eval_cfg.samples_per_class, sample_kwargs, seed)
    reconstruction, reconstructions = reconstruction_scores(autoencoder, held)
    result = {
        "reconstruction": reconstruction,
        "classifier_real_accuracy": (real_pred == held.y).float().mean().item(),
        # the decoder's own ceiling: the same scores for the held-out images passed through the VAE
        "reconstructions_judged": sample_scores(reconstructions, held, real_feat, judge, inception),
        "samples": sample_scores(samples, held, real_feat, judge, inception),
        "sampling": {
            **sample_kwargs,
            "samples_per_class": eval_cfg.samples_per_class,
            "images_per_s": rate,
            "s_per_1000_images": 1000 / rate,
            "seed": seed,
            "device": str(device),
        },
        "held_out_images": len(held),
        "fid_available": inception.available,
        "eval_config": dataclasses.asdict(eval_cfg),
    }
    (out_dir / f"{eval_cfg.name}.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    """The evaluation as a plain-text table."""
    rec, smp = result["reconstruction"], result["sampling"]
    lines = [
        f"reconstruction (held-out, n={result['held_out_images']}): PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f}",
        f"judge classifier accuracy on real held-out images: {result['classifier_real_accuracy']:.1%}",
        f"sampling: {smp['sampler']} {smp['steps']} steps, eta {smp['eta']}, guidance {smp['guidance_scale']}, "
        f"{smp['samples_per_class']} per class, {smp['s_per_1000_images']:.1f} s per 1000 images on {smp['device']}",
        f"{'':10s}{'class fidelity':>16s}{'feature FD':>12s}{'FID':>9s}{'KID':>9s}",
    ]
    rows = [*result["samples"].items(), ("(reconstructions of the held-out images, for reference)", None)]
    rows += result["reconstructions_judged"].items()
    for name, s in rows:
        if s is None:
            lines.append(name)
            continue
        fid = f"{s['fid']:9.2f}{s['kid_mean']:9.4f}" if "fid" in s else f"{'n/a':>9s}{'n/a':>9s}"
        lines.append(f"{name:10s}{s['class_fidelity']:16.1%}{s['feature_fd']:12.3f}{fid}")
    return "\n".join(lines)
