"""Run and stage configuration: one dataclass per stage, the presets, and the checks of their values (cli.py derives
the command-line flags from them)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from errors import UserInputError
from models.compiled import COMPILE_MODES
from models.diffusion import PROCESS_DEFAULTS, SCHEDULES, TIMESTEP_SAMPLING, SamplingOptions
from models.samplers import SAMPLERS
from models.unet import PREDICTIONS

# The constraints a field may carry (metadata "check"): a test of the value and the words for the error message.
CHECKS = {
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "fraction": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "open_fraction": (lambda v: 0 < v < 1, "must be strictly between 0 and 1"),
    "decay": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "seed": (lambda v: 0 <= v < 2**63, "must be between 0 and 2**63 - 1"),
    "file_stem": (
        lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", v) is not None and v.lower() not in RUN_FILE_STEMS,
        "must be a plain name (letters, digits, - and _) other than the run's own files' (config, split, diagnose, "
        "log)",
    ),
}
RUN_FILE_STEMS = ("config", "split", "diagnose", "log")  # NAME.json must never overwrite what the run depends on
SAMPLING = SamplingOptions()  # the defaults of the sampling flags
RUN_DATA_OPTIONS = ("data_dir", "download_dir", "holdout_fraction", "max_images", "seed")  # what draws the split


def opt(default, help: str, check: str | None = None, **kw):
    """A dataclass field whose help text becomes its CLI flag's help; `check` names its constraint in CHECKS."""
    return field(default=default, metadata={"help": help, "check": check, **kw})


def compile_option(what: str):
    """The `compile` field of a stage: how torch.compile wraps its network."""
    return opt(
        "auto",
        f"torch.compile {what}: auto (reduce-overhead, i.e. CUDA graphs, on CUDA; off elsewhere), off, default, "
        "reduce-overhead; falls back to eager with a warning where unavailable",
        choices=COMPILE_MODES,
    )


@dataclass
class RunConfig:
    """Options of the whole run (not of a stage)."""

    data_dir: str | None = opt(
        None, "local folder with cat/ and dog/ (or train/{cat,dog}, test/{cat,dog}); default: download CIFAR-10"
    )
    output_dir: str = opt("./cifar_cat_dog_conditional_improved", "folder for checkpoints, samples, plots and logs")
    download_dir: str = opt("./data", "where torchvision downloads CIFAR-10")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto (cuda when available, else mps, else cpu)")
    seed: int = opt(0, "seed of the run's torch.Generator (data split, batches, noise)", "seed")
    holdout_fraction: float = opt(
        0.1, "share of the training images held out for validation when no test/ split exists", "open_fraction"
    )
    max_images: int | None = opt(
        None, "use at most this many training images (half per class); for quick runs (default: all)", "positive"
    )
    threads: int | None = opt(
        None,
        "CPU threads for torch (default: $OMP_NUM_THREADS, else the CPUs this process may use after affinity and "
        "cgroup quota); on a machine where another process is busy, 1 avoids threads waiting on each other",
        "positive",
    )
    amp: bool = opt(True, "bf16 autocast for training where bf16 is native (CUDA; CPUs with AVX512-BF16 or AMX)")
    log_every: int = opt(100, "steps between metric logs (host syncs happen only then)", "positive")
    checkpoint_every: int = opt(1000, "steps between resumable training-state checkpoints", "positive")
    resume: bool = opt(True, "continue an interrupted stage from its training state (--no-resume starts it afresh)")
    retrain_vae: bool = opt(
        False, "train the VAE even if its checkpoint exists (implies retraining the diffusion model)"
    )
    retrain_decoder: bool = opt(
        False,
        "run the decoder stage again on the run's VAE, from its pixel-loss decoder (the latents and the diffusion "
        "model stay as they are)",
    )
    retrain_diffusion: bool = opt(False, "train the diffusion model even if its checkpoint exists")
    autoencoder_from: str | None = opt(
        None,
        "copy the trained autoencoder (VAE and decoder stage) of this run folder (pretrained: the shipped model) into "
        "the run and train only the denoiser on it; its latent layout must be the run's",
    )
    visualize_every: int = opt(
        0, "also write visualisations every N steps of each stage (0: only at the end of a stage)", "non_negative"
    )
    figures: bool = opt(True, "write the figures at the end of each stage (--no-figures: checkpoints and metrics only)")
    time_budget: float | None = opt(
        None,
        "minutes the training command may take on this machine: a few steps of each stage are timed first, then "
        "each stage's steps are planned to fit (recorded in config.json; steps given as flags are kept and the rest "
        "re-split; default: the preset's fixed steps)",
        "positive",
    )


