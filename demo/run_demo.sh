#!/usr/bin/env bash
# The main job on the embedded data: every stage that exists, in pipeline order.
# Usage: demo/run_demo.sh ROOT   (run by `make demo`)
set -euo pipefail
ROOT=${1:-demo-repo}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA=${TRACTPATCH_SHARED:-$HERE/../shared/data}
rm -rf "$ROOT"

echo "== ingestImages: DECam testcase3 cutouts (real data)"
ingestImages.py "$ROOT/decam" "$DATA/legacysurvey-decam-cutouts/testcase3/images" --instrument decam --no-progress

echo
echo "Demo finished. Results are under $ROOT/"
