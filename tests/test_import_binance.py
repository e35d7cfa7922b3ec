"""The Binance depth-stream importer on the real captures in ../shared/data/real."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.importers.binance import import_binance

FEED = Path(__file__).resolve().parents[2] / "shared/data/real/binance_hftbacktest_feed"
SETS = {"usdm_btc": ["usdm/btcusdt_20240808.gz"], "usdm_eth": ["usdm/ethusdt_20240808.gz"],
        "spot_btc": ["spot/btcusdt_20240808.gz", "spot/btcusdt_20240809.gz"],
        "coinm_btc": ["cm/btcusd_perp_20240808.gz", "cm/btcusd_perp_20240809.gz"]}


def paths(name):
    files = [FEED / f for f in SETS[name]]
    if not all(f.exists() for f in files):
        pytest.skip("shared Binance captures not present")
    return files


def reference_books(files, levels, at=None):
    """Plain reference: dicts, Binance's documented rule, books sorted when asked for
    (at the applied-diff indices in ``at``; None for every one). Returns (count, books)."""
    msgs = [json.loads(line.split(" ", 1)[1]) for f in files for line in gzip.open(f, "rt")]
    snap = next(m for m in msgs if "lastUpdateId" in m)
    diffs = [m["data"] for m in msgs if m.get("data", {}).get("e") == "depthUpdate"]
    futures = "pu" in diffs[0]
    sid = snap["lastUpdateId"]
    bids = {float(p): float(q) for p, q in snap["bids"]}
    asks = {float(p): float(q) for p, q in snap["asks"]}
    books, last, applied = {}, None, 0
    for d in diffs:
        if last is None:
            if d["u"] < sid or (not futures and d["u"] == sid):
                continue
        elif d["u"] <= last:
            continue
        for side, key in ((bids, "b"), (asks, "a")):
            for p, q in d[key]:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = float(q)
        last = d["u"]
        if at is None or applied in at:
            top_b = sorted(bids, reverse=True)[:levels]
            top_a = sorted(asks)[:levels]
            books[applied] = (d["E"], top_b, [bids[p] for p in top_b], top_a, [asks[p] for p in top_a])
        applied += 1
    return applied, books


@pytest.mark.parametrize("name", list(SETS))
def test_import_matches_reference_and_bookticker(tmp_path, name):
    files = paths(name)
    report = import_binance(files, 10, tmp_path / "b.zarr", chunk_rows=2048)
    assert report["gaps"] == 0 and report["first_gap"] is None
    assert report["bookticker_compared"] > 300
    assert report["bookticker_agree"] == report["bookticker_compared"], report["first_disagreement"]
    ds = store.open_book(tmp_path / "b.zarr")[report["instrument"]].to_dataset()  # validates
    n = report["snapshots"]
    count, ref = reference_books(files, 10, at={0, n // 2, n - 1})
    assert ds.sizes["time"] == n == report["diffs_applied"] == count
    scale = 100.0 if name == "coinm_btc" else 1.0  # COIN-M contracts of 100 USD, stored in USD
    for i in (0, n // 2, n - 1):
        e_ms, bp, bq, ap, aq = ref[i]
        row = ds.isel(time=i).load()
        assert row.time.values == np.datetime64(e_ms, "ms").astype("datetime64[ns]")
        np.testing.assert_array_equal(row.bid_price.values[:len(bp)], bp)
        np.testing.assert_array_equal(row.ask_price.values[:len(ap)], ap)
        np.testing.assert_array_equal(row.bid_size.values[:len(bq)], np.array(bq) * scale)
        np.testing.assert_array_equal(row.ask_size.values[:len(aq)], np.array(aq) * scale)


@pytest.mark.parametrize("name", ["spot_btc", "coinm_btc"])
def test_files_across_midnight_continue_one_book(tmp_path, name):
    files = paths(name)
    whole = import_binance(files, 5, tmp_path / "both.zarr")
    first = import_binance(files[:1], 5, tmp_path / "first.zarr")
    assert whole["days"] == ["2024-08-08", "2024-08-09"]
    ds = store.open_book(tmp_path / "both.zarr")[whole["instrument"]].to_dataset()
    t = ds.time.values
    assert (np.diff(t) >= np.timedelta64(0)).all()
    assert t[0] < np.datetime64("2024-08-09") <= t[-1]
    # the second file only continues the first: more snapshots, same beginning
    assert whole["snapshots"] > first["snapshots"]
    head = store.open_book(tmp_path / "first.zarr")[first["instrument"]].to_dataset().isel(time=slice(0, 100))
    np.testing.assert_array_equal(ds.isel(time=slice(0, 100)).bid_price.values, head.bid_price.values)
    # the second file alone has no snapshot: it cannot start a book
    with pytest.raises(InputError, match="no REST depth snapshot"):
        import_binance(files[1:], 5, tmp_path / "second.zarr")


def _copy_lines(src, dst, keep):
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    with gzip.open(dst, "wt") as f:
        f.writelines(keep(lines))
    return lines


def test_a_gap_is_reported_and_never_papered_over(tmp_path):
    src = paths("usdm_btc")[0]
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    depth = [i for i, line in enumerate(lines) if "depthUpdate" in line]
    k = len(depth) // 2
    drop = depth[k]
    bad = tmp_path / "gap.gz"
    _copy_lines(src, bad, lambda ls: ls[:drop] + ls[drop + 1:])
    report = import_binance([bad], 5, tmp_path / "b.zarr")
    # found at the next diff, whose line number shifted up by the dropped line
    assert report["gaps"] == 1 and f"gap.gz:{depth[k + 1]}:" in report["first_gap"]
    full = import_binance([src], 5, tmp_path / "full.zarr")
    # nothing after the gap: no later REST snapshot re-initialises the book
    assert report["snapshots"] < full["snapshots"]
    assert report["diffs_applied"] == report["snapshots"]


def test_truncated_gzip_and_malformed_json_name_file_and_line(tmp_path):
    src = paths("usdm_btc")[0]
    data = src.read_bytes()
    cut = tmp_path / "truncated.gz"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated or corrupt") as info:
        import_binance([cut], 5, tmp_path / "b.zarr")
    assert "truncated.gz" in str(info.value) and info.value.index > 1
    assert not (tmp_path / "b.zarr").exists()  # the cut falls within the first day: nothing written
    bad = tmp_path / "bad.gz"
    _copy_lines(src, bad, lambda ls: ls[:100] + ['1723161255030314667 {"stream": oops\n'] + ls[100:])
    with pytest.raises(InputError, match="malformed line") as info:
        import_binance([bad], 5, tmp_path / "c.zarr")
    assert info.value.index == 101 and "bad.gz" in str(info.value)
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("name", ["spot_btc", "coinm_btc"])
def test_appending_the_next_file_continues_the_store(tmp_path, name):
    """Importing the second file into the store of the first gives exactly the store of
    both imported together: same time axis, nothing duplicated or lost."""
    files = paths(name)
    together = import_binance(files, 5, tmp_path / "together.zarr", chunk_rows=1000)
    first = import_binance(files[:1], 5, tmp_path / "appended.zarr", chunk_rows=1000)
    second = import_binance(files[1:], 5, tmp_path / "appended.zarr", chunk_rows=1000)
    assert second["gaps"] == 0 and first["snapshots"] + second["snapshots"] == together["snapshots"]
    a = store.open_book(tmp_path / "together.zarr")[together["instrument"]].to_dataset().load()
    b = store.open_book(tmp_path / "appended.zarr")[together["instrument"]].to_dataset().load()
    import xarray as xr

    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    from gpu_risk.importers.binance import STATE_ATTR

    def state():
        node = store.zarr.open_group(str(tmp_path / "appended.zarr"), path=together["instrument"])
        return dict(node.attrs)[STATE_ATTR]

    saved = state()
    again = import_binance(files, 5, tmp_path / "appended.zarr")  # both files again: recognised
    assert again["snapshots"] == 0 and again["skipped_files"] == [str(f) for f in files]
    assert again["diffs_applied"] == 0 and again["lines"] == 0  # not even read
    b2 = store.open_book(tmp_path / "appended.zarr")[together["instrument"]].to_dataset()
    assert b2.sizes["time"] == a.sizes["time"]  # nothing duplicated
    assert state() == saved  # the book's state is kept for the next file


def test_a_repeated_file_with_other_bytes_keeps_the_book_usable_for_the_next(tmp_path):
    """The first file imported again as a recompressed copy (other bytes, so not recognised):
    every diff is stale, nothing is written and the saved book stays as it was, so the next
    file still continues the store exactly as if imported together."""
    files = paths("spot_btc")
    together = import_binance(files, 5, tmp_path / "together.zarr", chunk_rows=1000)
    import_binance(files[:1], 5, tmp_path / "a.zarr", chunk_rows=1000)
    copy = tmp_path / "copy.gz"
    _copy_lines(files[0], copy, lambda ls: ls)
    assert copy.read_bytes() != files[0].read_bytes()
    again = import_binance([copy], 5, tmp_path / "a.zarr", chunk_rows=1000)
    assert again["snapshots"] == 0 and again["skipped_files"] == []
    second = import_binance(files[1:], 5, tmp_path / "a.zarr", chunk_rows=1000)
    assert second["gaps"] == 0
    import xarray as xr

    a = store.open_book(tmp_path / "together.zarr")[together["instrument"]].to_dataset().load()
    b = store.open_book(tmp_path / "a.zarr")[together["instrument"]].to_dataset().load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_event_time_going_backwards_is_an_error_not_a_rewritten_day(tmp_path):
    src = paths("usdm_btc")[0]
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    depth = [i for i, line in enumerate(lines) if "depthUpdate" in line]
    k = depth[len(depth) // 2]
    ts, payload = lines[k].split(" ", 1)
    msg = json.loads(payload)
    data = msg.get("data", msg)
    data["E"] -= 2 * 86_400_000  # two days back
    bad = tmp_path / "back.gz"
    _copy_lines(src, bad, lambda ls: ls[:k] + [f"{ts} {json.dumps(msg)}\n"] + ls[k + 1:])
    with pytest.raises(InputError, match=f"event time goes backwards at .*back.gz:{k + 1}"):
        import_binance([bad], 5, tmp_path / "b.zarr", chunk_rows=1000)
    # complete days already written stay; no day was written twice or half
    if (tmp_path / "b.zarr").exists():
        for inst, days in store.book_days(tmp_path / "b.zarr").items():
            for d in days:
                ds = store.open_book_instrument(tmp_path / "b.zarr", inst, d, d)
                assert (ds.time.values.astype("datetime64[D]") == np.datetime64(d)).all()


def test_diffs_waiting_for_a_snapshot_are_bounded(tmp_path, monkeypatch):
    """Diffs before the first REST snapshot are kept up to a bound (memory); the oldest
    beyond it are counted as dropped, and a snapshot they were needed for is a gap."""
    from gpu_risk.importers import binance

    src = paths("usdm_btc")[0]
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    snap = next(i for i, line in enumerate(lines) if "lastUpdateId" in line)
    depth = [i for i, line in enumerate(lines) if "depthUpdate" in line]
    # the snapshot moved after the 20th diff: the diff covering it is then among the oldest
    late = tmp_path / "late.gz"
    order = [i for i in range(len(lines)) if i != snap]
    order.insert(order.index(depth[20]) + 1, snap)
    _copy_lines(src, late, lambda ls: [ls[i] for i in order])
    monkeypatch.setattr(binance, "MAX_PENDING_DIFFS", 5)
    report = import_binance([late], 5, tmp_path / "b.zarr")
    assert report["diffs_dropped_before_snapshot"] > 0
    assert report["gaps"] >= 1 and report["first_gap"]  # the diffs that covered the snapshot were dropped


def _synthetic_feed(path, diffs, per_side=40, seed=0):
    """A USD-M depth stream: one REST snapshot of 1,000 levels a side on a fixed grid, then
    ``diffs`` depthUpdates, 10 ms apart, each setting ``per_side`` levels a side (sizes
    never 0, bids below asks: the book stays valid)."""
    rng = np.random.default_rng(seed)
    t0_ms = 1723161256000
    bids = [f"{100.0 - i * 0.1:.1f}" for i in range(1000)]
    asks = [f"{100.1 + i * 0.1:.1f}" for i in range(1000)]
    with gzip.open(path, "wt", compresslevel=1) as f:
        snap = {"lastUpdateId": 1000, "E": t0_ms, "T": t0_ms,
                "bids": [[p, "1.000"] for p in bids], "asks": [[p, "1.000"] for p in asks]}
        f.write(f"{t0_ms * 10**6} {json.dumps(snap)}\n")
        prev_u = 990
        for k in range(diffs):
            first = 995 if k == 0 else prev_u + 1
            e = t0_ms + 10 * (k + 1)
            sizes = rng.integers(1, 5000, (2, per_side)) / 1000
            level = rng.integers(0, 1000, (2, per_side))
            data = {"e": "depthUpdate", "E": e, "T": e, "s": "BTCUSDT", "U": first, "u": first + 10, "pu": prev_u,
                    "b": [[bids[j], f"{q:.3f}"] for j, q in zip(level[0], sizes[0])],
                    "a": [[asks[j], f"{q:.3f}"] for j, q in zip(level[1], sizes[1])]}
            f.write(f"{e * 10**6 + 5} " + json.dumps({"stream": "btcusdt@depth@0ms", "data": data}) + "\n")
            prev_u = first + 10


def test_importing_a_file_10x_the_largest_capture_keeps_memory_bounded(tmp_path):
    """A generated stream 10x the bytes of the largest shared capture (gzip), against one of
    a thirtieth of that: the peak RSS of the import grows by far less than a quarter of the
    added (uncompressed) input, because diffs are applied as read and snapshots spooled to
    disk a chunk at a time."""
    import subprocess
    import sys

    largest = max(f.stat().st_size for f in FEED.rglob("*.gz")) if FEED.exists() else 3_637_062
    script = ("import resource, sys\n"
              "from gpu_risk.importers.binance import import_binance\n"
              "import_binance([sys.argv[1]], 10, sys.argv[2], chunk_rows=4096)\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n")

    def peak(diffs):
        src = tmp_path / f"{diffs}.gz"
        _synthetic_feed(src, diffs)
        done = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / f"{diffs}.zarr")],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        with gzip.open(src, "rb") as f:
            raw = sum(len(block) for block in iter(lambda: f.read(1 << 20), b""))
        return int(done.stdout.split()[-1]), src.stat().st_size, raw

    rss_small, _, raw_small = peak(2_200)
    rss_big, size_big, raw_big = peak(67_000)
    assert size_big > 10 * largest
    assert store.open_book(tmp_path / "67000.zarr", validate=False)["BTCUSDT"].sizes["time"] == 67_000
    assert rss_big - rss_small < 0.25 * (raw_big - raw_small), (rss_small, rss_big, raw_small, raw_big)


def _respell(line: str, rng) -> str:
    """The same message in another valid JSON spelling: keys reordered, whitespace added, an
    escaped key, numbers Python reads to the same value (exponents, long mantissas), which
    the compiled scan hands to the Python path."""
    ts, payload = line.split(" ", 1)
    msg = json.loads(payload)
    data = msg.get("data", msg)
    if data.get("e") == "depthUpdate" and data["b"]:
        choice = rng.integers(4)
        if choice == 0:  # an exponent: read by Python's float()
            p, q = data["b"][0]
            data["b"][0] = [f"{float(p):e}" if float(p) != 0 else p, q]
        elif choice == 1:  # more digits than the exact fast path takes
            p, q = data["b"][0]
            data["b"][0] = [p + "0000000000000000", q]
        elif choice == 2:  # keys in another order
            items = list(data.items())
            rng.shuffle(items)
            data.clear()
            data.update(items)
    text = json.dumps(msg, separators=(",", ":") if rng.integers(2) else (" , ", " :  "))
    if rng.integers(3) == 0:
        text = text.replace('"b":', '"\\u0062":', 1)  # the same key, escaped
    return f"{ts} {text}\n"


def test_the_same_messages_in_other_json_spellings_give_the_same_store(tmp_path):
    """The compiled scan reads plain lines; every other valid spelling of a message goes to
    the Python path. Either way the store is the same, and every line is read."""
    src = paths("spot_btc")[0]
    rng = np.random.default_rng(7)
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    odd = tmp_path / "odd.gz"
    with gzip.open(odd, "wt") as f:
        f.writelines(_respell(line, rng) if rng.random() < 0.3 else line for line in lines)
    plain = import_binance([src], 10, tmp_path / "plain.zarr")
    respelled = import_binance([odd], 10, tmp_path / "odd.zarr")
    for key in ("lines", "diffs_applied", "snapshots", "bookticker_agree", "bookticker_compared", "gaps"):
        assert plain[key] == respelled[key], key
    a = store.open_book(tmp_path / "plain.zarr")[plain["instrument"]].to_dataset().load()
    b = store.open_book(tmp_path / "odd.zarr")[respelled["instrument"]].to_dataset().load()
    xr_equal = [np.array_equal(a[v].values, b[v].values, equal_nan=True) for v in a.data_vars]
    assert all(xr_equal) and np.array_equal(a.time.values, b.time.values)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="0123456789.-e+ _xn", min_size=1, max_size=24))
def test_decimal_strings_read_as_python_reads_them_or_left_to_python(text):
    from gpu_risk.importers._compiled import _quoted_decimal

    raw = np.frombuffer(f'"{text}"'.encode(), dtype=np.uint8)
    value, ok, end = _quoted_decimal(raw, 0, raw.size)
    assert end == raw.size  # the string is valid JSON: its end is found either way
    if ok:  # the fast path claims it: Python's float() must agree to the bit
        assert float(text) == value and np.signbit(value) == np.signbit(float(text))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**15 - 1), st.integers(0, 22), st.booleans())
def test_decimal_fast_path_is_exact(mantissa, decimals, negative):
    from gpu_risk.importers._compiled import _quoted_decimal

    digits = str(mantissa).rjust(decimals + 1, "0")
    text = ("-" if negative else "") + (digits[:-decimals] + "." + digits[-decimals:] if decimals else digits)
    raw = np.frombuffer(f'"{text}"'.encode(), dtype=np.uint8)
    value, ok, _ = _quoted_decimal(raw, 0, raw.size)
    assert ok and value == float(text)


def test_lines_the_scan_cannot_read_are_named_by_python(tmp_path):
    """Malformed JSON that looks like a depth diff up to its last byte, an unclosed string,
    and a bad escape: each is one error naming the file and line."""
    src = paths("usdm_btc")[0]
    lines = gzip.open(src, "rt").read().splitlines(keepends=True)
    k = next(i for i, line in enumerate(lines) if "depthUpdate" in line and i > 100)
    for broken in (lines[k].rstrip("\n")[:-1] + "\n", lines[k].replace('"depthUpdate"', '"depthUpdate'),
                   lines[k].replace('"e":', '"\\q":', 1)):
        bad = tmp_path / "bad.gz"
        with gzip.open(bad, "wt") as f:
            f.writelines(lines[:k] + [broken] + lines[k + 1:])
        with pytest.raises(InputError, match=f"line {k + 1}"):
            import_binance([bad], 10, tmp_path / f"{abs(hash(broken))}.zarr")


def test_a_book_state_saved_as_json_lists_still_continues(tmp_path):
    """Stores written before the book state was kept as base64 hold it as JSON lists of
    [price, quantity]: the next file continues from either form, exactly."""
    from gpu_risk.importers.binance import STATE_ATTR, _decode_levels

    files = paths("spot_btc")
    together = import_binance(files, 5, tmp_path / "together.zarr", chunk_rows=1000)
    import_binance(files[:1], 5, tmp_path / "old.zarr", chunk_rows=1000)
    node = store.zarr.open_group(str(tmp_path / "old.zarr"), path=together["instrument"], mode="r+")
    saved = dict(node.attrs)[STATE_ATTR]
    assert saved["levels_encoding"] == "float64-le-base64" and len(_decode_levels(saved, "bids")) > 100
    old = {k: v for k, v in saved.items() if k != "levels_encoding"}
    old.update(bids=_decode_levels(saved, "bids").tolist(), asks=_decode_levels(saved, "asks").tolist())
    node.attrs[STATE_ATTR] = old
    second = import_binance(files[1:], 5, tmp_path / "old.zarr", chunk_rows=1000)
    assert second["gaps"] == 0
    import xarray as xr

    a = store.open_book(tmp_path / "together.zarr")[together["instrument"]].to_dataset().load()
    b = store.open_book(tmp_path / "old.zarr")[together["instrument"]].to_dataset().load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())


def test_days_spooled_to_disk_give_the_store_days_held_in_memory(tmp_path, monkeypatch):
    """A day beyond the memory limit is spooled to disk chunk by chunk, and beyond the
    one-pass limit written by the region writer: the same store, array by array and
    attribute by attribute, as a day held in memory."""
    from gpu_risk.importers import _spool

    files = paths("coinm_btc")
    held = import_binance(files, 5, tmp_path / "memory.zarr", chunk_rows=4096)
    monkeypatch.setattr(_spool, "HELD_DAY_BYTES", 200_000)  # a few chunks held, then spilled
    monkeypatch.setattr(_spool, "WHOLE_DAY_BYTES", 400_000)  # and the region writer for the day
    spilled = import_binance(files, 5, tmp_path / "disk.zarr", chunk_rows=4096)
    assert held["snapshots"] == spilled["snapshots"] > 4096 * 2
    import xarray as xr

    for day in held["days"]:
        a = store.open_day_dataset(tmp_path / "memory.zarr", f"{held['instrument']}/{day}").load()
        b = store.open_day_dataset(tmp_path / "disk.zarr", f"{held['instrument']}/{day}").load()
        xr.testing.assert_identical(a, b)


def _store_files(root):
    """Every file under a store: parsed metadata (write ids and seals left out) or bytes."""
    import json as json_

    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "zarr.json":
            data = json_.loads(data)
            for key in ("gpu_risk_write_id", "gpu_risk_sealed_ns"):
                data.get("attributes", {}).pop(key, None)
        out[str(path.relative_to(root))] = data
    return out


@pytest.mark.parametrize("name", ["usdm_btc", "spot_btc"])
def test_days_written_directly_equal_the_xarray_writer(tmp_path, monkeypatch, name):
    """Whole days written by gpu_risk's own writer give the store xarray's writer gives: the
    same files, metadata (parsed) and chunk bytes."""
    from gpu_risk.stores import book

    files = paths(name)
    import_binance(files, 5, tmp_path / "direct.zarr")
    monkeypatch.setattr(book, "DIRECT_WRITES", False)
    import_binance(files, 5, tmp_path / "xarray.zarr")
    direct, written = _store_files(tmp_path / "direct.zarr"), _store_files(tmp_path / "xarray.zarr")
    assert sorted(direct) == sorted(written) and len(direct) > 10
    for key in direct:
        assert direct[key] == written[key], key