@dataclass
class VAEConfig:
    """Progressive VAE training. Phase boundaries are fractions of `steps`."""

    steps: int = opt(2560, "optimizer steps (2560 x 1024 = the 2.6 million images of 20,000 x 128)", "positive")
    batch_size: int = opt(1024, "images per step (per process under torchrun)", "positive")
    lr: float = opt(
        2.8e-3,
        "peak AdamW learning rate, cosine-annealed after warm-up (1e-3 at 128 images, x sqrt(batch/128))",
        "positive",
    )
    warmup_steps: int = opt(50, "linear learning-rate warm-up steps", "positive")
    weight_decay: float = opt(0.0, "AdamW weight decay", "non_negative")
    grad_clip: float = opt(1.0, "gradient-norm clip", "positive")
    compile: str = compile_option("the VAE for training")
    augment_shift: int = opt(2, "max random translation in pixels (with random flips)", "non_negative")
    kl_start: float = opt(
        0.1, "phase 2 (KL ramps in) starts at this fraction of steps; before it: reconstruction only", "fraction"
    )
    kl_ramp: float = opt(0.2, "fraction of steps over which the KL weight ramps from 0 to kl_weight", "fraction")
    cls_start: float = opt(
        0.4, "phase 3 (classifier and center loss ramp in) starts at this fraction of steps", "fraction"
    )
    finetune_start: float = opt(
        0.7, "phase 4 (fine-tuning with every term at full weight) starts at this fraction", "fraction"
    )
    pixel_weight: float = opt(1.0, "weight of the pixel MSE", "non_negative")
    perceptual_weight: float = opt(
        0.1, "weight of the VGG16 perceptual loss (0 disables it; off if weights are unavailable)", "non_negative"
    )
    kl_weight: float = opt(
        1e-5, "final KL weight (KL summed over latent dims, pixel loss averaged over pixels)", "non_negative"
    )
    cls_weight: float = opt(0.01, "final weight of the latent classifier's cross-entropy", "non_negative")
    center_weight: float = opt(
        0.01, "final weight of the center loss (mean squared distance of mu to its class center)", "non_negative"
    )
    scale_equivariance_weight: float = opt(
        0.0,
        "weight of the scale-equivariance loss (Skorokhodov et al. 2025): the latent average-pooled 2x2 must decode to "
        "the image average-pooled 2x2, which moves the image's coarse content into the latent's coarse content "
        "(0 disables it)",
        "non_negative",
    )


@dataclass
class DecoderConfig:
    """The decoder stage: the VAE's decoder alone fine-tuned with a pixel loss and a PatchGAN on the frozen latent
    space (the encoder, the latents and the denoiser trained on them do not change)."""

    steps: int = opt(
        1000, "optimizer steps (0: no decoder stage; the VAE's pixel-loss decoder is kept)", "non_negative"
    )
    batch_size: int = opt(256, "images per step (per process under torchrun)", "positive")
    lr: float = opt(
        2e-4, "AdamW learning rate of the decoder, held after warm-up (not annealed, as in GAN training)", "positive"
    )
    warmup_steps: int = opt(50, "linear learning-rate warm-up steps", "positive")
    weight_decay: float = opt(0.0, "AdamW weight decay", "non_negative")
    grad_clip: float = opt(1.0, "gradient-norm clip", "positive")
    compile: str = compile_option("the decoder for training")
    adversarial_weight: float = opt(
        0.5,
        "factor on the adaptive weight of the discriminator's hinge term (Esser et al. 2021: the ratio of the pixel "
        "loss's gradient norm to the adversarial loss's at the decoder's output)",
        "positive",
    )
    feature_matching_weight: float = opt(
        0.03,
        "weight of feature matching beside the pixel loss: the L1 distance between the discriminator's hidden features "
        "of a reconstruction and of its original, summed over its three layers (0: none)",
        "non_negative",
    )
    discriminator_lr: float = opt(
        2e-4, "AdamW learning rate of the PatchGAN discriminator (betas 0.5, 0.9)", "positive"
    )
    discriminator_width: int = opt(
        32,
        "channels of the discriminator's first layer (it doubles twice); 32 draws as well as 64 at 1.4x the steps/s",
        "positive",
    )
    ema_decay: float = opt(0.999, "EMA decay per step of the decoder weights written to the public file", "decay")


