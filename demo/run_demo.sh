#!/usr/bin/env bash
# The main job, run by `make demo`: the whole pipeline on the embedded simulated survey
# (`mini` preset, scored against its truth), then the real 2MASS M17 tiles from
# ../shared/data as an already-calibrated mosaic.
# Usage: demo/run_demo.sh ROOT
set -euo pipefail
ROOT=${1:-demo-repo}
HERE=$(cd "$(dirname "$0")/.." && pwd)
J=${DEMO_J:-2}
RERUN=demo
start=$(date +%s)
step() { echo; echo "== $(( $(date +%s) - start )) s: $*"; }

rm -rf "$ROOT"
step "makeDemoRepo: simulate the mini HSC-like survey (truth kept) and ingest it"
makeDemoRepo.py "$ROOT" --preset mini

step "detectSources: per-CCD source catalogs"
detectSources.py "$ROOT" --rerun $RERUN --id filter=HSC-R^HSC-I -j $J

step "makeDiscreteSkyMap: one tract around every selected CCD of both filters"
makeDiscreteSkyMap.py "$ROOT" --rerun $RERUN --id filter=HSC-R^HSC-I

for f in HSC-R HSC-I; do
  step "jointcal $f: joint astrometric + photometric fit against ref_cats/sim, diagnostics"
  jointcal.py "$ROOT" --rerun $RERUN --id filter=$f tract=0 --diagnostics
done

step "mosaic HSC-R: the meas_mosaic-style solver, for comparison (results kept beside jointcal's)"
mosaic.py "$ROOT" --rerun $RERUN --id filter=HSC-R tract=0 --diagnostics

step "calibrateExposure / calibrateCatalog: apply the jointcal fits to every CCD and catalog"
calibrateExposure.py "$ROOT" --rerun $RERUN --id tract=0 -j $J --config calibSource=jointcal
calibrateCatalog.py "$ROOT" --rerun $RERUN --id tract=0 -j $J --config calibSource=jointcal

for f in HSC-R HSC-I; do
  step "coaddDriver $f: warp and stack onto the patches of tract 0 (artefact rejection on: the HSC-R satellite trail goes)"
  coaddDriver.py "$ROOT" --rerun $RERUN --id tract=0 filter=$f -j $J --config doArtifactRejection=True
done

step "makeColorImage: colour picture of tract 0 (HSC-I red, HSC-R blue)"
makeColorImage.py "$ROOT" --rerun $RERUN --tract 0 --filters HSC-I HSC-R --bin 2

step "makeReport: the HTML report (with accuracy against the simulator's truth)"
makeReport.py "$ROOT" --rerun $RERUN

# --- real data: eight 2MASS Ks Atlas tiles of M17, already calibrated (MAGZP) ---------
DATA=${TRACTPATCH_SHARED:-$HERE/../shared/data}
[ -d "$DATA/2mass-m17-ks" ] || DATA=/work/shared/data
if [ ! -d "$DATA/2mass-m17-ks" ]; then
  echo; echo "(real-data part skipped: set TRACTPATCH_SHARED to the shared/data folder)"
else
  M17="$ROOT/m17"
  step "real data: ingest the eight 2MASS Ks tiles of M17 (no visit numbers: assigned from the file names)"
  ingestImages.py "$M17" "$DATA/2mass-m17-ks" --mode link --no-progress
  makeDiscreteSkyMap.py "$M17" --rerun m17 --id filter=k \
    --config skyMap.pixelScale=1.0 "skyMap.patchInnerDimensions=[1000,1000]"
  step "real data: calibrate from the headers (MAGZP), match the tiles' sky levels (Montage-style) and coadd"
  calibrateExposure.py "$M17" --rerun m17 --config calibSource=header -j $J
  coaddDriver.py "$M17" --rerun m17 --id tract=0 filter=k -j $J --config backgroundMethod=match
  cutout.py "$M17" --rerun m17 --ra 275.19 --dec -16.17 --size 1500 --filter k --png \
    --out "$M17/rerun/m17/deepCoadd/cutout-M17-k.fits"
  makeReport.py "$M17" --rerun m17
fi

echo
echo "Demo finished in $(( $(date +%s) - start )) s."
echo "  report:      $ROOT/rerun/$RERUN/report/index.html   (open this first)"
echo "  coadds:      $ROOT/rerun/$RERUN/deepCoadd/"
echo "  jointcal:    $ROOT/rerun/$RERUN/jointcal-results/0/ (diagnostics-<filter>/index.html)"
echo "  mosaic:      $ROOT/rerun/$RERUN/mosaic-results/0/"
echo "  calibrated:  $ROOT/rerun/$RERUN/<pointing>/<filter>/corr/0/CALEXP-*.fits"
[ -d "$ROOT/m17" ] && echo "  real data:   $ROOT/m17/rerun/m17/report/index.html and deepCoadd/cutout-M17-k.png (2MASS Ks mosaic of M17)"
exit 0
