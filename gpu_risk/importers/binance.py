"""Recorded Binance depth streams into a book store.

Input: lines ``<local_ts_ns> <json>`` (gzip or plain), as written by the hftbacktest
collector: combined-stream messages ``{"stream": ..., "data": ...}`` for ``depthUpdate``
diffs, ``bookTicker`` and ``trade``, and the REST depth snapshot (``lastUpdateId``,
``bids``, ``asks``). Several files of one instrument continue one another (e.g. across
midnight) and are read in the order given.

The book is rebuilt as Binance documents it:

* futures (USD-M, COIN-M; diffs carry ``pu``): drop diffs with ``u < lastUpdateId``; the
  first applied diff has ``U <= lastUpdateId <= u``; each next diff must have ``pu`` equal
  to the previous diff's ``u``;
* spot (no ``pu``): drop diffs with ``u <= lastUpdateId``; the first applied diff has
  ``U <= lastUpdateId + 1 <= u``; each next diff must have ``U`` = previous ``u`` + 1.

Diffs that arrived before the snapshot line are buffered and considered in order. A diff
whose ``u`` the book has already passed is *stale* (skipped, counted). A diff that does not
continue the sequence is a *gap*: the book is then unknown, nothing is emitted until a new
REST snapshot re-initialises it, and the gap is reported (count, first file and line) —
never papered over. After each applied diff the top ``levels`` of each side are emitted as
a snapshot at the diff's event time ``E``. Quantity 0 deletes a level. COIN-M quantities
are contracts; they are stored in USD (x the contract size: 100 for BTC, 10 otherwise), as
inverse positions are (docs/data.md).

While rebuilding, every ``bookTicker`` whose update id the book has reached exactly (the
last applied diff has ``u <= id`` and the next diff's ``U > id``, so no diff spans the id)
is compared with the rebuilt best bid and ask (price and quantity).
"""

from __future__ import annotations

import bisect
import gzip
import json
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .. import store
from ..errors import InputError
from ._spool import DaySpool, file_digest, imported_files, record_imported

CONTRACT_USD = {"BTCUSD_PERP": 100.0}
MAX_PENDING_DIFFS = 100_000  # diffs kept while waiting for the first REST snapshot (bounded memory)
DEFAULT_CONTRACT_USD = 10.0


@dataclass
class ImportReport:
    instrument: str = ""
    market: str = ""
    files: list[str] = field(default_factory=list)
    lines: int = 0
    diffs_applied: int = 0
    diffs_before_snapshot: int = 0
    stale_diffs: int = 0
    gaps: int = 0
    first_gap: str | None = None
    snapshots: int = 0
    days: list[str] = field(default_factory=list)
    bookticker_compared: int = 0
    bookticker_agree: int = 0
    first_disagreement: str | None = None
    skipped_files: list[str] = field(default_factory=list)  # imported before (same content)
    diffs_dropped_before_snapshot: int = 0  # beyond MAX_PENDING_DIFFS waiting for a snapshot

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def read_lines(files) -> Iterator[tuple[str, int, int, dict]]:
    """(file, line number, local_ts_ns, message) of every line; a clear error naming the
    file and line for a truncated gzip, a malformed line or malformed JSON."""
    for path in map(Path, files):
        opener = gzip.open if path.suffix == ".gz" else open
        lineno = 0
        try:
            with opener(path, "rt") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    ts, sep, payload = line.partition(" ")
                    try:
                        msg = json.loads(payload)
                        stamp = int(ts)
                    except (ValueError, json.JSONDecodeError) as exc:
                        raise InputError(f"malformed line: {exc}", store=str(path), index=lineno,
                                         label=f"line {lineno}") from exc
                    if not isinstance(msg, dict):
                        raise InputError(f"malformed line: a JSON {type(msg).__name__}, not an object",
                                         store=str(path), index=lineno, label=f"line {lineno}")
                    yield str(path), lineno, stamp, msg
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"cannot read past line {lineno} ({type(exc).__name__}: {exc}); "
                             "truncated or corrupt file?", store=str(path), index=lineno + 1,
                             label=f"line {lineno + 1}") from exc


class Side:
    """One side of the book: price -> quantity, with prices kept sorted (best first)."""

    def __init__(self, descending: bool):
        self.sign = -1.0 if descending else 1.0
        self.qty: dict[float, float] = {}
        self.keys: list[float] = []  # sign * price, ascending

    def clear(self):
        self.qty.clear()
        self.keys.clear()

    def set(self, price: float, qty: float):
        if qty == 0.0:
            if price in self.qty:
                del self.qty[price]
                i = bisect.bisect_left(self.keys, self.sign * price)
                del self.keys[i]
            return
        if price not in self.qty:
            bisect.insort(self.keys, self.sign * price)
        self.qty[price] = qty

    def top(self, levels: int, scale: float, prices: np.ndarray, sizes: np.ndarray):
        prices[:] = np.nan
        sizes[:] = 0.0
        for i, key in enumerate(self.keys[:levels]):
            price = self.sign * key
            prices[i] = price
            sizes[i] = self.qty[price] * scale


