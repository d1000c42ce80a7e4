#!/usr/bin/env bash
# The commands behind the README's quality tables: the 2-core CPU, the shared 10,000 cat/dog images (10% held out,
# seed 0) and the other eight CIFAR-10 classes for the ten-way judge. About 3 hours on 2 cores.
# Usage: bash docs/levers.sh CATDOG_DIR OTHER_DIR RUNS_DIR   (e.g. ../shared/data/cifar10-catdog/train
#        ../shared/data/cifar10-other/train runs)
# Rows marked "at commit f081ab5" in the README were trained by that commit's code (before this session's speed
# changes, which alter the arithmetic's rounding, not the model); the flags below reproduce them with today's code.
set -euo pipefail
D=${1:?cat/dog data dir}; O=${2:?other classes dir}; R=${3:?runs dir}
E=(--eval-reference-dir "$D" "$O" --device cpu)

# the previous cpu preset: VAE 1,000 steps, denoiser 2,800 steps, classifier-free guidance 8
python main.py --preset cpu --diffusion-steps 2800 --no-diffusion-guide --data-dir "$D" --output-dir "$R/base"
python main.py evaluate --output-dir "$R/base" "${E[@]}"   # trains and caches the judge (about 15 min)
J="$R/base/judge_classifier.pt"

# sampling-time levers on that model, 500 images per class
for g in 1 2 3 4 8; do
    python main.py evaluate --output-dir "$R/base" "${E[@]}" --eval-samples 500 --guidance-scale $g --eval-name g$g
done
python main.py evaluate --output-dir "$R/base" "${E[@]}" --eval-samples 500 --guidance-scale 8 \
    --guidance-interval 0.33 0.94 --eval-name g8i
python main.py evaluate --output-dir "$R/base" "${E[@]}" --eval-samples 500 --guidance-scale 4 \
    --guidance-interval 0.33 0.94 --eval-name g4i

# denoiser budget on the same VAE: 2,300 steps of 128, and 4,600 of 64 (the same latents seen)
for variant in "e0_b128_2300:--diffusion-steps 2300" "e1_b64_4600:--diffusion-steps 4600 --diffusion-batch-size 64"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    mkdir -p "$R/$name"
    cp "$R/base"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/$name/"
    python main.py --preset cpu --no-diffusion-guide --no-figures "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}"
done

# the final cpu preset (VAE 1,000 steps, guide 425 steps, denoiser 1,700 steps), with autoguidance (its default)
# and, on the same model, classifier-free guidance instead
python main.py --preset cpu --data-dir "$D" --output-dir "$R/final"
cp "$J" "$R/final/"
python main.py evaluate --output-dir "$R/final" "${E[@]}"
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance cfg --eval-name cfg8
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-samples 500 --guidance-scale 2 --eval-name ag2

# the tables
python docs/make_table.py --calibration "$R/base/evaluation.json"
python docs/make_table.py "previous cpu preset=$R/base/evaluation.json" "final=$R/final/evaluation.json"
