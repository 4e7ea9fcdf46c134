"""Ingest speed: ingestImages.py on a directory of 100 CCD files (target: well under 1 s/file).

Usage: .venv/bin/python benchmarks/bench_ingest.py [N_FILES]
"""
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS


def main(n=100):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [10.0, 20.0]
        w.wcs.crpix = [1024, 2088]
        w.wcs.cdelt = [-0.168 / 3600, 0.168 / 3600]
        h = w.to_header()
        h["FILTER"], h["EXPTIME"] = "r", 30.0
        data = np.zeros((4176, 2048), np.float32)
        (d / "in").mkdir()
        for i in range(n):
            h["EXPNUM"] = 1000 + i
            fits.PrimaryHDU(data, h).writeto(d / "in" / f"c{i:03d}.fits")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bin/ingestImages.py"),
                        str(d / "repo"), str(d / "in"), "--no-progress"], check=True)
        dt = time.perf_counter() - t0
        print(f"ingestImages.py: {n} full-size CCD files in {dt:.2f} s = {dt / n:.3f} s/file "
              "(target: well under 1 s/file)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
