#!/usr/bin/env bash
# The denoiser bake-off: each backbone trained on the cpu preset's VAE for the same wall time as the
# preset's denoiser stage (steps set from each one's measured step time on the 2-core machine), then `evaluate`
# (1,000 per class, CFG 8 and CFG 3) and `diagnose` (500 per class).
# Usage: bash experiments/bakeoff.sh CATDOG_DIR OTHER_DIR BASE_RUN OUT_DIR [NAME ...]   (NAME: a key of RUNS, or
#        conv_edm_heun; default: the four 1x runs)
#   BASE_RUN: a finished `python main.py --preset cpu` run (its VAE is reused, its judge too if it has one)
# The bake-off ran at commit 3f6d7c8, where --diffusion-backbone chose the network; the losers (tokens, dit) are gone
# since, so only the conv runs reproduce with later code (their flags are today's defaults but for eps/uniform).
set -euo pipefail
D=${1:?cat/dog data dir}; O=${2:?other classes dir}; B=${3:?base run}; R=${4:?runs dir}; shift 4
E=(--eval-reference-dir "$D" "$O" --device cpu)

# name: training flags (steps: 258 s of training at each backbone's step time, batch 128)
declare -A RUNS=(
    [tokens]="--diffusion-backbone tokens --diffusion-steps 1400"
    [conv]="--diffusion-backbone conv --diffusion-steps 985"
    [dit]="--diffusion-backbone dit --diffusion-steps 910"
    [conv_edm]="--diffusion-backbone conv --diffusion-steps 985 --diffusion-prediction v --diffusion-timestep-sampling lognormal"
    # the best two at 8x the latents
    [conv_edm_8x]="--diffusion-backbone conv --diffusion-steps 7880 --diffusion-prediction v --diffusion-timestep-sampling lognormal"
    [conv_8x]="--diffusion-backbone conv --diffusion-steps 7880"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(tokens conv dit conv_edm)
for name in "${names[@]}"; do
    [ -n "${RUNS[$name]:-}" ] || continue
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
# EDM's Heun sampler on the EDM-trained model (18 noise levels, 35 network calls): run with NAME conv_edm_heun
if [ -d "$R/conv_edm" ] && [[ " ${names[*]} " == *" conv_edm_heun "* ]]; then
    python main.py evaluate --output-dir "$R/conv_edm" "${E[@]}" --guidance-scale 3 --sampler heun --sample-steps 18 \
        --eval-name heun_cfg3
fi
