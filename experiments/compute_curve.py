"""The compute curve: feature FD and recall per class of one recipe trained on more and more latents, with the
blur-0.7 calibration row (the FD target) and recall 0.6 marked.

python experiments/compute_curve.py RUN_DIR [RUN_DIR ...] --out docs/compute_curve.png [--eval-name evaluation]

Each RUN_DIR holds a finished run and its `evaluate` result (RUN_DIR/NAME.json); latents seen = the diffusion stage's
steps x batch size, read from its config.json. Where a run also holds `diagnose.json`, the decoder's ceiling (its
"decoder on training latents" row: what a perfect generator of the training latents would score) is drawn too.
Prints the table (markdown) and writes the figure.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLASSES = ("cat", "dog")
CEILING = "decoder on training latents"  # evaluation/diagnose.py's CEILING_ROW


def point(run: Path, name: str) -> dict:
    """Latents seen and the samples' numbers of one run."""
    diffusion = json.loads((run / "config.json").read_text())["diffusion"]
    result = json.loads((run / f"{name}.json").read_text())
    diagnosed = run / "diagnose.json"
    return {
        "run": run.name,
        "latents": diffusion["steps"] * diffusion["batch_size"],
        "samples": result["samples"],
        "blur": result["calibration"]["blurred, sigma 0.7"],
        "guidance": f"{result['sampling'].get('guidance', 'cfg')} {result['sampling']['guidance_scale']:g}",
        "ceiling": json.loads(diagnosed.read_text())["judge_rows"][CEILING] if diagnosed.is_file() else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eval-name", default="evaluation")
    a = p.parse_args()
    points = sorted((point(run, a.eval_name) for run in a.runs), key=lambda q: q["latents"])
    print("| latents seen | feature FD (cat / dog) | recall (cat / dog) | colour FD (cat / dog) | copies (cat / dog) |")
    print("|---|---|---|---|---|")
    for q in points:
        s = q["samples"]
        cells = [
            " / ".join(f"{s[c][m]:{f}}" for c in CLASSES)
            for m, f in (("fd", ".2f"), ("recall", ".2f"), ("colour_fd", ".0f"), ("copies", ".2f"))
        ]
        print(f"| {q['latents']:,} ({q['run']}) | " + " | ".join(cells) + " |")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = [q["latents"] for q in points]
    ceiling = next((q["ceiling"] for q in points if q["ceiling"]), None)
    for c, style, color in zip(CLASSES, ("o-", "s--"), ("C0", "C1")):
        axes[0].plot(x, [q["samples"][c]["fd"] for q in points], style, color=color, label=f"{c}s")
        axes[0].axhline(points[-1]["blur"][c]["fd"], ls=":", color=color, label=f"blur 0.7 ({c}s): the target")
        if ceiling:
            axes[0].axhline(ceiling[c]["fd"], ls="-.", lw=0.8, color=color, label=f"decoder's ceiling ({c}s)")
        axes[1].plot(x, [q["samples"][c]["recall"] for q in points], style, color=color, label=f"{c}s")
        if ceiling:
            axes[1].axhline(ceiling[c]["recall"], ls="-.", lw=0.8, color=color, label=f"decoder's ceiling ({c}s)")
    axes[1].axhline(0.6, ls=":", color="grey", label="recall 0.6: the target")
    for ax, label in zip(axes, ("feature FD (lower is better)", "recall (higher is better)")):
        ax.set(xscale="log", xlabel="latents seen by the denoiser", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(f"the compute curve ({points[-1]['guidance']}, 1,000 samples per class)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)


if __name__ == "__main__":
    main()
