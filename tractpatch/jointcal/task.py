"""``jointcal.py ROOT --rerun R --id visit=... tract=T ccd=... [--config ...]``.

One unit of work per (tract, filter): the selected CCDs overlapping the tract are fitted
together against the reference catalog; outputs in ``jointcal-results/<tract>/``.
"""
from __future__ import annotations

import sys

import numpy as np
import yaml

from ..cli import CmdLineTask
from ..errors import UserError
from .config import JointcalConfig
from .inputs import Detections, RefCatalog, read_src_many
from .metrics import compute_metrics
from .tangent import mean_direction

# the solver and the writers (scipy, astropy.io.fits, astropy.wcs) are imported where
# they are used: ``jointcal.py --help`` and the runner's start need none of them


class JointFitTask(CmdLineTask):
    """What jointcal.py and mosaic.py share: one fit per (tract, filter) of the selected
    CCDs against the reference catalog, its outputs ``<prefix>_wcs``,
    ``<prefix>_photoCalib``, ``<prefix>_metrics`` and, with ``--diagnostics``, the
    diagnostics folder. Subclasses set ``name`` (= the output prefix) and :meth:`fit`.
    """

    level = "tract"

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--diagnostics", action="store_true",
                            help="write the diagnostic plots, data files and index.html "
                                 "of the fit (per tract and filter)")
        parser.add_argument("--diagDir", default=None, metavar="DIR",
                            help="diagnostics folder (default: <rerun>/" f"{cls.name}"
                                 "-results/<tract>/diagnostics-<filter>/; with several "
                                 "tracts or filters, DIR/<tract>/<filter>/)")

    def fit(self, det, images, refcat):
        """The solver: a :class:`~.solver.JointcalResult` of the inputs."""
        raise NotImplementedError

    def units(self, ids, select):
        from ..skymap.selection import exposures_in_tract

        tracts = sorted({t for s in ids for t in s.terms.get("tract", [])})
        if not tracts:
            raise UserError(f"{self.name} needs a tract in --id, e.g. --id visit=1..4 "
                            "tract=0")
        rows = self.repo.registry.exposures(ids or None)
        units = []
        for t in tracts:
            by_filter: dict[str, list] = {}
            for r in exposures_in_tract(self.repo, rows, t):
                by_filter.setdefault(r["filter"], []).append(r)
            for f, rs in sorted(by_filter.items()):
                units.append({"tract": t, "filter": f,
                              "visit": "^".join(str(v) for v in sorted({r["visit"] for r in rs})),
                              "ccd": "^".join(str(c) for c in sorted({r["ccd"] for r in rs}))})
        # the options travel to the workers: one --diagDir then holds DIR/<tract>/<filter>
        self.options["diag_multi"] = len(units) > 1
        return units

    def _refcat_name(self, name):
        from ..refcat.loader import available_refcats

        names = available_refcats(self.repo.root)
        if name:
            if name not in names:
                raise UserError(f"reference catalog {name!r} not in {self.repo.root}/ref_cats "
                                f"(have: {', '.join(names) or 'none'}); ingest or fetch it")
            return name
        if len(names) != 1:
            raise UserError(f"{len(names)} reference catalogs in {self.repo.root}/ref_cats "
                            f"({', '.join(names) or 'none'}); choose one with --config "
                            "astrometryRefCat=NAME (ingestReferenceCatalog.py adds one)")
        return names[0]

    def run_unit(self, data_id):
        import time

        from ..refcat.loader import load_region

        cfg = self.config
        t_start, c_start = time.perf_counter(), time.process_time()
        visits = {int(v) for v in str(data_id["visit"]).split("^")}
        ccds = {int(c) for c in str(data_id["ccd"]).split("^")}
        rows = [r for r in self.repo.registry.exposures(filter=data_id["filter"])
                if r["visit"] in visits and r["ccd"] in ccds]
        dets, images, unread = [], [], {}
        paths, keys = [], []
        for r in rows:
            p = self.repo.find("src", visit=r["visit"], ccd=r["ccd"], pointing=r["pointing"],
                               filter=r["filter"])
            if p is None:
                unread[(r["visit"], r["ccd"])] = "no SRC catalog; run detectSources.py"
                continue
            paths.append(p)
            keys.append((r["visit"], r["ccd"]))
        processes = int(self.options.get("processes") or 1)
        for k, got in zip(keys, read_src_many(paths, cfg.minSnr, cfg.requireStar,
                                              processes)):
            if isinstance(got, str):
                unread[k] = got
                continue
            dets.append(got[0])
            images.append(got[1])
        for k, why in unread.items():
            self.log.warning("visit=%d ccd=%d dropped: %s", *k, why)
        if not images:
            raise UserError(f"tract={data_id['tract']} filter={data_id['filter']}: no "
                            "readable SRC catalog; run detectSources.py first")
        ra = np.concatenate([[r[f"ra{i}"] for i in range(1, 5)] for r in rows])
        dec = np.concatenate([[r[f"dec{i}"] for i in range(1, 5)] for r in rows])
        ra0, dec0 = mean_direction(ra, dec)
        from ..refcat.loader import angular_separation
        radius = float(np.max(angular_separation(ra0, dec0, ra, dec))) + 0.05
        epoch = float(np.nanmean([im.mjd for im in images]))
        instrument = rows[0].get("instrument")
        aname = self._refcat_name(cfg.astrometryRefCat)
        table = load_region(self.repo.root, aname, ra0, dec0, radius, epoch_mjd=epoch,
                            filter_name=data_id["filter"], instrument=instrument)
        refcat = RefCatalog.from_table(table, epoch)
        pname = self._refcat_name(cfg.photometryRefCat or aname) if cfg.doPhotometry else aname
        if pname != aname:
            refcat = _transfer_fluxes(refcat, RefCatalog.from_table(load_region(
                self.repo.root, pname, ra0, dec0, radius, epoch_mjd=epoch,
                filter_name=data_id["filter"], instrument=instrument), epoch))
        from .cholesky import use_backend

        t_fit, c_fit = time.perf_counter(), time.process_time()
        with use_backend(cfg.choleskyBackend):
            res = self.fit(Detections.concatenate(dets), images, refcat)
        res.dropped.update(unread)
        tract = data_id["tract"]
        t_write, c_write = time.perf_counter(), time.process_time()
        metrics = self._write_outputs(res, tract, data_id["filter"])
        t_end, c_end = time.perf_counter(), time.process_time()
        # the benchmark against SCAMP reads this line (benchmarks/bench_jointcal_scamp.py)
        self.log.info("tract %s %s timing: inputs %.3f s, fit %.3f s, outputs %.3f s "
                      "(%d files); CPU %.3f s, %.3f s, %.3f s", tract, data_id["filter"],
                      t_fit - t_start, t_write - t_fit, t_end - t_write, self._n_written,
                      c_fit - c_start, c_write - c_fit, c_end - c_write)
        self.log.info("tract %s %s: %d CCD images, astrometry rms %.2f mas (ref) %.2f mas "
                      "(internal), photometric repeatability %.2f mmag, %d dropped", tract,
                      data_id["filter"], len(res.images),
                      metrics.get("astrometry_rms_ref_mas", np.nan),
                      metrics.get("astrometry_rms_internal_mas", np.nan),
                      metrics.get("photometry_repeatability_mmag", np.nan), len(res.dropped))
        if self.options.get("diagnostics"):
            self._write_diagnostics(res, tract, data_id["filter"])
        return {k: metrics[k] for k in ("prepared_ccdImages", "final_chi2", "final_ndof")
                if k in metrics}


    def _write_outputs(self, res, tract, filter_name) -> dict:
        """The per-CCD WCS and photoCalib files and the metrics file, in one
        :class:`~tractpatch.atomic.AtomicBatch`: every file is staged, the file system
        is synced once, then all are renamed into place (one fsync per file was most of
        the time of writing a small tract). Returns the metrics."""
        from ..atomic import AtomicBatch
        from .outputs import photocalib_from_model, write_wcs

        cfg = self.config
        prov = self.provenance()
        wcs_dev = []
        with AtomicBatch() as batch:
            for g, im in enumerate(res.images):
                ident = dict(tract=tract, visit=im.visit, ccd=im.ccd)
                if cfg.doAstrometry:
                    wcs_dev.append(write_wcs(
                        self.repo.path(f"{self.name}_wcs", **ident),
                        lambda x, y, g=g: res.pixel_to_sky(g, x, y), im.nx, im.ny, prov,
                        cfg.wcsTolerance, cfg.sipOrderMax, cfg.wcsFormat, batch=batch))
                if res.photo_model is not None:
                    order = getattr(res.photo_model, "order", 0)  # simple: a constant
                    pc = photocalib_from_model(lambda x, y, g=g: res.calibration(g, x, y),
                                               im.nx, im.ny, order)
                    pc.write(self.repo.path(f"{self.name}_photoCalib", **ident),
                             extra_header=prov, batch=batch)
            metrics = compute_metrics(res)
            if wcs_dev:
                metrics["wcs_max_deviation_mas"] = round(float(max(wcs_dev)), 4)
            batch.write_text(self.repo.path(f"{self.name}_metrics", tract=tract,
                                            filter=filter_name),
                             yaml.safe_dump(metrics, sort_keys=False))
            self._n_written = len(batch)
        return metrics

    def diagnostics_dir(self, tract, filter_name):
        """Where ``--diagnostics`` writes (see :meth:`add_arguments`)."""
        from pathlib import Path

        base = self.options.get("diagDir")
        if base is None:
            return self.repo.path(f"{self.name}_diagnostics", tract=tract,
                                  filter=filter_name)
        if self.options.get("diag_multi"):
            return Path(base) / str(tract) / str(filter_name)
        return Path(base)

    def _write_diagnostics(self, res, tract, filter_name):
        from ..diagnostics.writer import write_diagnostics
        from .diagnostics_adapter import fit_diagnostics

        out = self.diagnostics_dir(tract, filter_name)
        files = write_diagnostics(fit_diagnostics(res, self.name, int(tract), filter_name),
                                  out)
        self.log.info("tract %s %s: %d diagnostics files in %s", tract, filter_name,
                      len(files), out)


class JointcalTask(JointFitTask):
    """Joint astrometric and photometric calibration of a tract, per filter."""

    name = "jointcal"
    description = "Joint astrometric and photometric calibration of all CCDs of a tract"
    ConfigClass = JointcalConfig

    def fit(self, det, images, refcat):
        from .solver import fit_jointcal

        return fit_jointcal(det, images, refcat, self.config)


def _transfer_fluxes(astro: RefCatalog, photo: RefCatalog, radius_arcsec=1.0):
    """Astrometric refcat with fluxes of the photometric one (nearest within radius)."""
    from scipy.spatial import cKDTree

    def xyz(ra, dec):
        a, d = np.radians(ra), np.radians(dec)
        return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])

    dist, j = cKDTree(xyz(photo.ra, photo.dec)).query(
        xyz(astro.ra, astro.dec), distance_upper_bound=np.radians(radius_arcsec / 3600))
    ok = np.isfinite(dist)
    astro.flux = np.where(ok, photo.flux[np.minimum(j, len(photo) - 1)], np.nan)
    astro.flux_err = np.where(ok, photo.flux_err[np.minimum(j, len(photo) - 1)], np.nan)
    return astro


def main():
    """Console entry point of jointcal.py."""
    sys.exit(JointcalTask.main())
