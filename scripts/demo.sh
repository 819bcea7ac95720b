#!/usr/bin/env bash
# matrep's main job on its built-in data (run by `make demo`):
#   1. the default synthetic cast-iron set (12 micrographs with computed Young's modulus),
#   2. the texture-VAE trained with --preset quick (docs/texturevae.md),
#   3. its fidelity against the known microstructure (evaluate) and what its latents track
#      (interpret),
#   4. the structure-property study texturevae vs vgg19 vs twopoint with controls (Tables 2-3),
#   5. the paper's figures: reconstructions, prior samples, a latent traversal (auto-picked).
# Re-running continues: finished steps are reused, an interrupted training resumes.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${MATREP_DEMO_OUT:-demo-output}
mkdir -p "$OUT"

echo "== 1/5 built-in data"
DATA=$("$BIN/matrep" datasets path)
echo "data: $DATA"

RUN="$OUT/runs/texturevae"
echo "== 2/5 texture-VAE (--preset quick: <= 20 min on 2 CPU cores; the paper's default wants a GPU)"
if [ -f "$RUN/config.json" ]; then
    echo "trained model found in $RUN"
else  # an interrupted training resumes from its checkpoint (--resume is the default)
    "$BIN/matrep" fit --method texturevae --preset quick --images "$DATA/images" --out "$RUN"
fi

echo "== 3/5 fidelity against ground truth (held-out patches) and what the latents track"
"$BIN/matrep" evaluate --model "$RUN" --images "$DATA/images" --held-out --stride 64 -n 96 \
    --out "$OUT/evaluate"
"$BIN/matrep" interpret --model "$RUN" --images "$DATA/images" --held-out --stride 64 \
    --out "$OUT/interpret"

echo "== 4/5 structure-property study (with the untrained-head and VGG19-statistics controls)"
"$BIN/matrep" compare --method texturevae --method vgg19 --method twopoint \
    --images "$DATA/images" --labels "$DATA/labels.csv" --stride 128 \
    --target youngs_modulus_gpa --model texturevae="$RUN" \
    --param twopoint.n_components=16 --seeds 3 --out "$OUT/report"

echo "== 5/5 figures"
"$BIN/matrep" reconstruct --model "$RUN" --images "$DATA/images" -n 8 --out "$OUT/figures"
"$BIN/matrep" generate --model "$RUN" -n 16 --out "$OUT/figures/samples"
"$BIN/matrep" traverse --model "$RUN" --image "$DATA/images/castiron_005.png" --dims auto \
    --range -3 3 --steps 7 --out "$OUT/figures"

echo
echo "done: fidelity in $OUT/evaluate, latents in $OUT/interpret, study in $OUT/report/report.md,"
echo "      figures in $OUT/figures, model in $RUN"