@dataclass
class DiffusionConfig:
    """Latent diffusion training on cached, normalised VAE latents."""

    steps: int = opt(6250, "optimizer steps (6250 x 2048 = the 12.8 million latents of 50,000 x 256)", "positive")
    batch_size: int = opt(2048, "latents per step (per process under torchrun)", "positive")
    lr: float = opt(
        8.5e-4,
        "peak AdamW learning rate, cosine-annealed after warm-up (3e-4 at 256 latents, x sqrt(batch/256))",
        "positive",
    )
    warmup_steps: int = opt(100, "linear learning-rate warm-up steps", "positive")
    weight_decay: float = opt(0.0, "AdamW weight decay", "non_negative")
    grad_clip: float = opt(1.0, "gradient-norm clip", "positive")
    compile: str = compile_option("the denoiser for training and sampling")
    ema_decay: float = opt(
        0.992,
        "EMA decay per step of the weights used for sampling (half-life 87 steps = 178k latents at 2048)",
        "decay",
    )
    n_steps: int = opt(PROCESS_DEFAULTS["n_steps"], "diffusion timesteps", "positive")
    schedule: str = opt(PROCESS_DEFAULTS["schedule"], "noise schedule", choices=tuple(SCHEDULES))
    prediction: str = opt(
        "v",
        "what the denoiser predicts: v (Salimans & Ho 2022; EDM's preconditioning for unit-variance latents) or eps "
        "(the noise)",
        choices=PREDICTIONS,
    )
    class_dropout: float = opt(
        0.1, "probability of replacing the label by the null class (classifier-free guidance)", "fraction"
    )
    timestep_sampling: str = opt(
        "lognormal",
        "training timesteps: uniform, or lognormal (EDM's log-normal noise levels, Karras et al. 2022)",
        choices=TIMESTEP_SAMPLING,
    )
    min_snr_gamma: float = opt(
        0.0, "Min-SNR loss weighting min(SNR, gamma)/SNR (Hang et al. 2023); 0 = plain MSE", "non_negative"
    )
    posterior_sample: bool = opt(
        True, "train on z drawn from q(z|x) each step (--no-diffusion-posterior-sample: on its mean mu)"
    )
    normalize_latents: bool = opt(
        PROCESS_DEFAULTS["normalize_latents"],
        "diffuse latents scaled to unit variance per dimension by the VAE's statistics (recorded in the denoiser file)",
    )


@dataclass
class SampleConfig:
    """How images are drawn: for the run's sample grids and for the `sample` command."""

    sampler: str = opt(SAMPLING.sampler, "reverse-process sampler", choices=tuple(SAMPLERS))
    steps: int | None = opt(
        SAMPLING.steps,
        "sampler steps (default: 12 for heun, i.e. 23 network calls; 50 for ddim and ddpm; 1000 with ddpm = the full "
        "ancestral chain)",
        flag="--sample-steps",
    )
    eta: float = opt(SAMPLING.eta, "DDIM stochasticity: 0 deterministic, 1 DDPM-like")
    guidance_scale: float | None = opt(
        SAMPLING.guidance_scale, "classifier-free guidance scale (default: 3; 1.0 = off)", "non_negative"
    )
    guidance_interval: tuple[float, float] = opt(
        SAMPLING.guidance_interval,
        "guide only at timesteps t with LO <= t / n_steps <= HI (Kynkaanniemi et al. 2024)",
        nargs=2,
        metavar=("LO", "HI"),
    )
    num_samples: int = opt(64, "images per class (sample command) or in total (sample grids)", "positive")
    target_class: str = opt("both", "sample command: cat, dog, 0, 1 or both", flag="--class")
    sample_seed: int | None = opt(None, "seed for sampling (default: the run's --seed)", "seed")
    pretrained: bool = opt(
        False,
        "sample command: draw from the shipped model in pretrained/ (no training, no run needed) into "
        "OUTPUT_DIR/samples/pretrained_CLASS_seedN",
    )
    save_npz: bool = opt(False, "sample command: also write the images as uint8 arrays in an .npz")

    def options(self) -> SamplingOptions:
        """The sampling options these flags describe."""
        return SamplingOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SamplingOptions)})


@dataclass
class EvalConfig:
    """The evaluate command: how many samples, and the judge classifier trained on real images."""

    samples_per_class: int = opt(1000, "generated images per class", "positive", flag="--eval-samples")
    reference_dirs: list[str] | None = opt(
        None,
        "folders of real images in one sub-folder per class (CIFAR-10's ten classes) for the ten-way judge; several "
        "folders are merged; default: CIFAR-10's training set when the run downloaded it, else a two-way judge",
        flag="--eval-reference-dir",
        nargs="+",
    )
    fid_weights: str | None = opt(
        None,
        "Inception weights file for FID/KID (pt_inception-2015-12-05-6726825d.pth) on offline machines (default: "
        "torchmetrics' download)",
        flag="--fid-weights",
    )
    name: str = opt("evaluation", "results go to OUTPUT_DIR/NAME.json", "file_stem", flag="--eval-name")
    diagnose_samples: int = opt(
        500,
        "diagnose command: images per class in each judge row, and training latents in the ladder",
        "positive",
        flag="--diagnose-samples",
    )
    classifier_epochs: int = opt(15, "epochs of the judge classifier", "positive")
    judge_width: int = opt(32, "channels of the judge's first layer (its features have 4x as many)", "positive")
    classifier_batch_size: int = opt(128, "batch size of the judge classifier", "positive")
    classifier_lr: float = opt(3e-3, "peak learning rate of the judge classifier", "positive")
    retrain_classifier: bool = opt(
        False, "train the judge classifier again even if OUTPUT_DIR/judge_classifier.pt fits"
    )
    weights: str = opt(
        "ema",
        "denoiser weights to evaluate: ema (the public file) or raw (from the training state)",
        choices=("ema", "raw"),
        flag="--eval-weights",
    )


