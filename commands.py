"""The commands that read a trained run: `sample` (images of a class, from a run or the shipped model), `evaluate` and
`diagnose` (scores against held-out images); and what they share with training (the run's splits, its sampling seed)."""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from data import CLASS_NAMES, class_index, load_dataset
from evaluation.diagnose import diagnose_run, format_report
from evaluation.evaluate import evaluate_run, format_table
from evaluation.judge import get_judge, load_reference
from models.compiled import compile_mode
from models.generate import iter_class_samples
from models.pipeline import load_pipeline, run_dir
from training.run import (
    check_recorded_data,
    check_split,
    make_context,
    output_folder,
    run_folder,
    setup_logging,
    split_record,
)
from visualization import save_samples
from visualization.samples import labelled_sheet, remove_sample_set, save_arrays

log = logging.getLogger("main")
SAMPLE_BATCH = 256  # the sample command draws and writes this many images at a time
GRID_MAX = 256  # images in the sample command's grid (every image is written as a PNG)


def load_splits(run) -> tuple:
    """The training and held-out splits that the run options describe."""
    return load_dataset(
        run.data_dir,
        download_root=run.download_dir,
        holdout_fraction=run.holdout_fraction,
        max_images=run.max_images,
        generator=torch.Generator().manual_seed(run.seed),
    )


def sample_seed(cfg: dict) -> int:
    """--sample-seed, or the run's --seed."""
    return cfg["sample"].sample_seed if cfg["sample"].sample_seed is not None else cfg["run"].seed


def sample(cfg: dict) -> None:
    """Draw images of the chosen class(es) from trained checkpoints (the run's, or with --pretrained the shipped
    model's, into the output folder); trains nothing."""
    run, s = cfg["run"], cfg["sample"]
    ctx = make_context(run)
    setup_logging(None, True)
    both = s.target_class.strip().lower() == "both"
    labels = list(range(len(CLASS_NAMES))) if both else [class_index(s.target_class)]
    with output_folder(ctx.out_dir, "sample") if s.pretrained else run_folder(ctx.out_dir, "sample"):
        source = run_dir("pretrained") if s.pretrained else ctx.out_dir
        autoencoder, diffusion = load_pipeline(source, ctx.device)
        if s.pretrained:
            log.info("sampling from the shipped model in %s (trained nothing); images go to %s", source, ctx.out_dir)
        diffusion.compile(compile_mode(cfg["diffusion"].compile, ctx.device))
        draw_samples(cfg, ctx, autoencoder, diffusion, labels)


def draw_samples(cfg: dict, ctx, autoencoder, diffusion, labels: list[int]) -> None:
    """The sample command's images, grids (and arrays) of each class in `labels`: written batch by batch as they are
    drawn, under a progress bar (a Ctrl-C keeps what was written)."""
    s = cfg["sample"]
    seed = sample_seed(cfg)
    gen = torch.Generator(ctx.device).manual_seed(seed)
    for label in labels:
        name, batches = CLASS_NAMES[label], []
        folder = ctx.out_dir / "samples" / f"{'pretrained_' if s.pretrained else ''}{name}_seed{seed}"
        replaced = remove_sample_set(folder, name)
        if replaced:
            log.info("removed the %d images, grid and arrays an earlier sample command wrote in %s", replaced, folder)
        draw = iter_class_samples(
            autoencoder, diffusion, label, s.num_samples, options=s.options(), generator=gen, batch_size=SAMPLE_BATCH
        )
        with tqdm(total=s.num_samples, desc=f"sample {name}", unit="image") as bar:
            for batch in draw:
                save_samples(batch, folder, name, start=sum(map(len, batches)))
                batches.append(batch)
                bar.update(len(batch))
        images = torch.cat(batches)
        arrays = f", arrays {save_arrays(images, folder, name)}" if s.save_npz else ""
        shown = images[:GRID_MAX]
        count = f"the first {len(shown)} of {len(images)}" if len(shown) < len(images) else f"{len(images)}"
        grid = labelled_sheet([shown], [f"{name}, seed {seed}: {count} samples"], folder.with_suffix(".png"), 8, 2)
        print(f"{name}: {len(images)} images in {folder}/, grid {grid}{arrays}")


def judged_run(cfg: dict) -> dict:
    """What evaluate and diagnose start from: the run's splits, its trained pipeline, the judge's reference images and
    the (cached) judge, as keyword arguments of evaluate_run and diagnose_run."""
    run, s = cfg["run"], cfg["sample"]
    ctx = make_context(run)
    setup_logging(None, True)
    # the run's checkpoints first: a folder without a run fails here, before any data is read or downloaded
    autoencoder, diffusion = load_pipeline(ctx.out_dir, ctx.device, raw_weights=cfg["eval"].weights == "raw")
    diffusion.compile(compile_mode(cfg["diffusion"].compile, ctx.device))
    check_recorded_data(run, ctx.out_dir)
    train_set, held = load_splits(run)
    fix = (
        "drop the options that change it (--max-images, --holdout-fraction, --seed), or use a run trained on this data"
    )
    check_split(ctx.out_dir, split_record(run, train_set, held), fix)
    reference = load_reference(
        cfg["eval"].reference_dirs, run.data_dir, run.download_dir, train_set, held, torch.Generator().manual_seed(0)
    )
    judge = get_judge(ctx.out_dir, reference, cfg["eval"], ctx.device, run.seed)
    shape_judge = get_judge(ctx.out_dir, reference, cfg["eval"], ctx.device, run.seed, view="shape")
    seed = s.sample_seed if s.sample_seed is not None else run.seed  # run.seed may come from the run's config.json
    return dict(
        autoencoder=autoencoder,
        diffusion=diffusion,
        train=train_set,
        held=held,
        reference=reference,
        judge=judge,
        shape_judge=shape_judge,
        out_dir=ctx.out_dir,
        eval_cfg=cfg["eval"],
        options=s.options(),
        seed=seed,
    )


def evaluate(cfg: dict) -> None:
    """Score a trained run on its own held-out split (options default to those in its config.json)."""
    with run_folder(cfg["run"].output_dir, "evaluate"):
        parts = judged_run(cfg)
        print(format_table(evaluate_run(**parts)))
    print(f"written to {parts['out_dir'] / (cfg['eval'].name + '.json')}")


def diagnose(cfg: dict) -> None:
    """Find which part of a trained run limits its samples: the loss ladder, judge rows, one verdict line."""
    with run_folder(cfg["run"].output_dir, "diagnose"):
        parts = judged_run(cfg)
        print(format_report(diagnose_run(**parts)))
    print(f"written to {parts['out_dir'] / 'diagnose.json'}")
