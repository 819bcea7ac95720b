#!/usr/bin/env bash
# matrep's main job on its built-in data (run by `make demo`):
#   1. the default synthetic cast-iron set (12 micrographs with computed Young's modulus),
#   2. a short texture-VAE training run (the quick CPU configuration of docs/texturevae.md),
#   3. the structure-property study texturevae vs vgg19 vs twopoint (Tables 2-3, Fig. 7),
#   4. the paper's figures: reconstructions, prior samples, a latent traversal.
# Re-running continues: finished steps are reused, an interrupted training resumes.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${MATREP_DEMO_OUT:-demo-output}
mkdir -p "$OUT"

echo "== 1/4 built-in data"
DATA=$("$BIN/matrep" datasets path)
echo "data: $DATA"

RUN="$OUT/runs/texturevae"
echo "== 2/4 texture-VAE (short CPU run; the full default is 20 epochs on all patches)"
if [ -f "$RUN/config.json" ]; then
    echo "trained model found in $RUN"
else
    resume=()
    [ -d "$RUN/checkpoint" ] && resume=(--resume)
    "$BIN/matrep" fit --method texturevae --images "$DATA/images" --out "$RUN" \
        --max-patches 320 --epochs 4 --batch-size 8 "${resume[@]}"
fi

echo "== 3/4 structure-property study"
"$BIN/matrep" compare texturevae vgg19 twopoint \
    --images "$DATA/images" --labels "$DATA/labels.csv" --stride 128 \
    --target youngs_modulus_gpa --model texturevae="$RUN" \
    --param twopoint.n_components=16 --seeds 3 --out "$OUT/report"

echo "== 4/4 figures"
"$BIN/matrep" reconstruct --model "$RUN" --images "$DATA/images" -n 8 --out "$OUT/figures/reconstructions.png"
"$BIN/matrep" generate --model "$RUN" -n 16 --out "$OUT/figures/samples"
"$BIN/matrep" traverse --model "$RUN" --image "$DATA/images/castiron_005.png" --dims 0,1,2,3 \
    --range -4 4 --steps 10 --out "$OUT/figures/traversal.png"

echo
echo "done: report in $OUT/report/report.md, figures in $OUT/figures, model in $RUN"
