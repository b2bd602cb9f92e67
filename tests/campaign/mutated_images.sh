#!/usr/bin/env bash
# Issue 15's damaged-image check, re-runnable: the sample scans (PNG) and the fuzz seeds (JPEG,
# BMP) with random bit flips (in the header or anywhere) and truncations, each through predict
# with the shipped models; each must be predicted (exit 0) or refused with one line naming the
# file (exit 1): never a crash, a sanitizer report or an "internal error". Run it on a
# -DSONO_SANITIZE=ON build to catch memory errors too.
#   bash tests/campaign/mutated_images.sh BUILD_DIR [MUTANTS_PER_FILE] [SEED]
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
build=$(realpath "$1") per_file=${2:-6} seed=${3:-15}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$per_file" "$seed" "$repo"/tools/samples/{benign_10,malignant_10,normal_102}.png \
  "$repo"/tests/fuzz/corpus/image/rgb_2x2.{jpg,bmp} <<'PY'
import os, random, sys
work, per_file, seed, bases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
random.seed(seed)
for base in bases:
    data, (stem, ext) = open(base, 'rb').read(), os.path.splitext(os.path.basename(base))
    for k in range(per_file):
        b = bytearray(data)
        if k % 3 == 2:
            b = b[:random.randrange(1, len(b))]
        else:
            span = min(len(b), 600) if k % 3 == 0 else len(b)
            for _ in range(random.randint(1, 8)):
                b[random.randrange(span)] ^= 1 << random.randrange(8)
        open(os.path.join(work, f'{stem}_{k:02d}{ext}'), 'wb').write(bytes(b))
PY
weights="$repo/models/weights"
. "$weights/shipped.env"
predicted=0 refused=0 bad=0
for f in "$work"/*; do
  ASAN_OPTIONS=detect_leaks=0 "$build/bin/predict" --image "$f" --seg-model "$weights/$SONO_SEG_WEIGHTS" \
    --cls-model "$weights/$SONO_CLS_WEIGHTS" --threads 2 >/dev/null 2>"$work.err"
  rc=$?
  if ((rc == 0)); then
    predicted=$((predicted + 1))
  elif ((rc == 1)) && [ "$(wc -l <"$work.err")" = 1 ] && grep -qF "$f" "$work.err" &&
       ! grep -qiE 'internal error|runtime error|sanitizer' "$work.err"; then
    refused=$((refused + 1))
  else
    bad=$((bad + 1))
    echo "BAD $(basename "$f"), exit $rc: $(head -c 300 "$work.err")"
  fi
done
rm -f "$work.err"
echo "mutated_images: $predicted predicted, $refused refused with one line naming the file, $bad bad"
((bad == 0))
