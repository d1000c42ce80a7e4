"""Turn evaluation JSON files into the README's markdown table: python docs/make_table.py "label=path.json" ...

A label that starts with "recon:" makes a row of the held-out reconstructions' scores from that file instead."""

import json
import sys


def row(label: str, path: str) -> str:
    r = json.load(open(path))
    smp = r["sampling"]
    if label.startswith("recon:"):
        label, s, sampler, speed = label[len("recon:") :], r["reconstructions_judged"], "-", "-"
    else:
        s = r["samples"]
        sampler = f"{smp['sampler']} {smp['steps']}, eta {smp['eta']:g}, g {smp['guidance_scale']:g}"
        speed = f"{smp['s_per_1000_images']:.0f}"
    fid = f"{s['overall']['fid']:.1f}" if "fid" in s["overall"] else "n/a"
    return (
        f"| {label} | {r['reconstruction']['psnr']:.2f} | {s['overall']['class_fidelity']:.1%} "
        f"({s['cat']['class_fidelity']:.0%} / {s['dog']['class_fidelity']:.0%}) | {s['overall']['feature_fd']:.2f} "
        f"({s['cat']['feature_fd']:.2f} / {s['dog']['feature_fd']:.2f}) | {fid} | {sampler} | {speed} |"
    )


HEADER = (
    "| configuration | PSNR (dB) | class fidelity (cat / dog) | feature FD (cat / dog) | FID | sampler | s / 1000 |"
)
print(HEADER)
print("|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    label, path = arg.split("=", 1)
    print(row(label, path))
