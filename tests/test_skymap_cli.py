"""makeDiscreteSkyMap.py, makeSkyMap.py and findTractPatch.py on real and synthetic
repositories."""
from __future__ import annotations

import json
import logging
import math
import re

import numpy as np
import pytest
import yaml

from tractpatch.repo.repository import Repository
from tractpatch.skymap import load_skymap
from tractpatch.skymap.selection import ccd_polygon, exposures_in_tract
from tractpatch.skymap.sphere import offset, separation
from tractpatch.skymap.tasks import MakeDiscreteSkyMapTask, MakeSkyMapTask, find_main
from tractpatch.skymap.tract import TractGeometry, TractInfo

LINE = re.compile(r"^makeDiscreteSkyMap INFO: tract (\d+) has corners "
                  r"(\(\d+\.\d{3}, -?\d+\.\d{3}\)(, )?){4} \(RA, Dec deg\) and "
                  r"(\d+) x (\d+) patches$", re.M)


@pytest.fixture(scope="module")
def decam_repo(tmp_path_factory, shared_data):
    from tests.conftest import run_cmd

    root = tmp_path_factory.mktemp("decam") / "repo"
    images = sorted((shared_data / "legacysurvey-decam-cutouts" / "testcase3" /
                     "images").rglob("*ooi*.fits*"))
    run_cmd("ingestImages.py", root, *images, "--instrument", "decam", "--no-progress",
            check=0)
    return root


def test_make_discrete_skymap_cli(decam_repo, run):
    fields = "DECaLS_31037_g^DECaLS_31037_r^DECaLS_31037_z"
    p = run("makeDiscreteSkyMap.py", decam_repo, "--rerun", "sky", "--id",
            f"field={fields}", "--no-progress", check=0)
    lines = LINE.findall(p.stderr)
    assert len(lines) == 1, p.stderr
    repo = Repository(decam_repo, rerun="sky")
    skymap = load_skymap(repo)
    tract = skymap[0]
    corners = ", ".join(f"({r:0.3f}, {d:0.3f})" for r, d in tract.corners())
    assert (f"makeDiscreteSkyMap INFO: tract 0 has corners {corners} (RA, Dec deg) and "
            "1 x 1 patches") in p.stderr.splitlines()
    rows = repo.registry.exposures(None)
    chosen = [r for r in rows if r["field"].startswith("DECaLS_31037")]
    assert len(chosen) == 3
    ra = np.concatenate([ccd_polygon(r)[0] for r in chosen])
    dec = np.concatenate([ccd_polygon(r)[1] for r in chosen])
    # the centre is the bounding-circle centre: its radius reaches the farthest corner
    cfg = skymap.config
    assert cfg.radiusList[0] == pytest.approx(
        separation(cfg.raList[0], cfg.decList[0], ra, dec).max(), rel=1e-9)
    # tract corners enclose every CCD corner
    assert np.all(tract.contains(ra, dec))
    tra = [c[0] for c in tract.corners()]
    tdec = [c[1] for c in tract.corners()]
    assert min(tra) < ra.min() and ra.max() < max(tra)
    assert min(tdec) < dec.min() and dec.max() < max(tdec)
    # HSC defaults: TAN, 0.168"/pix, 4000x4000 patches, border 100
    assert tract.wcs.wcs.ctype[0] == "RA---TAN"
    assert tract.patch(0, 0).outer_bbox.width == 4000
    # the registry has the tract and its patch with sky polygons
    trow = repo.registry.tracts("sky")
    assert [(t["tract"], t["num_patches_x"], t["num_patches_y"]) for t in trow] == \
        [(0, 1, 1)]
    assert np.allclose(json.loads(trow[0]["polygon"]), tract.corners(), atol=1e-7)
    assert len(repo.registry.patches("sky", 0)) == 1
    png = repo.path("deepCoadd_skyMapPlot", tract=0)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = yaml.safe_load(repo.path("deepCoadd_skyMap").read_text())
    assert doc["kind"] == "discrete" and doc["config"]["pixelScale"] == 0.168
    # every CCD of this data set covers the same sky: all are in tract 0
    assert len(exposures_in_tract(repo, rows, 0)) == len(rows) == 8

    # findTractPatch answers a position and a CCD
    cra, cdec = tract.center
    p = run("findTractPatch.py", decam_repo, "--rerun", "sky", "--radec", cra, cdec,
            "--radec", 10.0, -40.0, "--id", "visit=432164", "ccd=42", "--plot", check=0)
    out = p.stdout.splitlines()
    assert out[0] == f"RA {cra:.6f} Dec {cdec:.6f}: tract 0 patch 0,0"
    assert out[1] == "RA 10.000000 Dec -40.000000: in no tract of the skymap"
    assert out[2] == "visit=432164 ccd=42: tract 0 patches 0,0"
    assert out[3].startswith("tract 0 picture: ")
    p = run("findTractPatch.py", decam_repo, "--rerun", "sky", "--radec", 10.0, 95.0)
    assert p.returncode == 2 and "Dec must be within" in p.stderr
    assert "Traceback" not in p.stderr


