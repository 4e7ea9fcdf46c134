"""tractpatch.atomic (single files and batches) and tractpatch.image.fits_bytes."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from astropy.io import fits

import tractpatch.atomic as atomic
from tractpatch.atomic import AtomicBatch, write_bytes_atomic, write_fits_atomic
from tractpatch.image.fits_bytes import (bintable_bytes, card, encode_checksum, hdu_bytes,
                                         sum32)
from tractpatch.image.photocalib import PhotoCalib


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".tmp-"))


def test_single_write_fsyncs_the_file_then_renames(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"),
                                                     real_replace(a, b)))
    write_bytes_atomic(tmp_path / "a.bin", b"abc")
    assert calls == ["fsync", "replace"]
    assert (tmp_path / "a.bin").read_bytes() == b"abc" and not _leftovers(tmp_path)


def test_batch_syncs_once_before_any_rename(tmp_path, monkeypatch):
    events = []
    real_sync, real_replace = atomic.sync_filesystems, os.replace

    def sync(dirs, files=()):
        # every staged file exists, complete, before the sync; none is visible yet
        events.append(("sync", sorted(os.path.basename(f)[:7] for f in files)))
        assert not any((tmp_path / "sub" / f"f{i}.bin").exists() for i in range(5))
        return real_sync(dirs, files)

    monkeypatch.setattr(atomic, "sync_filesystems", sync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", b)),
                                                     real_replace(a, b)))
    with AtomicBatch() as batch:
        for i in range(5):
            batch.write_bytes(tmp_path / "sub" / f"f{i}.bin", bytes([i]) * 100)
        batch.write_text(tmp_path / "m.yaml", "a: 1\n")
        assert len(batch) == 6
    assert events[0] == ("sync", [".tmp-f0", ".tmp-f1", ".tmp-f2", ".tmp-f3", ".tmp-f4",
                                  ".tmp-m."])
    assert [e[0] for e in events[1:]] == ["replace"] * 6
    for i in range(5):
        assert (tmp_path / "sub" / f"f{i}.bin").read_bytes() == bytes([i]) * 100
    assert (tmp_path / "m.yaml").read_text() == "a: 1\n"
    assert not _leftovers(tmp_path) and not _leftovers(tmp_path / "sub")
    assert oct((tmp_path / "m.yaml").stat().st_mode & 0o777) == oct(0o644)


def test_batch_failure_touches_no_destination(tmp_path):
    (tmp_path / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicBatch() as batch:
            batch.write_bytes(tmp_path / "old.bin", b"new")
            batch.write_bytes(tmp_path / "fresh.bin", b"new")
            raise RuntimeError("the run failed half-way")
    assert (tmp_path / "old.bin").read_bytes() == b"old"
    assert not (tmp_path / "fresh.bin").exists()
    assert not _leftovers(tmp_path)


def test_batch_without_syncfs_fsyncs_every_file(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_libc_syncfs", lambda: None)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with AtomicBatch() as batch:
        for i in range(3):
            batch.write_bytes(tmp_path / f"f{i}.bin", b"x")
    # three files, then the directory (the renames)
    assert sorted(s[:7] for s in synced[:3]) == [".tmp-f0", ".tmp-f1", ".tmp-f2"]
    assert synced[3] == tmp_path.name and len(synced) == 4


def test_batch_fits_equals_single_write(tmp_path):
    hdul = fits.HDUList([fits.PrimaryHDU(np.arange(6.0).reshape(2, 3))])
    write_fits_atomic(tmp_path / "one.fits", hdul)
    with AtomicBatch() as batch:
        batch.write_fits(tmp_path / "two.fits", hdul)
    assert (tmp_path / "one.fits").read_bytes() == (tmp_path / "two.fits").read_bytes()


# ----------------------------------------------------------------------- fits_bytes
def test_sum32_by_hand():
    # 0xFFFFFFFF + 0x00000002 = 0x1_00000001 -> end-around carry: 0x00000002
    assert sum32(bytes.fromhex("FFFFFFFF00000002")) == 2
    assert sum32(bytes.fromhex("0000000100000002")) == 3


def test_encoding_of_the_standard_example():
    # FITS standard 4.0 appendix J: a checksum of 0 (sum -0) encodes as all zeros
    # complemented: ~0xFFFFFFFF = 0 -> "0000000000000000"
    assert encode_checksum(0) == "0" * 16
    # every encoding is 16 alphanumeric characters
    rng = np.random.default_rng(0)
    for v in rng.integers(0, 2 ** 32, 200):
        code = encode_checksum(int(v))
        assert len(code) == 16 and code.isalnum(), code


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.int32, np.uint8])
def test_hdu_bytes_checksums_verify_in_astropy(dtype):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(7, 5)) * 100).astype(dtype)
    raw = (hdu_bytes([card("OBJECT", "m17", "a string"), card("EXPTIME", 30.5),
                      card("NCOMBINE", 3), card("SIMPLE2", False)])
           + hdu_bytes(["COMMENT a comment card".ljust(80)], data, primary=False,
                       extname="IMG"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # astropy warns on a wrong checksum
        with fits.open(io.BytesIO(raw), checksum=True) as hdul:
            hdul.verify("exception")
            assert all(h.verify_checksum() == 1 and h.verify_datasum() == 1 for h in hdul)
            assert hdul[0].header["OBJECT"] == "m17" and hdul[0].header["NCOMBINE"] == 3
            assert hdul[0].header["SIMPLE2"] is False
            np.testing.assert_array_equal(hdul["IMG"].data, data)


def test_bintable_bytes_read_back_in_astropy_with_checksums():
    rng = np.random.default_rng(3)
    n = 11  # an odd row count: the data unit is padded
    cols = {"id": np.arange(n, dtype=np.int64), "x": rng.normal(size=n),
            "f": rng.normal(size=n).astype(np.float32),
            "k": rng.integers(-9, 9, n).astype(np.int32),
            "s": rng.integers(-9, 9, n).astype(np.int16),
            "b": rng.integers(0, 255, n).astype(np.uint8), "ok": rng.random(n) > 0.5}
    raw = hdu_bytes([]) + bintable_bytes(cols, {"x": "pix"}, "SOURCES",
                                         [card("VISIT", 12)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(io.BytesIO(raw), checksum=True) as hdul:
            hdul.verify("exception")
            t = hdul["SOURCES"]
            assert t.verify_checksum() == 1 and t.verify_datasum() == 1
            assert [c.format for c in t.columns] == ["K", "D", "E", "J", "I", "B", "L"]
            assert t.columns["x"].unit == "pix" and t.header["VISIT"] == 12
            for name, v in cols.items():
                np.testing.assert_array_equal(t.data[name], v)
    with pytest.raises(ValueError, match="unsupported table column"):
        bintable_bytes({"c": np.zeros(3, complex)})


def test_photocalib_bytes_equal_the_astropy_form():
    pc = PhotoCalib(np.array([[2.0, 0.01, 1e-4], [0.02, 3e-3, 0], [1e-5, 0, 0]]),
                    (-0.5, -0.5, 2047.5, 4175.5), 0.01)
    extra = {"TASK": "jointcal", "CFGHASH": "0123abcd"}
    buf = io.BytesIO()
    pc.to_hdulist(extra).writeto(buf, checksum=True)
    with fits.open(io.BytesIO(pc.to_fits_bytes(extra)), checksum=True) as ours, \
            fits.open(io.BytesIO(buf.getvalue())) as theirs:
        assert len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs):
            keys = [k for k in b.header if k not in ("CHECKSUM", "DATASUM", "COMMENT")]
            assert [a.header[k] for k in keys] == [b.header[k] for k in keys]
        back = PhotoCalib.from_hdulist(ours)
    np.testing.assert_array_equal(back.coeffs, pc.coeffs)
    assert back.bbox == pc.bbox and back.error == pc.error
