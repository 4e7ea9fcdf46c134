#!/usr/bin/env bash
# Run every side-by-side benchmark (not part of `make test`); results go to
# benchmarks/results/<host>-<date>.log. Peer tools (source-extractor, scamp, swarp) are
# installed from Debian's packages by the scripts that need them.
# Usage: benchmarks/run_all.sh [REPEAT]   (default 3; each script reports the median/best)
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=${1:-3}
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results
LOG=benchmarks/results/$(hostname)-$(date +%Y%m%d-%H%M).log
{
  echo "# tractpatch benchmarks, $(date -u), $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GB"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo; echo "## ingest";  $PY benchmarks/bench_ingest.py 100
  echo; echo "## detectSources vs source-extractor"; $PY benchmarks/bench_detect.py --repeat "$REPEAT"
  echo; echo "## jointcal vs SCAMP (mini)"; $PY benchmarks/bench_jointcal_scamp.py --preset mini --repeat "$REPEAT"
  echo; echo "## jointcal scale (30 visits x 104 CCDs x 300 stars)"; $PY benchmarks/bench_jointcal_scale.py
  echo; echo "## coaddDriver vs SWarp vs reproject"
  for i in $(seq "$REPEAT"); do
    $PY benchmarks/bench_coadd.py --n-inputs 8 --ccd 2048 4096 --patch 4200
  done
  echo; echo "## coadd memory: 30 inputs, 4200x4200 patch"
  $PY benchmarks/bench_coadd.py --n-inputs 30 --ccd 2048 4096 --patch 4200 --methods ours_MEANCLIP
} 2>&1 | tee "$LOG"
echo "results: $LOG"