# --- synthetic repositories (registry rows with chosen sky corners) -----------------
def _add_ccd(repo, visit, ccd, filt, field, ra, dec, half=0.1):
    corners = [offset(ra, dec, b, half * math.sqrt(2)) for b in (225, 315, 45, 135)]
    row = dict(instrument="generic", visit=visit, ccd=ccd, filter=filt, field=field,
               pointing=0, path=f"v{visit}c{ccd}.fits", nx=2000, ny=2000,
               ra_center=ra, dec_center=dec)
    for i, (r, d) in enumerate(corners, start=1):
        row[f"ra{i}"], row[f"dec{i}"] = r, d
    repo.registry.add_exposure(row)


@pytest.fixture
def synth(tmp_path):
    repo = Repository(tmp_path / "repo", create=True)
    # field A: 3x3 CCDs of 0.2 deg around (359.9, 30) in g and r; field B elsewhere
    v = 0
    for filt in ("g", "r"):
        v += 1
        for i, (dx, dy) in enumerate([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]):
            _add_ccd(repo, v, i, filt, "A", (359.9 + 0.23 * dx) % 360, 30 + 0.2 * dy)
    _add_ccd(repo, 10, 0, "g", "B", 45.0, -10.0)
    return repo


def _main(task, root, *args):
    return task.main([str(root), *map(str, args), "--no-progress"])


def _min_width(tract_cfg_radius, ra, dec, scale):
    one = TractInfo.explicit(0, ra, dec, tract_cfg_radius, 0.0,
                             TractGeometry(scale, "TAN", 0.0, (1, 1), 0))
    return max(one.num_patches)


def test_left_out_filters_warning_and_ra_wrap(synth, caplog):
    caplog.set_level(logging.INFO)
    assert _main(MakeDiscreteSkyMapTask, synth.root, "--rerun", "g", "--id", "field=A",
                 "filter=g", "--config", "doPlot=False") == 0
    warn = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warn) == 1 and "field A also has filter(s) r" in warn[0]
    assert "filter=g^r" in warn[0]
    t = load_skymap(Repository(synth.root, rerun="g"))[0]
    assert separation(t.center[0], t.center[1], 359.9, 30.0) < 1e-3  # not near RA 180
    assert not Repository(synth.root, rerun="g").path("deepCoadd_skyMapPlot",
                                                     tract=0).exists()
    rows = synth.registry.exposures(None)
    inside = exposures_in_tract(Repository(synth.root, rerun="g"), rows, 0)
    assert len(inside) == 18 and all(r["field"] == "A" for r in inside)
    caplog.clear()
    assert _main(MakeDiscreteSkyMapTask, synth.root, "--rerun", "gr", "--id", "field=A",
                 "--config", "doPlot=False") == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_patch_limit_30_and_31(synth, capsys, caplog):
    caplog.set_level(logging.INFO)
    repo = synth
    # radius of field A's bounding circle, then pixel scales giving 30 and 31 patches
    rows = repo.registry.exposures(None, field="A")
    from tractpatch.skymap.sphere import bounding_circle

    ra = np.concatenate([ccd_polygon(r)[0] for r in rows])
    dec = np.concatenate([ccd_polygon(r)[1] for r in rows])
    cra, cdec, radius = bounding_circle(ra, dec)
    width = _min_width(radius, cra, cdec, 0.168)  # pixels at 0.168"/pix
    s30 = 0.168 * width / (29.5 * 4000)
    s31 = 0.168 * width / (30.5 * 4000)
    assert _main(MakeDiscreteSkyMapTask, repo.root, "--rerun", "p31", "--id", "field=A",
                 "--config", f"skyMap.pixelScale={s31!r}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("makeDiscreteSkyMap: error: --id field=A: tract 0 would "
                             "need 31 x 31 patches of 4000x4000 pixels")
    m = re.search(r"skyMap\.patchInnerDimensions=\[(\d+),(\d+)\] \(the smallest that "
                  r"fits\) or split the fields over several tracts", err[0])
    assert m and err[0].endswith("nothing was written")
    assert not (repo.root / "rerun" / "p31").exists()
    assert repo.registry.tracts("p31") == []
    need = int(m.group(1))
    w31 = _min_width(radius, cra, cdec, s31)
    assert need == math.ceil(w31 / 30)  # the smallest: need - 1 gives 31 patches
    assert math.ceil(w31 / (need - 1)) >= 31
    caplog.clear()
    assert _main(MakeDiscreteSkyMapTask, repo.root, "--rerun", "p30", "--id", "field=A",
                 "--config", f"skyMap.pixelScale={s30!r}", "doPlot=False") == 0
    assert load_skymap(Repository(repo.root, rerun="p30"))[0].num_patches == (30, 30)
    assert any(LINE.match(f"makeDiscreteSkyMap INFO: {r.getMessage()}") and
               r.getMessage().endswith("30 x 30 patches") for r in caplog.records)
    assert _main(MakeDiscreteSkyMapTask, repo.root, "--rerun", "fixed", "--id",
                 "field=A", "--config", f"skyMap.pixelScale={s31!r}", "doPlot=False",
                 f"skyMap.patchInnerDimensions=[{need},{need}]") == 0
    assert max(load_skymap(Repository(repo.root, rerun="fixed"))[0].num_patches) == 30


