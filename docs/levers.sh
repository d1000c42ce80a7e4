#!/usr/bin/env bash
# The commands behind the README's quality table (2-core CPU, shared cat/dog data, 10% held out, seed 0).
# Usage: bash docs/levers.sh DATA_DIR RUNS_DIR   (about 70 minutes on 2 cores)
set -euo pipefail
D=${1:?data dir}; R=${2:?runs dir}
E=(--eval-samples 200 --device cpu)

# baseline: the pipeline issue's defaults (KL 1e-5, plain eps-MSE; sampled with deterministic DDIM, guidance 2)
python main.py --preset cpu --vae-kl-weight 1e-5 --diffusion-min-snr-gamma 0 --data-dir "$D" --output-dir "$R/baseline"
python main.py evaluate --output-dir "$R/baseline" "${E[@]}" --eta 0 --guidance-scale 2 --eval-name eval_baseline
python main.py evaluate --output-dir "$R/baseline" "${E[@]}" --eval-name eval_final_sampler
J="$R/baseline/catdog_classifier.pt"  # one judge classifier for every row (same data, same split)

# final defaults, then each sampling lever switched off alone
python main.py --preset cpu --data-dir "$D" --output-dir "$R/final"
cp "$J" "$R/final/"
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-name eval_final
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eval-weights raw --eval-name eval_no_ema
python main.py evaluate --output-dir "$R/final" "${E[@]}" --guidance-scale 1 --eval-name eval_no_guidance
python main.py evaluate --output-dir "$R/final" "${E[@]}" --eta 0 --eval-name eval_eta0
python main.py evaluate --output-dir "$R/final" "${E[@]}" --sampler ddpm --sample-steps 1000 --eval-name eval_ddpm1000

# training levers: no Min-SNR weighting; no latent normalisation (diffusion retrained on the final VAE)
python main.py --preset cpu --diffusion-min-snr-gamma 0 --data-dir "$D" --output-dir "$R/no_min_snr"
cp "$J" "$R/no_min_snr/"
python main.py evaluate --output-dir "$R/no_min_snr" "${E[@]}" --eval-name eval_no_min_snr
mkdir -p "$R/no_norm"
cp "$R/final"/{cifar_cat_dog_autoencoder.pt,vae_train_state.pt} "$J" "$R/no_norm/"
python main.py --preset cpu --no-diffusion-normalize-latents --retrain-diffusion --no-figures --data-dir "$D" \
    --output-dir "$R/no_norm"
python main.py evaluate --output-dir "$R/no_norm" "${E[@]}" --eval-name eval_no_norm
# the original's recipe on the final VAE: no EMA, no normalisation, no guidance, 1000 DDPM steps
python main.py evaluate --output-dir "$R/no_norm" "${E[@]}" --eval-weights raw --guidance-scale 1 --sampler ddpm \
    --sample-steps 1000 --eval-name eval_original_recipe
