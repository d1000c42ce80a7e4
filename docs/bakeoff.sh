#!/usr/bin/env bash
# The denoiser bake-off (issue 19): each backbone trained on the cpu preset's VAE for the same wall time as the
# preset's denoiser stage (steps set from each one's measured step time on the 2-core machine), then `evaluate`
# (1,000 per class, CFG 8 and CFG 3) and `diagnose` (500 per class).
# Usage: bash docs/bakeoff.sh CATDOG_DIR OTHER_DIR BASE_RUN OUT_DIR [NAME ...]
#   BASE_RUN: a finished `python main.py --preset cpu` run (its VAE is reused, its judge too if it has one)
set -euo pipefail
D=${1:?cat/dog data dir}; O=${2:?other classes dir}; B=${3:?base run}; R=${4:?runs dir}; shift 4
E=(--eval-reference-dir "$D" "$O" --device cpu)

# name: training flags (steps: 258 s of training at each backbone's step time, batch 128)
declare -A RUNS=(
    [tokens]="--diffusion-backbone tokens --diffusion-steps 1400"
    [conv]="--diffusion-backbone conv --diffusion-steps 985"
    [dit]="--diffusion-backbone dit --diffusion-steps 910"
    [conv_edm]="--diffusion-backbone conv --diffusion-steps 985 --diffusion-prediction v --diffusion-timestep-sampling lognormal"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(tokens conv dit conv_edm)
for name in "${names[@]}"; do
    read -ra flags <<< "${RUNS[$name]}"
    mkdir -p "$R/$name"
    cp -n "$B"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$R/$name/"
    [ -f "$R/judge_classifier.pt" ] && cp -n "$R/judge_classifier.pt" "$R/$name/"
    python main.py --preset cpu --no-figures "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}"
    cp -n "$R/$name/judge_classifier.pt" "$R/judge_classifier.pt"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}" --guidance-scale 3 --eval-name cfg3
    python main.py diagnose --output-dir "$R/$name" "${E[@]}" --guidance-scale 3
done
