#!/usr/bin/env bash
# The commands behind the README's quality tables (2-core CPU, the shared 10,000 cat/dog images, 10% held out,
# seed 0, 200 generated images per class, one judge classifier for every row of a table).
# Usage: bash docs/levers.sh DATA_DIR RUNS_DIR [--earlier]   (about 2 hours on 2 cores; --earlier: 60 more)
# The first table's "previous CPU preset" row is commit c3cbc24's own `--preset cpu` run, evaluated with that
# commit's code after copying this script's judge (RUNS_DIR/final/catdog_classifier.pt) into its run folder.
set -euo pipefail
D=${1:?data dir}; R=${2:?runs dir}
E=(--eval-samples 200 --device cpu)

# final defaults; the baseline is the same training evaluated with the pipeline issue's sampler (DDIM eta 0, guidance 2)
python main.py --preset cpu --data-dir "$D" --output-dir "$R/final"
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-name eval_final
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eta 0 --guidance-scale 2 --eval-name eval_baseline
J="$R/final/catdog_classifier.pt"

# each sampling-time lever changed alone
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-weights raw --eval-name eval_no_ema
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance-scale 1 --eval-name eval_no_guidance
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance-scale 6 --eval-name eval_g6
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eta 0 --eval-name eval_eta0

# denoiser training variants on the same VAE
for variant in "steps4000_compiled:--diffusion-steps 4000 --diffusion-compile" \
    "steps3300_lr1e-3:--diffusion-steps 3300 --diffusion-lr 1e-3" \
    "v_prediction:--diffusion-prediction v" \
    "posterior_mean:--no-diffusion-posterior-sample"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    mkdir -p "$R/$name"
    cp "$R/final"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/$name/"
    python main.py --preset cpu "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}" --eval-name eval_final
done

python main.py evaluate --output-dir "$R/v_prediction" "${E[@]}" --guidance-scale 6 --eval-name eval_g6

# time moved from the VAE to the denoiser (both retrained)
python main.py --preset cpu --vae-steps 700 --diffusion-steps 3500 --data-dir "$D" --output-dir "$R/vae700"
cp "$J" "$R/vae700/"
python main.py evaluate --output-dir "$R/vae700" "${E[@]}" --eval-name eval_final

# bf16 autocast off: both stages in fp32
python main.py --preset cpu --no-amp --data-dir "$D" --output-dir "$R/fp32"
cp "$J" "$R/fp32/"
python main.py evaluate --output-dir "$R/fp32" "${E[@]}" --eval-name eval_final

[[ "${3:-}" == "--earlier" ]] || exit 0
# The second table (measured at commit c3cbc24, 1,300 denoiser steps): the full DDPM chain, no latent
# normalisation, a 10x stronger KL weight, and Min-SNR loss weighting on top of it.
python main.py evaluate --output-dir "$R/final" "${E[@]}" --sampler ddpm --sample-steps 1000 --eval-name eval_ddpm1000
mkdir -p "$R/no_norm"
cp "$R/final"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/no_norm/"
python main.py --preset cpu --no-diffusion-normalize-latents --retrain-diffusion --no-figures --data-dir "$D" \
    --output-dir "$R/no_norm"
python main.py evaluate --output-dir "$R/no_norm" "${E[@]}" --eval-name eval_no_norm
for variant in "kl1e-4:--vae-kl-weight 1e-4" "kl1e-4_minsnr5:--vae-kl-weight 1e-4 --diffusion-min-snr-gamma 5"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    python main.py --preset cpu "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    cp "$J" "$R/$name/"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}" --eval-name eval_final
done