SECTIONS = {
    "run": (RunConfig, ""),
    "vae": (VAEConfig, "vae-"),
    "decoder": (DecoderConfig, "decoder-"),
    "diffusion": (DiffusionConfig, "diffusion-"),
    "sample": (SampleConfig, ""),
    "eval": (EvalConfig, "eval-"),
}

# Presets override stage defaults; explicit CLI flags override presets.
PRESETS: dict[str, dict[str, dict]] = {
    "default": {"run": {"visualize_every": 2000}},
    "cpu": {
        "run": {"log_every": 50, "checkpoint_every": 500},
        "vae": {"steps": 675, "batch_size": 64, "lr": 2e-3, "warmup_steps": 50, "perceptual_weight": 0.0},
        "decoder": {"steps": 700, "batch_size": 64},
        # Min-SNR-5: shape FD 0.78 / 0.69 and 0.92 / 0.64 at two training seeds against plain MSE's 0.91 / 0.76 and
        # 0.96 / 0.73 (docs/shape_yardstick.md; a gamma of 2 lost the gain, 10 tied with the cats' colour FD at 27);
        # not measured at the default preset's compute, which keeps plain MSE
        "diffusion": {
            "steps": 1750,
            "batch_size": 128,
            "lr": 1e-3,
            "warmup_steps": 100,
            "ema_decay": 0.998,
            "min_snr_gamma": 5.0,
        },
    },
    "smoke": {
        "run": {"max_images": 600, "log_every": 10, "checkpoint_every": 20},
        "vae": {"steps": 30, "batch_size": 32, "lr": 1e-3, "warmup_steps": 5, "perceptual_weight": 0.0},
        "decoder": {"steps": 10, "batch_size": 16, "warmup_steps": 5},
        "diffusion": {"steps": 30, "batch_size": 64, "lr": 3e-4, "warmup_steps": 5, "ema_decay": 0.9},
        "sample": {"steps": 10, "num_samples": 16},
        "eval": {"samples_per_class": 50, "classifier_epochs": 1, "diagnose_samples": 50},
    },
}


def validate(section: str, cfg) -> None:
    """Refuse values out of range (each field's check; VAE phases out of order), naming the flag and the rule."""
    prefix = SECTIONS[section][1]
    for f in dataclasses.fields(cfg):
        value, check = getattr(cfg, f.name), f.metadata.get("check")
        if isinstance(value, float) and not math.isfinite(value):  # inf would pass "positive" and is not JSON
            raise UserInputError(f"{field_flag(f, prefix)} must be a finite number, got {value}")
        if check and value is not None and not CHECKS[check][0](value):
            raise UserInputError(f"{field_flag(f, prefix)} {CHECKS[check][1]}, got {value}")
    if section == "vae" and not cfg.kl_start <= cfg.cls_start <= cfg.finetune_start:
        raise UserInputError(
            f"VAE phases out of order: --vae-kl-start ({cfg.kl_start}) <= --vae-cls-start "
            f"({cfg.cls_start}) <= --vae-finetune-start ({cfg.finetune_start}) must hold"
        )


def validate_sampling(cfg: dict) -> None:
    """The sampling flags, by SamplingOptions' own validation (against the run's n_steps), naming the flag."""
    try:
        cfg["sample"].options().validate(cfg["diffusion"].n_steps)
    except UserInputError as err:
        raise UserInputError(flag_of("sample", err.option) + str(err)[len(err.option) :]) from None


def field_flag(f: dataclasses.Field, prefix: str) -> str:
    """The command-line flag of a config field of the section with flag prefix `prefix`."""
    return f.metadata.get("flag") or "--" + prefix + f.name.replace("_", "-")


def flag_of(section: str, name: str) -> str:
    """The command-line flag of field `name` of `section`."""
    cls, prefix = SECTIONS[section]
    return field_flag(next(f for f in dataclasses.fields(cls) if f.name == name), prefix)
