#!/usr/bin/env bash
# The commands behind the README's quality tables: the 2-core CPU, the shared 10,000 cat/dog images (10% held out,
# seed 0) and the other eight CIFAR-10 classes for the ten-way judge. About 3 hours on 2 cores.
# Usage: bash experiments/levers.sh CATDOG_DIR OTHER_DIR RUNS_DIR   (e.g. ../shared/data/cifar10-catdog/train
#        ../shared/data/cifar10-other/train runs)
# Rows marked "at commit f081ab5" in the README were trained by that commit's code (before the speed changes, which
# alter the arithmetic's rounding, not the model). Every row here is of the token U-Net that the bake-off replaced
# (experiments/bakeoff.sh): check out commit 7b68753 to run this script as it was run.
set -euo pipefail
D=${1:?cat/dog data dir}; O=${2:?other classes dir}; R=${3:?runs dir}
E=(--eval-reference-dir "$D" "$O" --device cpu)

# the cpu preset (VAE 900 steps, denoiser 1,400 steps), classifier-free guidance 8; the first evaluate trains and
# caches the judge (about 27 min on one thread), later runs reuse it (copied, same fingerprint)
python main.py --preset cpu --data-dir "$D" --output-dir "$R/preset"
python main.py evaluate --output-dir "$R/preset" "${E[@]}"
J="$R/preset/judge_classifier.pt"
python main.py evaluate --output-dir "$R/preset" "${E[@]}" --eval-weights raw --eval-name raw   # no EMA

# denoiser levers on the preset's VAE: v-prediction, Min-SNR-5 loss weighting
for variant in "vpred:--diffusion-prediction v" "minsnr5:--diffusion-min-snr-gamma 5"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    mkdir -p "$R/$name"
    cp "$R/preset"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/$name/"
    python main.py --preset cpu --no-figures "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}"
done

# latent levers: the whole preset retrained with a 10x KL weight, or with the scale-equivariance term
for variant in "kl1e-4:--vae-kl-weight 1e-4" "se0.5:--vae-scale-equivariance-weight 0.5"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    mkdir -p "$R/$name"
    cp "$J" "$R/$name/"
    python main.py --preset cpu "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}"
    python docs/diagnose.py "$R/$name" --eval-reference-dir "$D" "$O"
done
python main.py evaluate --output-dir "$R/se0.5" "${E[@]}" --guidance-scale 4 --eval-name cfg4

# where the preset's samples lose their quality (decoder tolerance, SDEdit, the Gaussian baseline)
python docs/diagnose.py "$R/preset" --eval-reference-dir "$D" "$O"
python main.py evaluate --output-dir "$R/preset" "${E[@]}" --guidance-scale 1 --eval-samples 500 --eval-name cfg1

# a larger budget (VAE 1,000, denoiser 1,700 steps; 16 min) with a guide network for autoguidance (425 steps more)
python main.py --preset cpu --vae-steps 1000 --diffusion-steps 1700 --diffusion-guide --data-dir "$D" --output-dir "$R/final"
cp "$J" "$R/final/"
python main.py evaluate --output-dir "$R/final" "${E[@]}"
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance autoguidance --eval-name ag3
for g in 2 1.5; do
    python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-samples 500 --guidance autoguidance \
        --guidance-scale $g --eval-name ag$g
done

# the previous cpu preset: VAE 1,000 steps, denoiser 2,800 steps (at commit f081ab5 in the README)
python main.py --preset cpu --vae-steps 1000 --diffusion-steps 2800 --data-dir "$D" --output-dir "$R/base"
cp "$J" "$R/base/"
python main.py evaluate --output-dir "$R/base" "${E[@]}"

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
    python main.py --preset cpu --vae-steps 1000 --no-figures "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}"
done

# the tables
python experiments/make_table.py --calibration "$R/preset/evaluation.json"
python experiments/make_table.py "cpu preset=$R/preset/evaluation.json" "no EMA=$R/preset/raw.json" \
    "v-prediction=$R/vpred/evaluation.json" "Min-SNR 5=$R/minsnr5/evaluation.json" \
    "KL 1e-4=$R/kl1e-4/evaluation.json" "scale equivariance 0.5=$R/se0.5/evaluation.json" \
    "scale equivariance 0.5, CFG 4=$R/se0.5/cfg4.json" \
    "1,000 / 1,700 steps=$R/final/evaluation.json" "autoguidance 3=$R/final/ag3.json" \
    "autoguidance 2=$R/final/ag2.json" "autoguidance 1.5=$R/final/ag1.5.json" \
    "previous cpu preset=$R/base/evaluation.json" "CFG 1=$R/base/g1.json" "CFG 2=$R/base/g2.json" \
    "CFG 3=$R/base/g3.json" "CFG 4=$R/base/g4.json" "CFG 8=$R/base/g8.json" "CFG 8 interval=$R/base/g8i.json" \
    "CFG 4 interval=$R/base/g4i.json" "2,300 steps=$R/e0_b128_2300/evaluation.json" \
    "4,600 steps of 64=$R/e1_b64_4600/evaluation.json"
