#!/usr/bin/env bash
# Screen texture-VAE configurations over several seeds on one lent GPU (docs/texturevae.md,
# runs 37-38): many quick-preset fits at once, each then measured with `matrep evaluate` and
# `matrep interpret` as on the CPU.
#
#   scripts/gpu_screen.sh prepare            # here: fills .gpu/ (ignored by .gitignore)
#   scripts/gpu_screen.sh run OUT LIMIT_S [FIT OPTIONS...]    # there, with .gpu carried
#
# On the lent machine first `python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .`
# (its image has torch, triton and the other dependencies); `run` calls the `matrep` on PATH.
# The run of 2026-12-04: `run $OUT 370 --precision fp32` with 12 lines in configs.txt, ~3 min.
#
# `prepare` writes .gpu/gatys-fp16.safetensors (the Gatys VGG19 weights stored in float16, 40 MB,
# so that the tree fits a 64 MiB transfer; read back as float32) and copies the built-in data
# into .gpu/cache. `run` reads .gpu/configs.txt, one fit per line: `NAME SEED [PARAM=VALUE ...]`
# (each PARAM=VALUE becomes `--param`), runs them all at once (one CPU thread each), stops each
# after LIMIT_S seconds, appends each model's fidelity and traversal rows to OUT/summary.txt as
# they finish, and packs logs, evaluations and the seed-0 reconstructions into OUT/runs.tgz.
# Numbers from it are a screen: another torch, weights rounded to float16; confirm on the CPU.
set -euo pipefail
BIN=${BIN:-.venv/bin}
case "${1:-}" in
prepare)
    mkdir -p .gpu/cache
    "$BIN/python" - <<'PY'
from safetensors import safe_open
from safetensors.torch import save_file
from matrep.weights import resolve_vgg19_weights
w = resolve_vgg19_weights("auto")
with safe_open(str(w.cache_path), "pt") as f:
    meta = dict(f.metadata() or {})
    meta["name"] = meta.get("name", "vgg19") + "-fp16"
    meta.pop("source_path", None)
    save_file({k: f.get_tensor(k).half() for k in f.keys()}, ".gpu/gatys-fp16.safetensors",
              metadata=meta)
PY
    rm -rf .gpu/cache/datasets
    cp -r "$(dirname "$("$BIN/matrep" datasets path)")" .gpu/cache/datasets
    echo "prepared .gpu/ ($(du -sh .gpu | cut -f1)); write .gpu/configs.txt, then carry .gpu"
    ;;
run)
    OUTD=$2; LIMIT=$3; shift 3
    export EXTRA="$*" OUTD
    export MATREP_CACHE=$PWD/.gpu/cache MATREP_VGG19_WEIGHTS=$PWD/.gpu/gatys-fp16.safetensors
    export MATREP_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    D="$(matrep datasets path)/images"; R=$(mktemp -d /tmp/screen.XXXXXX)
    export D R
    mkdir -p "$R" "$OUTD"
    one() {
        local name=$1 seed=$2; shift 2
        local params=(); for p in "$@"; do params+=(--param "$p"); done
        local t0; t0=$(date +%s)
        # shellcheck disable=SC2086
        if ! matrep fit --method texturevae --preset quick --images "$D" --out "$R/$name" \
                --seed "$seed" "${params[@]}" $EXTRA -q > "$R/$name.fit.log" 2>&1; then
            { echo "$name FIT FAILED"; tail -5 "$R/$name.fit.log"; } >> "$OUTD/summary.txt"
            return
        fi
        local t1; t1=$(date +%s)
        matrep evaluate --model "$R/$name" --images "$D" --held-out --stride 64 -n 96 \
            --metrics none --out "$R/ev_$name" -q > "$R/$name.ev.log" 2>&1
        { echo "## $name seed=$seed $* fit=$((t1 - t0))s"
          grep "^| $R/$name " "$R/ev_$name/evaluation.md" | tail -2; } >> "$OUTD/summary.txt"
        if [ "$seed" = 0 ]; then
            matrep reconstruct --model "$R/$name" --images "$D" -n 8 --out "$R/rec_$name" -q \
                > "$R/$name.rec.log" 2>&1
        fi
        matrep interpret --model "$R/$name" --images "$D" --held-out --stride 64 \
            --out "$R/int_$name" -q > "$R/$name.int.log" 2>&1
        { echo "## $name traversal"
          grep -A6 "^| descriptor | IQR" "$R/int_$name/interpret.md" | grep -v "^|---"; } \
            >> "$OUTD/summary.txt"
    }
    export -f one
    pids=()
    while read -r name seed rest; do
        [ -z "$name" ] && continue
        timeout -k 5 "$LIMIT" bash -c "one $name $seed $rest" &
        pids+=($!)
    done < .gpu/configs.txt
    wait "${pids[@]}" || true
    (cd "$R" && tar czf "$OUTD/runs.tgz" --exclude=checkpoint --exclude='*.npz' \
        --exclude='*.safetensors' .)
    ls -la "$OUTD"
    ;;
*)
    echo "usage: $0 prepare | run OUT LIMIT_S [FIT OPTIONS...]" >&2
    exit 2
    ;;
esac