def test_do_append(synth, capsys, caplog):
    caplog.set_level(logging.INFO)
    root = synth.root
    assert _main(MakeDiscreteSkyMapTask, root, "--rerun", "ap", "--id", "field=A",
                 "--config", "doPlot=False") == 0
    # without doAppend an existing skymap is never replaced
    assert _main(MakeDiscreteSkyMapTask, root, "--rerun", "ap", "--id", "field=B",
                 "--config", "doPlot=False") == 2
    assert "use --config doAppend=True" in capsys.readouterr().err
    # mismatching geometry cannot be appended
    assert _main(MakeDiscreteSkyMapTask, root, "--rerun", "ap", "--id", "field=B",
                 "--config", "doPlot=False", "doAppend=True", "skyMap.patchBorder=50",
                 "--clobber-config") == 2
    assert "cannot append, the skymap config differs in patchBorder" in \
        capsys.readouterr().err
    caplog.clear()
    assert _main(MakeDiscreteSkyMapTask, root, "--rerun", "ap", "--id", "field=B",
                 "--config", "doPlot=False", "doAppend=True", "--clobber-config") == 0
    sm = load_skymap(Repository(root, rerun="ap"))
    assert len(sm) == 2
    assert separation(sm[1].center[0], sm[1].center[1], 45.0, -10.0) < 1e-6
    assert separation(sm[0].center[0], sm[0].center[1], 359.9, 30.0) < 1e-3
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("tract 0 has corners") for m in msgs)
    assert any(m.startswith("tract 1 has corners") for m in msgs)
    assert [t["tract"] for t in synth.registry.tracts("ap")] == [0, 1]
    # appending the same selection again keeps the tract (no duplicate)
    assert _main(MakeDiscreteSkyMapTask, root, "--rerun", "ap", "--id", "field=B",
                 "--config", "doPlot=False", "doAppend=True") == 0
    assert len(load_skymap(Repository(root, rerun="ap"))) == 2


def test_make_skymap_presets_and_lookup(synth, capsys):
    root = synth.root
    assert _main(MakeSkyMapTask, root, "--rerun", "ps1", "--config",
                 "name=ps1_rings_v3") == 0
    sm = load_skymap(Repository(root, rerun="ps1"))
    assert len(sm) == 2009 and sm.kind == "ps1"
    assert len(synth.registry.tracts("ps1")) == 2009
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        find_main([str(root), "--rerun", "ps1", "--radec", "83.63321", "22.01446"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("RA 83.633210 Dec 22.014460: skycell.1784.059;")
    assert "tract 1784 patch 9,5" in out
    # a different skymap in the same rerun is refused
    assert _main(MakeSkyMapTask, root, "--rerun", "ps1", "--config",
                 "name=hsc_rings_v1", "--clobber-config") == 2
    assert "already holds a different skymap" in capsys.readouterr().err


def test_make_skymap_hsc_rings_cosmos(synth, capsys):
    root = synth.root
    assert _main(MakeSkyMapTask, root, "--rerun", "ssp") == 0
    sm = load_skymap(Repository(root, rerun="ssp"))
    assert len(sm) == 18938 and sm[9813].center == (150.2479338842975, 2.2314049586776834)
    assert len(synth.registry.tracts("ssp")) == 18938
    capsys.readouterr()
    with pytest.raises(SystemExit):
        find_main([str(root), "--rerun", "ssp", "--radec", "150.12", "2.21"])
    out = capsys.readouterr().out
    # by hand: x = 18000 + (150.248 - 150.12) cos(2.2 deg) 3600 / 0.168 ~ 20738 -> 5,
    #          y = 18000 + (2.21 - 2.2314) 3600 / 0.168 ~ 17541 -> 4
    assert out.startswith("RA 150.120000 Dec 2.210000: nearest-centre tract 9813;")
    assert "tract 9813 patch 5,4" in out
