#!/usr/bin/env bash
# Reproduce the shipped models/smartbin-waste-nano.* with the four time-capped CPU stages it was trained in
# (about 7 h on a 2-core CPU). Run from the repository root with the package installed:
#   config/training/reproduce-shipped.sh [WORKDIR] [MODELS_DIR]
# A time cap makes the epoch count depend on how busy the CPU is: expect similar, not identical, weights.
# With a GPU, one run replaces all four stages:
#   smartbin-train all --device 0 --epochs 150 --cls-pw 0.5
set -euo pipefail

W=${1:-/var/tmp/smartbin-train}
MODELS=${2:-models}
NAME=smartbin-waste-nano
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
COMMON=(--workdir "$W" --imgsz 320 --batch 16 --nbs 16 --optimizer AdamW --warmup-epochs 1 --cache ram
        --workers 2 --device cpu --no-val)

stage() {  # stage RUN_NAME START TIME_HOURS EPOCHS LR0 CLOSE_MOSAIC SEED [EXTRA...]
    local run=$1 start=$2 hours=$3 epochs=$4 lr0=$5 mosaic=$6 seed=$7
    shift 7
    smartbin-train prepare --workdir "$W" --name "$run"
    smartbin-train train "${COMMON[@]}" --name "$run" --model "$start" --time-hours "$hours" \
        --epochs "$epochs" --lr0 "$lr0" --close-mosaic "$mosaic" --seed "$seed" "$@"
}

best() { echo "$W/$1/runs/train/weights/best.pt"; }

stage "$NAME"     yolo11n.yaml           1.3 100 0.002  3 0
stage "$NAME-ft2" "$(best "$NAME")"      1.9 60  0.002  5 1
stage "$NAME-ft3" "$(best "$NAME-ft2")"  1.8 60  0.0015 5 2
stage "$NAME-ft4" "$(best "$NAME-ft3")"  1.9 80  0.002  8 3 --cls-pw 0.5

OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
smartbin-train card --workdir "$W" --name "$NAME-ft4" --models-dir "$OUT" --bench-frames 30 \
    --samples-dir tests/data/samples --notes config/training/model_notes.md
for ext in onnx classes.yaml metrics.json md; do
    cp "$OUT/$NAME-ft4.$ext" "$MODELS/$NAME.$ext"
done
sed -i "s/$NAME-ft4\./$NAME./g; s/^# Model card: $NAME-ft4\$/# Model card: $NAME/" \
    "$MODELS/$NAME.md" "$MODELS/$NAME.classes.yaml"
python3 - "$MODELS/$NAME.metrics.json" "$NAME" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
metrics = json.load(open(path))
metrics["name"] = name
metrics["onnx"] = metrics["onnx"].replace(f"{name}-ft4.", f"{name}.")
with open(path, "w") as f:
    json.dump(metrics, f, indent=2)
    f.write("\n")
EOF
echo "wrote $MODELS/$NAME.{onnx,classes.yaml,metrics.json,md}"
