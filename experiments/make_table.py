"""Turn evaluation JSON files into the README's markdown tables.

python experiments/make_table.py "label=run/evaluation.json" ...      one row per file: the samples' scores
python experiments/make_table.py --shape "label=run/evaluation.json" ...  the same with both judges' numbers
python experiments/make_table.py --calibration run/evaluation.json    the calibration rows of one file
"""

import json
import sys

HEADER = (
    "| configuration | feature FD (cat / dog) | recall (cat / dog) | colour FD (cat / dog) | copies (cat / dog) | "
    "precision (cat / dog) | called its class (cat / dog) | PSNR (dB) | sampler |\n" + "|---" * 9 + "|"
)
CALIBRATION_HEADER = (
    "| image set | n per class | feature FD (cat / dog) | recall (cat / dog) | colour FD (cat / dog) | "
    "copies (cat / dog) | precision (cat / dog) | called its class (cat / dog) |\n" + "|---" * 8 + "|"
)


def pair(scores: dict, metric: str, fmt: str) -> str:
    values = [scores[c].get(metric) for c in ("cat", "dog")]  # older files lack colour_fd and copies
    return " / ".join("n/a" if v is None else format(v, fmt) for v in values)


def scores_cells(s: dict) -> str:
    return (
        f"{pair(s, 'fd', '.2f')} | {pair(s, 'recall', '.2f')} | {pair(s, 'colour_fd', '.0f')} | "
        f"{pair(s, 'copies', '.2f')} | {pair(s, 'precision', '.2f')} | {pair(s, 'fidelity', '.0%')}"
    )


def row(label: str, path: str) -> str:
    r = json.load(open(path))
    smp = r["sampling"]
    lo, hi = smp.get("guidance_interval", (0, 1))
    interval = "" if (lo, hi) == (0, 1) else f" on t/T in [{lo:g}, {hi:g}]"
    kind = {"cfg": "CFG", "autoguidance": "autoguidance"}.get(smp.get("guidance", "cfg"), "CFG")
    eta = "" if smp["sampler"] == "heun" else f", eta {smp['eta']:g}"  # Heun's solver is deterministic
    sampler = f"{smp['sampler']} {smp['steps']}{eta}, {kind} {smp['guidance_scale']:g}{interval}"
    return f"| {label} | {scores_cells(r['samples'])} | {r['reconstruction']['psnr']:.2f} | {sampler} |"


SHAPE_HEADER = (
    "| row | photo FD | photo recall | shape FD | shape recall | colour FD | copies | PSNR (dB) |\n" + "|---" * 8 + "|"
)


def shape_row(label: str, path: str) -> str:
    """The samples' row as docs/shape_yardstick.md's tables give it (cat / dog)."""
    r = json.load(open(path))
    s = r["samples"]
    cells = [pair(s, "fd", ".2f"), pair(s, "recall", ".2f"), pair(s, "shape_fd", ".2f"), pair(s, "shape_recall", ".2f")]
    cells += [pair(s, "colour_fd", ".0f"), pair(s, "copies", ".2f"), f"{r['reconstruction']['psnr']:.2f}"]
    return f"| {label} | {' | '.join(cells)} |"


def calibration(path: str) -> list[str]:
    r = json.load(open(path))
    return [f"| {name} | {s['cat']['n']} | {scores_cells(s)} |" for name, s in r["calibration"].items()]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--calibration"]:
        print(CALIBRATION_HEADER)
        print("\n".join(calibration(sys.argv[2])))
    elif sys.argv[1:2] == ["--shape"]:
        print(SHAPE_HEADER)
        for arg in sys.argv[2:]:
            print(shape_row(*arg.split("=", 1)))
    else:
        print(HEADER)
        for arg in sys.argv[1:]:
            label, path = arg.split("=", 1)
            print(row(label, path))
