"""Turn evaluation JSON files into the README's markdown table: python docs/make_table.py "label=path.json" ..."""

import json
import sys


def row(label: str, path: str) -> str:
    r = json.load(open(path))
    s, smp = r["samples"], r["sampling"]
    fid = f"{s['overall']['fid']:.1f}" if "fid" in s["overall"] else "n/a"
    sampler = f"{smp['sampler']} {smp['steps']}, eta {smp['eta']:g}, g {smp['guidance_scale']:g}"
    return (
        f"| {label} | {r['reconstruction']['psnr']:.2f} | {s['overall']['class_fidelity']:.1%} "
        f"({s['cat']['class_fidelity']:.0%} / {s['dog']['class_fidelity']:.0%}) | {s['overall']['feature_fd']:.2f} "
        f"({s['cat']['feature_fd']:.2f} / {s['dog']['feature_fd']:.2f}) | {fid} | {sampler} | "
        f"{smp['s_per_1000_images']:.0f} |"
    )


HEADER = (
    "| configuration | PSNR (dB) | class fidelity (cat / dog) | feature FD (cat / dog) | FID | sampler | s / 1000 |"
)
print(HEADER)
print("|---|---|---|---|---|---|---|")
for arg in sys.argv[1:]:
    label, path = arg.split("=", 1)
    print(row(label, path))
