#!/usr/bin/env bash
# The main job on what ships with the repo: builds, then segments and classifies the bundled
# BUSI sample scans with the bundled weights. Masks and overlays go to demo_output/.
#   bash tools/scripts/demo.sh [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/../.."
. models/weights/shipped.env
bash tools/scripts/build.sh predict
mkdir -p demo_output
images=("$@")
((${#images[@]})) || images=(tools/samples/benign_10.png tools/samples/malignant_10.png tools/samples/normal_102.png)
for image in "${images[@]}"; do
  name=$(basename "${image%.*}")
  echo "== $image"
  build/bin/predict --image "$image" \
    --seg_model "models/weights/$SONO_SEG_WEIGHTS" \
    --cls_model "models/weights/$SONO_CLS_WEIGHTS" \
    --refine_model "models/weights/$SONO_REFINE_WEIGHTS" \
    --save_mask "demo_output/${name}_mask.png" --overlay --overwrite
done