def import_binance(files, levels: int, out, instrument: str | None = None,
                   chunk_rows: int = store.BOOK_CHUNK_ROWS) -> dict:
    """Rebuild the book from recorded depth streams and write its top ``levels`` per snapshot.
    Returns the :class:`ImportReport` as a dict."""
    if levels < 1:
        raise ValueError("levels must be >= 1")
    report = ImportReport(files=[str(f) for f in files])
    # a file imported before (the same bytes) is recognised and skipped: replaying its diffs
    # over the saved book would only find them stale and lose the book's state
    digests = {str(f): file_digest(f) for f in files}
    done = imported_files(out)
    report.skipped_files = [str(f) for f in files if digests[str(f)] in done]
    files = [f for f in files if digests[str(f)] not in done]
    if not files:
        return report.as_dict()
    bids, asks = Side(descending=True), Side(descending=False)
    state = {"ready": False, "last_u": None, "snapshot_id": None}
    # diffs seen before the first REST snapshot, at most MAX_PENDING_DIFFS (the oldest go
    # first: a snapshot taken later than that would not be covered, and is reported as a gap)
    pending: deque[tuple[str, int, dict]] = deque(maxlen=MAX_PENDING_DIFFS)
    tickers: list[tuple[str, int, dict]] = []  # bookTickers waiting for the next diff's U
    scale = 1.0
    row = np.empty((4, levels, 1))
    spool: DaySpool | None = None

    def compare_tickers(next_first_id):
        """Tickers with last_u <= id < next diff's U see exactly the current book."""
        keep = []
        base = state["last_u"] if state["last_u"] is not None else state["snapshot_id"]
        for where, line, t in tickers:
            tid = t["u"]
            if not state["ready"] or tid < base:
                continue  # the book has passed it (or is unknown): not comparable
            if next_first_id is not None and tid >= next_first_id:
                keep.append((where, line, t))
                continue
            report.bookticker_compared += 1
            bb = bids.keys[0] * bids.sign if bids.keys else np.nan
            ba = asks.keys[0] * asks.sign if asks.keys else np.nan
            ok = (bb == float(t["b"]) and ba == float(t["a"])
                  and bids.qty.get(bb, 0.0) == float(t["B"]) and asks.qty.get(ba, 0.0) == float(t["A"]))
            if ok:
                report.bookticker_agree += 1
            elif report.first_disagreement is None:
                report.first_disagreement = (f"{where}:{line} bookTicker u={tid}: ticker "
                                             f"{t['b']}x{t['B']} / {t['a']}x{t['A']}, book {bb}x"
                                             f"{bids.qty.get(bb)} / {ba}x{asks.qty.get(ba)}")
        tickers[:] = keep

    def apply(where, line, d, futures):
        missing = [k for k in ("U", "u", "E", "b", "a") + (("pu",) if futures else ()) if k not in d]
        if missing:
            raise InputError(f"depthUpdate without {', '.join(missing)}", store=where, index=line,
                             label=f"line {line}")
        U, u = d["U"], d["u"]
        if not state["ready"]:
            return
        last = state["last_u"]
        if last is None:  # first diff after the snapshot
            sid = state["snapshot_id"]
            if (futures and u < sid) or (not futures and u <= sid):
                report.stale_diffs += 1
                return
            first_ok = (U <= sid <= u) if futures else (U <= sid + 1 <= u)
            if not first_ok:
                _gap(where, line, f"first diff U={U} u={u} does not cover snapshot {sid}")
                return
        else:
            if u <= last:
                report.stale_diffs += 1
                return
            continues = (d.get("pu") == last) if futures else (U == last + 1)
            if not continues:
                _gap(where, line, f"expected {'pu' if futures else 'U'}={last if futures else last + 1}, "
                                  f"got {d.get('pu') if futures else U}")
                return
        compare_tickers(U)
        for price, qty in d["b"]:
            bids.set(float(price), float(qty))
        for price, qty in d["a"]:
            asks.set(float(price), float(qty))
        state["last_u"] = u
        report.diffs_applied += 1
        bids.top(levels, scale, row[0, :, 0], row[1, :, 0])
        asks.top(levels, scale, row[2, :, 0], row[3, :, 0])
        spool.add(np.array([int(d["E"]) * 1_000_000], dtype=np.int64), row.transpose(0, 2, 1),
                  where=f"{where}:{line}")

    def _gap(where, line, why):
        report.gaps += 1
        if report.first_gap is None:
            report.first_gap = f"{where}:{line}: {why}"
        state["ready"] = False  # unknown until the next REST snapshot
        tickers.clear()

    try:
        for where, line, _ts, msg in read_lines(files):
            report.lines += 1
            if "lastUpdateId" in msg:  # REST snapshot: (re)initialise the book
                bids.clear()
                asks.clear()
                for price, qty in msg["bids"]:  # quantities as recorded; scaled on output
                    bids.set(float(price), float(qty))
                for price, qty in msg["asks"]:
                    asks.set(float(price), float(qty))
                state.update(ready=True, last_u=None, snapshot_id=msg["lastUpdateId"])
                futures = report.market != "spot"
                report.diffs_before_snapshot += len(pending)
                for w, ln, d in pending:
                    apply(w, ln, d, futures)
                pending.clear()
                continue
            data = msg.get("data", msg)
            stream = msg.get("stream", "")
            if data.get("e") == "depthUpdate":
                if not report.instrument:
                    futures = "pu" in data
                    symbol = data["s"]
                    report.market = ("coinm" if "ps" in data else "usdm") if futures else "spot"
                    report.instrument = instrument or (symbol if futures else f"{symbol}_SPOT")
                    if report.market == "coinm":
                        scale = CONTRACT_USD.get(symbol, DEFAULT_CONTRACT_USD)
                    attrs = {"source": "Binance " + report.market + " depth stream",
                             "size_units": "USD" if report.market == "coinm" else "base units"}
                    spool = DaySpool(out, report.instrument, levels, chunk_rows, attrs)
                    saved = _load_state(out, report.instrument)
                    if saved is not None and state["snapshot_id"] is None:
                        _restore(saved, bids, asks, state, report)
                if not state["ready"]:
                    if state["snapshot_id"] is None:
                        if len(pending) == MAX_PENDING_DIFFS:
                            report.diffs_dropped_before_snapshot += 1
                        pending.append((where, line, data))
                    continue
                apply(where, line, data, report.market != "spot")
            elif "bookTicker" in stream or data.get("e") == "bookTicker":
                tickers.append((where, line, data))
        compare_tickers(None)
        if spool is None:
            raise InputError("no depthUpdate diff in the files: nothing to import" if report.lines else
                             "the files hold no line: nothing to import", store=str(files[0]))
        if state["snapshot_id"] is None:
            raise InputError("no REST depth snapshot (lastUpdateId) in the files", store=str(files[0]))
    except BaseException:
        if spool is not None:
            spool.discard()  # complete days already written stay; the partial day never appears
        raise
    report.snapshots, report.days = spool.close()
    if not Path(str(out)).exists() or report.instrument not in store.child_groups(out):
        return report.as_dict()  # nothing was ever written (a gap throughout): nothing to keep
    if report.snapshots or _load_state(out, report.instrument) is None:
        # a file that added nothing (all stale, or a gap throughout) leaves the book's state
        # as it was, so that the next file continues from the last good one
        _save_state(out, report.instrument, bids, asks, state, report.market)
    record_imported(out, {digests[str(f)]: {"file": Path(str(f)).name, "instrument": report.instrument}
                          for f in files})
    return report.as_dict()


