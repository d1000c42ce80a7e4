#!/usr/bin/env bash
# The commands behind the README's quality table (2-core CPU, the shared 10,000 cat/dog images, 10% held out,
# seed 0, 200 generated images per class, one judge classifier for every row).
# Usage: bash docs/levers.sh DATA_DIR RUNS_DIR   (about 75 minutes on 2 cores)
set -euo pipefail
D=${1:?data dir}; R=${2:?runs dir}
E=(--eval-samples 200 --device cpu)

# final defaults; the baseline is the same training evaluated with the pipeline issue's sampler (DDIM eta 0, guidance 2)
python main.py --preset cpu --data-dir "$D" --output-dir "$R/final"
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-name eval_final
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eta 0 --guidance-scale 2 --eval-name eval_baseline
J="$R/final/catdog_classifier.pt"

# each lever switched off alone
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-weights raw --eval-name eval_no_ema
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance-scale 1 --eval-name eval_no_guidance
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eta 0 --eval-name eval_eta0
python main.py evaluate --output-dir "$R/final" "${E[@]}" --sampler ddpm --sample-steps 1000 --eval-name eval_ddpm1000
mkdir -p "$R/no_norm"
cp "$R/final"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/no_norm/"
python main.py --preset cpu --no-diffusion-normalize-latents --retrain-diffusion --no-figures --data-dir "$D" \
    --output-dir "$R/no_norm"
python main.py evaluate --output-dir "$R/no_norm" "${E[@]}" --eval-name eval_no_norm

# levers tried and not kept: a 10x stronger KL weight, and Min-SNR loss weighting on top of it
for variant in "kl1e-4:--vae-kl-weight 1e-4" "kl1e-4_minsnr5:--vae-kl-weight 1e-4 --diffusion-min-snr-gamma 5"; do
    name=${variant%%:*}; read -ra flags <<< "${variant#*:}"
    python main.py --preset cpu "${flags[@]}" --data-dir "$D" --output-dir "$R/$name"
    cp "$J" "$R/$name/"
    python main.py evaluate --output-dir "$R/$name" "${E[@]}" --eval-name eval_final
done
