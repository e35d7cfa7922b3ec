"""The book's own chunk reader (``stores.ticked``): the values zarr reads,
empty levels for a missing chunk, and a one-line error naming a damaged one."""

import os
import shutil

import numpy as np
import pytest
import xarray as xr

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.stores import ticked

VARS = ("bid_price", "bid_size", "ask_price", "ask_size")


@pytest.fixture(scope="module", params=["lz4", "none"])
def book(request, tiny_dataset, tmp_path_factory):
    """The tiny dataset's book as synthesised (compressed), and the same book with its
    chunks kept uncompressed."""
    if request.param == "lz4":
        return tiny_dataset["book"]
    from gpu_risk.synth import SynthConfig, synth

    out = tmp_path_factory.mktemp("uncompressed")
    made = synth(SynthConfig(out=str(out), days=2, instruments=2, accounts=10, levels=5, snapshots_per_day=6000,
                             book_chunk_rows=2048, compression="none"))
    assert store.store_compression(made["book"]) == "none"
    return made["book"]


def read_all(book, group, direct, monkeypatch):
    monkeypatch.setattr(ticked, "DIRECT_READS", direct)
    ds = store.open_day_dataset(book, group)
    is_direct = all(ds[v].data.name.startswith("read-ticks") if hasattr(ds[v].data, "dask") else False
                    for v in VARS)
    return {v: ds[v].values for v in VARS}, {v: dict(ds[v].attrs) for v in VARS}, is_direct


def test_direct_reads_equal_zarr_on_every_array(book, monkeypatch):
    for inst in store.book_instruments(book):
        for day in store.complete_days(book, inst):
            ours, our_attrs, used = read_all(book, f"{inst}/{day}", True, monkeypatch)
            theirs, their_attrs, _ = read_all(book, f"{inst}/{day}", False, monkeypatch)
            assert used  # the direct reader ran (several chunks a day, the last one partial)
            for v in VARS:
                np.testing.assert_array_equal(ours[v], theirs[v], err_msg=f"{inst} {day} {v}")
                assert our_attrs[v] == their_attrs[v]
            assert any(np.isnan(ours[v]).any() for v in VARS)  # empty levels read as NaN


def test_a_missing_chunk_is_empty_levels_and_a_damaged_one_is_named(book, tmp_path, monkeypatch):
    source, book = book, tmp_path / "book.zarr"
    shutil.copytree(source, book)
    inst = store.book_instruments(book)[0]
    day = store.complete_days(book, inst)[0]
    group = f"{inst}/{day}"
    (book / group / "bid_size" / "c" / "1" / "0").unlink()
    flipped = book / group / "ask_price" / "c" / "0" / "0"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    monkeypatch.setattr(ticked, "DIRECT_READS", True)
    ds = store.open_day_dataset(book, group)
    chunk_rows = ds["bid_size"].data.chunks[0][0]
    sizes = ds["bid_size"].values
    assert np.isnan(sizes[chunk_rows:2 * chunk_rows]).all() and not np.isnan(sizes[:chunk_rows]).all()
    with pytest.raises(InputError, match="checksum") as found:
        ds["ask_price"].load()
    assert f"{group}/ask_price/c/0/0" in str(found.value) and "\n" not in str(found.value)


def test_a_relative_store_path_still_reads_after_a_change_of_directory(tiny_dataset, tmp_path, monkeypatch):
    book = tmp_path / "here" / "book.zarr"
    shutil.copytree(tiny_dataset["book"], book)
    inst = store.book_instruments(book)[0]
    day = store.complete_days(book, inst)[0]
    monkeypatch.setattr(ticked, "DIRECT_READS", True)
    cwd = os.getcwd()
    os.chdir(tmp_path / "here")
    try:
        ds = store.open_day_dataset("book.zarr", f"{inst}/{day}")
    finally:
        os.chdir(cwd)
    expected = store.open_day_dataset(book, f"{inst}/{day}")
    np.testing.assert_array_equal(ds["bid_price"].values, expected["bid_price"].values)


def test_a_day_opened_from_its_metadata_equals_xarrays_opening(book, monkeypatch):
    """Book days are opened from their metadata files (``ticked.open_book_day``): the same
    dataset, attributes, coordinates and dataset encoding as through ``xr.open_zarr``."""
    for inst in store.book_instruments(book):
        for day in store.complete_days(book, inst):
            group = f"{inst}/{day}"
            assert ticked.open_book_day(book, group) is not None  # the fast opening applies
            monkeypatch.setattr(ticked, "DIRECT_READS", True)
            ours = store.open_day_dataset(book, group)
            monkeypatch.setattr(ticked, "DIRECT_READS", False)
            theirs = store.open_day_dataset(book, group)
            xr.testing.assert_identical(ours, theirs)
            assert ours.encoding == theirs.encoding
            for name in ours.variables:
                assert ours[name].attrs == theirs[name].attrs
                assert ours[name].dtype == theirs[name].dtype
            assert ours["time"].encoding["units"] == theirs["time"].encoding["units"]


def test_a_day_with_other_arrays_is_opened_by_xarray(tiny_dataset, tmp_path):
    book = tmp_path / "book.zarr"
    shutil.copytree(tiny_dataset["book"], book)
    inst = store.book_instruments(book)[0]
    group = f"{inst}/{store.complete_days(book, inst)[0]}"
    shutil.copytree(book / group / "level", book / group / "extra")
    assert ticked.open_book_day(book, group) is None


def test_the_checksum_without_google_crc32cs_library_gives_the_same(book, monkeypatch):
    """Where google-crc32c's C library is not found the checksum goes through its Python
    call (a copy of each chunk): the same values, and a damaged chunk is still named."""
    inst = store.book_instruments(book)[0]
    group = f"{inst}/{store.complete_days(book, inst)[0]}"
    fast, _, _ = read_all(book, group, True, monkeypatch)
    monkeypatch.setattr(ticked, "_crc32c_c", False)
    slow, _, used = read_all(book, group, True, monkeypatch)
    assert used
    for v in VARS:
        np.testing.assert_array_equal(slow[v], fast[v])
    import google_crc32c

    data = np.frombuffer(b"gpu_risk", dtype=np.uint8)
    assert ticked.crc32c(data) == google_crc32c.value(b"gpu_risk")  # through Python
    monkeypatch.setattr(ticked, "_crc32c_c", None)
    assert ticked.crc32c(data) == google_crc32c.value(b"gpu_risk")  # through the library, found again
    assert ticked._crc32c_c is not False  # found on this machine
