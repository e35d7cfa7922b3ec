"""The Tardis importer: the shared samples row by row, and larger files built from the
shared Binance capture in both Tardis layouts, which must give the books the Binance
importer rebuilds from the same messages."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_risk import store
from gpu_risk.errors import InputError
from gpu_risk.importers.binance import import_binance
from gpu_risk.importers.tardis import import_tardis

REAL = Path(__file__).resolve().parents[2] / "shared/data/real"
SNAPSHOT_5 = REAL / "tardis/binance-futures_book_snapshot_5_BTCUSDT.csv"
INCREMENTAL = REAL / "tardis/deribit_incremental_book_L2_BTC-PERPETUAL.csv"
USDM = REAL / "binance_hftbacktest_feed/usdm/btcusdt_20240808.gz"


def need(*paths):
    if not all(p.exists() for p in paths):
        pytest.skip("shared samples not present")


def test_the_shared_samples_match_their_rows(tmp_path):
    need(SNAPSHOT_5, INCREMENTAL)
    report = import_tardis([SNAPSHOT_5], tmp_path / "s.zarr")
    assert report["layout"] == "snapshot" and report["instruments"]["BTCUSDT"]["snapshots"] == 10
    got = store.open_book(tmp_path / "s.zarr", "BTCUSDT")["BTCUSDT"].to_dataset().load()
    raw = pd.read_csv(SNAPSHOT_5)
    for var, column in (("bid_price", "bids[{}].price"), ("bid_size", "bids[{}].amount"),
                        ("ask_price", "asks[{}].price"), ("ask_size", "asks[{}].amount")):
        np.testing.assert_array_equal(got[var].values, raw[[column.format(i) for i in range(5)]].values)
    np.testing.assert_array_equal(got.time.values.astype("datetime64[us]").astype(np.int64), raw.timestamp.values)

    report = import_tardis([INCREMENTAL], tmp_path / "i.zarr", levels=20)
    book = store.open_book(tmp_path / "i.zarr", "BTC-PERPETUAL")["BTC-PERPETUAL"].to_dataset().load()
    raw = pd.read_csv(INCREMENTAL).sort_values("price")  # one snapshot message: 15 ask levels
    assert report["instruments"]["BTC-PERPETUAL"]["snapshots"] == 1 and book.sizes["time"] == 1
    np.testing.assert_array_equal(book.ask_price.values[0, :15], raw.price.values)
    np.testing.assert_array_equal(book.ask_size.values[0, :15], raw.amount.values)
    assert np.isnan(book.ask_price.values[0, 15:]).all() and np.isnan(book.bid_price.values).all()


def _binance_as_tardis(src: Path, out: Path) -> int:
    """The REST snapshot and every diff Binance's rules apply, written as Tardis
    incremental_book_L2 rows (the snapshot stamped with the first applied diff's time);
    returns the number of applied diffs."""
    lines = [line.split(" ", 1) for line in gzip.open(src, "rt")]
    msgs = [(int(ts), json.loads(body)) for ts, body in lines]
    snap_ts, snap = next((ts, m) for ts, m in msgs if "lastUpdateId" in m)
    sid, last, rows, applied = snap["lastUpdateId"], None, [], []
    for ts, m in msgs:
        d = m.get("data", {})
        if d.get("e") != "depthUpdate":
            continue
        if last is None:
            if d["u"] < sid or not d["U"] <= sid <= d["u"]:
                continue
        elif d["pu"] != last:
            raise AssertionError("the capture has a gap")
        last = d["u"]
        applied.append((ts, d))
    first_e = applied[0][1]["E"] * 1000
    for side, key in (("bid", "bids"), ("ask", "asks")):
        rows += [("binance-futures", "BTCUSDT", first_e, snap_ts // 1000 - 1, "true", side, p, q)
                 for p, q in snap[key] if float(q) > 0]
    for ts, d in applied:
        for side, key in (("bid", "b"), ("ask", "a")):
            rows += [("binance-futures", "BTCUSDT", d["E"] * 1000, ts // 1000, "false", side, p, q)
                     for p, q in d[key]]
    pd.DataFrame(rows, columns=["exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side",
                                "price", "amount"]).to_csv(out, index=False)
    return len(applied)


def test_a_binance_capture_in_both_tardis_layouts_gives_the_binance_books(tmp_path):
    """6,547 messages of USD-M BTCUSDT: as incremental_book_L2 (about 400,000 rows, gzip)
    the importer rebuilds, after each message, the book the Binance importer rebuilds after
    each diff; those books written as book_snapshot_10 import back to the same store."""
    need(USDM)
    import_binance([USDM], 10, tmp_path / "binance.zarr")
    want = store.open_book(tmp_path / "binance.zarr", "BTCUSDT", validate=False)["BTCUSDT"].to_dataset().load()
    plain = tmp_path / "usdm_incremental_book_L2.csv"
    applied = _binance_as_tardis(USDM, plain)
    packed = tmp_path / "usdm_incremental_book_L2.csv.gz"
    with open(plain, "rb") as f, gzip.open(packed, "wb") as g:
        g.write(f.read())
    report = import_tardis([packed], tmp_path / "tardis.zarr", levels=10, chunk_rows=50_000)
    got = store.open_book(tmp_path / "tardis.zarr", "BTCUSDT", validate=False)["BTCUSDT"].to_dataset().load()
    assert report["resets"] == 0 and report["rows_before_snapshot"] == 0
    assert got.sizes["time"] == applied + 1 == want.sizes["time"] + 1  # + the snapshot message itself
    for var in ("bid_price", "bid_size", "ask_price", "ask_size", "time"):
        np.testing.assert_array_equal(got[var].values[1:], want[var].values, err_msg=var)
    # the same books as book_snapshot_10 rows, in two files split across midnight
    frame = {"exchange": "binance-futures", "symbol": "BTCUSDT",
             "timestamp": want.time.values.astype("datetime64[us]").astype(np.int64)}
    frame["local_timestamp"] = frame["timestamp"] + 5
    for i in range(10):
        for side in ("ask", "bid"):
            frame[f"{side}s[{i}].price"] = want[f"{side}_price"].values[:, i]
            frame[f"{side}s[{i}].amount"] = np.where(np.isnan(want[f"{side}_price"].values[:, i]), np.nan,
                                                     want[f"{side}_size"].values[:, i])
    table = pd.DataFrame(frame)
    half = len(table) // 2
    parts = [tmp_path / "a.csv", tmp_path / "b.csv"]
    table.iloc[:half].to_csv(parts[0], index=False)
    table.iloc[half:].to_csv(parts[1], index=False)
    import_tardis(parts, tmp_path / "snap.zarr", chunk_rows=1000)
    back = store.open_book(tmp_path / "snap.zarr", "BTCUSDT", validate=False)["BTCUSDT"].to_dataset().load()
    for var in ("bid_price", "bid_size", "ask_price", "ask_size", "time"):
        np.testing.assert_array_equal(back[var].values, want[var].values, err_msg=var)


def test_resets_updates_before_a_snapshot_and_bad_rows(tmp_path):
    head = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n"
    rows = ["x,AAA,1000,1001,false,bid,9,1",  # before any snapshot: skipped, counted
            "x,AAA,2000,2001,true,bid,10,1", "x,AAA,2000,2001,true,ask,11,2",
            "x,AAA,3000,3001,false,bid,10.5,3",
            "x,AAA,4000,4001,true,bid,20,1", "x,AAA,4000,4001,true,ask,21,1",  # a reset
            "x,AAA,5000,5001,false,ask,21,0"]  # deletes the only ask
    (tmp_path / "l2.csv").write_text(head + "\n".join(rows) + "\n")
    report = import_tardis([tmp_path / "l2.csv"], tmp_path / "b.zarr", levels=2)
    assert report["resets"] == 1 and report["rows_before_snapshot"] == 1
    book = store.open_book(tmp_path / "b.zarr", "AAA")["AAA"].to_dataset().load()
    np.testing.assert_array_equal(book.bid_price.values[:, 0], [10, 10.5, 20, 20])
    np.testing.assert_array_equal(book.ask_price.values[:, 0], [11, 11, 21, np.nan])
    np.testing.assert_array_equal(book.bid_size.values[1], [3, 1])
    # the same file again: recognised, skipped
    assert import_tardis([tmp_path / "l2.csv"], tmp_path / "b.zarr")["skipped_files"] == [str(tmp_path / "l2.csv")]
    # malformed: a header of another layout, an is_snapshot that is no boolean, time backwards
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(InputError, match="not a Tardis CSV"):
        import_tardis([tmp_path / "bad.csv"], tmp_path / "c.zarr")
    (tmp_path / "flag.csv").write_text(head + "x,AAA,1000,1001,maybe,bid,9,1\n")
    with pytest.raises(InputError, match="is_snapshot 'maybe'") as info:
        import_tardis([tmp_path / "flag.csv"], tmp_path / "c.zarr")
    assert info.value.index == 2
    (tmp_path / "back.csv").write_text(head + "x,AAA,5000,1,true,bid,9,1\nx,AAA,4000,2,false,bid,9,2\n")
    with pytest.raises(InputError, match="event time goes backwards at .*back.csv:3") as info:
        import_tardis([tmp_path / "back.csv"], tmp_path / "d.zarr")
    assert info.value.index == 3  # the line of the message that went back
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "d.zarr").exists()


def test_the_command_line(tmp_path):
    import subprocess
    import sys

    need(SNAPSHOT_5)
    done = subprocess.run([sys.executable, "-m", "gpu_risk.cli", "import", "tardis", str(SNAPSHOT_5),
                           "--out", str(tmp_path / "t.zarr"), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["instruments"]["BTCUSDT"]["snapshots"] == 10
    assert store.book_days(tmp_path / "t.zarr") == {"BTCUSDT": ["2020-09-01"]}


def test_derivative_tickers_become_a_market_history(tmp_path):
    """Two symbols over two UTC days, empty fields included: the market history holds every
    row, day by day, each field as written; the same file again is skipped; a time going
    backwards is an error naming the line."""
    import gpu_risk

    head = ("exchange,symbol,timestamp,local_timestamp,funding_timestamp,funding_rate,predicted_funding_rate,"
            "open_interest,last_price,index_price,mark_price\n")
    rng = np.random.default_rng(3)
    start = 1_598_918_400_000_000 - 3_600_000_000  # 2020-08-31 23:00 UTC, in microseconds
    rows = []
    for k in range(400):
        for symbol, price in (("BTCUSDT", 11_650.0), ("ETHUSDT", 430.0)):
            t = start + k * 18_000_000 + (7 if symbol == "ETHUSDT" else 0)
            values = [start + 8 * 3_600_000_000, rng.normal(1e-4, 1e-5), rng.normal(1e-4, 1e-5),
                      rng.uniform(1e5, 2e5), price + rng.normal(), price + rng.normal(), price + rng.normal()]
            fields = ["" if (k % 50 == 0 and i == 3) else repr(float(v)) for i, v in enumerate(values)]
            rows.append(f"binance-futures,{symbol},{t},{t + 100}," + ",".join(fields))
    path = tmp_path / "derivative_ticker.csv"
    path.write_text(head + "\n".join(rows) + "\n")
    report = import_tardis([path], tmp_path / "history.zarr", chunk_rows=97)
    assert report["layout"] == "derivative_ticker"
    assert report["instruments"]["BTCUSDT"] == {"updates": 400, "days": ["2020-08-31", "2020-09-01"]}
    history = gpu_risk.open_market_history(tmp_path / "history.zarr")
    raw = pd.read_csv(path)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        got = history[symbol].to_dataset().load()
        want = raw[raw.symbol == symbol]
        np.testing.assert_array_equal(got.time.values.astype("datetime64[us]").astype(np.int64), want.timestamp)
        for name in ("funding_rate", "predicted_funding_rate", "open_interest", "last_price", "index_price",
                     "mark_price"):
            np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
        assert np.isnan(got.open_interest.values[::50]).all() and got.open_interest.attrs["units"]
    assert import_tardis([path], tmp_path / "history.zarr")["skipped_files"] == [str(path)]
    back = tmp_path / "back.csv"
    back.write_text(head + rows[10] + "\n" + rows[0] + "\n")
    with pytest.raises(InputError, match="time goes backwards") as info:
        import_tardis([back], tmp_path / "other.zarr")
    assert info.value.index == 3


def _sequential_books(rows: list[tuple], levels: int) -> dict:
    """Plain reference: rows applied one by one to dict books, a message emitted when the
    next begins; a snapshot run after updates resets. symbol -> list of (t, bids, asks)."""
    books, out, pending, in_snap = {}, {}, {}, {}
    for sym, ts, local, snap, side, price, amount in rows + [(None, None, None, None, None, None, None)]:
        for s in list(pending):
            if sym is None or (s == sym and pending[s] != (ts, local)):
                bids, asks = books[s]
                top_b = sorted(bids, reverse=True)[:levels]
                top_a = sorted(asks)[:levels]
                out.setdefault(s, []).append((pending[s][0], [(p, bids[p]) for p in top_b],
                                              [(p, asks[p]) for p in top_a]))
                del pending[s]
        if sym is None:
            break
        if snap and not in_snap.get(sym, False):
            books[sym] = ({}, {})
        in_snap[sym] = snap
        if sym not in books:
            continue
        book = books[sym][0 if side == "bid" else 1]
        if amount == 0:
            book.pop(price, None)
        else:
            book[price] = amount
        pending[sym] = (ts, local)
    return out


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 17, 10_000]))
def test_random_incremental_files_match_a_row_by_row_reference(tmp_path_factory, seed, chunk_rows):
    """Random messages of two symbols interleaved (repeated prices within a message,
    deletions of absent levels, resets, rows before the first snapshot), read in blocks of
    any size: the books equal a dict-per-row reference at every message."""
    rng = np.random.default_rng(seed)
    rows, t = [], 1_000
    for _ in range(int(rng.integers(5, 40))):
        sym = str(rng.choice(["AAA", "BBB"]))
        t += int(rng.integers(1, 3))
        snap = bool(rng.random() < 0.15)
        for _ in range(int(rng.integers(1, 8))):
            side = "bid" if rng.random() < 0.5 else "ask"
            price = float(rng.integers(1, 12)) + (0.0 if side == "bid" else 20.0)
            rows.append((sym, t, t + 5, snap, side, price, float(rng.integers(0, 3))))
    tmp = tmp_path_factory.mktemp("l2")
    text = "exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount\n" + "".join(
        f"x,{s},{ts},{lo},{str(sn).lower()},{sd},{p},{a}\n" for s, ts, lo, sn, sd, p, a in rows)
    (tmp / "l2.csv").write_text(text)
    expected = _sequential_books(rows, 3)
    if not expected:
        return
    import_tardis([tmp / "l2.csv"], tmp / "b.zarr", levels=3, chunk_rows=chunk_rows)
    stored = store.open_book(tmp / "b.zarr", validate=False)
    for sym, snaps in expected.items():
        ds = stored[sym].to_dataset().load()
        assert ds.sizes["time"] == len(snaps)
        for i, (ts, bids, asks) in enumerate(snaps):
            assert ds.time.values[i] == np.datetime64(ts * 1000, "ns")
            for prices, sizes, side in ((ds.bid_price, ds.bid_size, bids), (ds.ask_price, ds.ask_size, asks)):
                np.testing.assert_array_equal(prices.values[i, :len(side)], [p for p, _ in side])
                np.testing.assert_array_equal(sizes.values[i, :len(side)], [q for _, q in side])
                assert np.isnan(prices.values[i, len(side):]).all()