STATE_ATTR = "binance_book_state"


def _save_state(out, instrument, bids: Side, asks: Side, state: dict, market: str) -> None:
    """The whole book after the last applied diff, kept with the instrument so that a later
    file (the next day's capture, without a REST snapshot) continues it."""
    value = {"market": market, "ready": bool(state["ready"]), "last_u": state["last_u"],
             "snapshot_id": state["snapshot_id"],
             "bids": [[p, q] for p, q in bids.qty.items()], "asks": [[p, q] for p, q in asks.qty.items()]}
    zarr.open_group(str(out), path=instrument, mode="r+", zarr_format=3).attrs[STATE_ATTR] = value


def _load_state(out, instrument):
    if not Path(str(out)).exists() or instrument not in store.child_groups(out):
        return None
    return zarr.open_group(str(out), path=instrument, mode="r", zarr_format=3).attrs.get(STATE_ATTR)


def _restore(saved: dict, bids: Side, asks: Side, state: dict, report: ImportReport) -> None:
    if saved["market"] != report.market:
        raise InputError(f"the store's {report.instrument} comes from a {saved['market']} stream, "
                         f"these files are {report.market}", instrument=report.instrument)
    if not saved["ready"]:
        return  # the stored book ended in a gap: only a REST snapshot can restart it
    bids.clear()
    asks.clear()
    for p, q in saved["bids"]:
        bids.set(float(p), float(q))
    for p, q in saved["asks"]:
        asks.set(float(p), float(q))
    state.update(ready=True, last_u=saved["last_u"], snapshot_id=saved["snapshot_id"])
