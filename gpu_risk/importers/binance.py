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

import base64
import gzip
import json
import math
import queue
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from isal import igzip, isal_zlib

from .. import store
from ..errors import InputError
from . import _compiled as fast
from ._spool import DaySpool, file_digest, imported_files, record_imported

CONTRACT_USD = {"BTCUSD_PERP": 100.0}
MAX_PENDING_DIFFS = 100_000  # diffs kept while waiting for the first REST snapshot (bounded memory)
DEFAULT_CONTRACT_USD = 10.0
BLOCK_BYTES = 1 << 20  # decompressed bytes scanned at a time: small blocks keep the two threads overlapped
LINE_BITS = 40  # a line's position: file index << LINE_BITS | line number
ISAL_ERROR = cast(type[Exception], isal_zlib.error)  # what ISA-L raises for corrupt deflate data


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


def read_blocks(path: Path):
    """(bytes of whole lines, number of lines) of a gzip or plain file, BLOCK_BYTES at a
    time; a clear error naming the file and line for a truncated or corrupt gzip."""
    opener = igzip.open if path.suffix == ".gz" else open
    lines = 0
    rest = b""
    try:
        with opener(path, "rb") as f:
            while True:
                block = f.read(BLOCK_BYTES)
                if not block:
                    break
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest += block
                    continue
                # one copy into the block's bytes (slicing, then adding, copied it twice)
                data = b"".join((rest, memoryview(block)[:cut + 1]))
                rest = block[cut + 1:]
                n = data.count(b"\n")
                yield data, n
                lines += n
    except (EOFError, OSError, zlib.error, ISAL_ERROR, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read past line {lines} ({type(exc).__name__}: {exc}); "
                         "truncated or corrupt file?", store=str(path), index=lines + 1,
                         label=f"line {lines + 1}") from exc
    if rest:
        yield rest, 1


def _scanned(path: Path, ahead: int = 2):
    """(bytes, lines, their _Scan) of each block of ``path``, read and scanned by a second
    thread up to ``ahead`` blocks in advance; its errors arrive in their place."""
    done = object()
    blocks: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    # scans handed back by the consuming thread once it is done with their block: their
    # arrays are reused (fresh ones, a few MB a block, cost more in page faults than the
    # scan itself on small files)
    free: queue.SimpleQueue = queue.SimpleQueue()

    def produce() -> None:
        try:
            for data, n_lines in read_blocks(path):
                # the first half is scanned here, the second by the consuming thread (whose
                # book rebuilding alone would leave it idle half the time)
                cut = data.find(b"\n", len(data) // 2) + 1
                halves = [(data[:cut], data.count(b"\n", 0, cut)), (data[cut:], None)] if 0 < cut < len(data) \
                    else [(data, n_lines)]
                if len(halves) == 2:
                    halves[1] = (halves[1][0], n_lines - halves[0][1])
                try:
                    scan = free.get_nowait()
                except queue.Empty:
                    scan = _Scan()
                first = (halves[0][0], scan.scan(halves[0][0], halves[0][1]), scan)
                if not hand_over(first):
                    return
                if len(halves) == 2 and not hand_over((halves[1][0], halves[1][1], None)):
                    return
            blocks.put(done)
        except BaseException as exc:  # handed over, raised where the block would have been
            blocks.put(exc)

    thread = threading.Thread(target=produce, name="gpu-risk-binance-scan", daemon=True)
    thread.start()
    own = _Scan()  # this thread's halves, one after the other
    try:
        while True:
            item = blocks.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            data, n, scan = item
            if scan is None:  # this thread's half
                n = own.scan(data, n)
                yield data, n, own
            else:
                yield data, n, scan
                free.put(scan)  # the block is done with: its scan goes back to the producer
    finally:
        stop.set()
        thread.join()


class _Scan:
    """Per-block arrays of the compiled scan, grown as blocks need."""

    def __init__(self):
        self.lines = self.levels = 0

    def fit(self, n_lines: int, n_levels: int) -> None:
        if n_lines > self.lines:
            self.lines = max(n_lines, 2 * self.lines)
            n = self.lines
            self.kind = np.empty(n, dtype=np.int8)
            self.line_start, self.line_end = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
            self.event, self.first_id = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            self.last_id, self.prev_id = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
            self.has_prev = np.zeros(n, dtype=np.int64)
            self.bid_range, self.ask_range = np.zeros((n, 2), dtype=np.int64), np.zeros((n, 2), dtype=np.int64)
            self.ticker = np.zeros((n, 4))
            self.pos = np.zeros(n, dtype=np.int64)
        if n_levels > self.levels:
            self.levels = max(n_levels, 2 * self.levels)
            self.prices, self.quantities = np.empty(self.levels), np.empty(self.levels)

    def scan(self, data: bytes, n_lines: int) -> int:
        reused = self.lines >= n_lines
        self.fit(n_lines, len(data) // 9 + 1)  # a level takes at least 9 bytes: ["1","1"]
        if reused:  # as fresh arrays are: zero where fit makes zeros
            for a in (self.event, self.first_id, self.last_id, self.prev_id, self.has_prev, self.bid_range,
                      self.ask_range, self.ticker, self.pos):
                a[:n_lines] = 0
        buf = np.frombuffer(data, dtype=np.uint8)
        return fast.scan_binance(buf, n_lines, self.kind, self.line_start, self.line_end, self.event,
                                 self.first_id, self.last_id, self.prev_id, self.has_prev, self.bid_range,
                                 self.ask_range, self.prices, self.quantities, self.ticker)

    def arrays(self):
        return (self.kind, self.pos, self.event, self.first_id, self.last_id, self.prev_id, self.has_prev,
                self.bid_range, self.ask_range, self.prices, self.quantities, self.ticker)


def _diff_arrays(diffs: list[tuple[int, dict]]):
    """The scan's arrays for depth diffs already read as dicts (the Python path)."""
    n = len(diffs)
    kind = np.full(n, fast.DIFF, dtype=np.int8)
    pos, event, first_id, last_id, prev_id, has_prev = (np.zeros(n, dtype=np.int64) for _ in range(6))
    bid_range, ask_range = np.zeros((n, 2), dtype=np.int64), np.zeros((n, 2), dtype=np.int64)
    prices: list[float] = []
    quantities: list[float] = []
    for i, (where, d) in enumerate(diffs):
        pos[i], event[i], first_id[i], last_id[i] = where, int(d["E"]), int(d["U"]), int(d["u"])
        prev_id[i], has_prev[i] = int(d.get("pu", 0)), int("pu" in d)
        for ranges, key in ((bid_range, "b"), (ask_range, "a")):
            ranges[i, 0] = len(prices)
            for price, qty in d[key]:
                prices.append(float(price))
                quantities.append(float(qty))
            ranges[i, 1] = len(prices)
    return (kind, pos, event, first_id, last_id, prev_id, has_prev, bid_range, ask_range,
            np.array(prices, dtype=np.float64), np.array(quantities, dtype=np.float64), np.zeros((n, 4)))


class _Rebuild:
    """The book, the sequencing state and the tickers waiting, shared by the compiled loop
    and the Python path (which reads the lines the scan leaves to it)."""

    def __init__(self, report: ImportReport, files, out, levels: int, chunk_rows: int, instrument):
        self.report, self.files, self.out, self.levels = report, [str(f) for f in files], out, levels
        self.chunk_rows, self.instrument = chunk_rows, instrument
        self.book = fast.SortedBook()
        self.state = np.zeros(fast.STATE_SIZE, dtype=np.int64)
        self.counters = np.zeros(fast.COUNTERS_SIZE, dtype=np.int64)
        self.counters[[fast.C_GAP_POS, fast.C_DIS_POS]] = -1
        self.tq_id, self.tq_pos = np.zeros(1024, dtype=np.int64), np.zeros(1024, dtype=np.int64)
        self.tq_values = np.zeros((1024, 4))
        self.dis_values = np.zeros(8)
        self.scale = 1.0
        self.out_time = self.out_pos = np.empty(0, dtype=np.int64)
        self.out_block = np.empty((4, 0, levels))
        self.spool: DaySpool | None = None
        # diffs seen before the first REST snapshot, at most MAX_PENDING_DIFFS (the oldest go
        # first: a snapshot taken later than that would not be covered, and is reported as a gap)
        self.pending: deque[tuple[int, dict]] = deque(maxlen=MAX_PENDING_DIFFS)

    def where(self, pos: int) -> str:
        return f"{self.files[pos >> LINE_BITS]}:{pos & ((1 << LINE_BITS) - 1)}"

    def reserve_tickers(self, extra: int) -> None:
        need = int(self.state[fast.S_TICKERS]) + extra
        if need > self.tq_id.size:
            size = max(need, 2 * self.tq_id.size)
            self.tq_id = np.resize(self.tq_id, size)
            self.tq_pos = np.resize(self.tq_pos, size)
            self.tq_values = np.resize(self.tq_values, (size, 4))

    def run(self, arrays, start: int, stop: int, n_levels: int) -> tuple[int, int]:
        """The compiled loop over lines start:stop; its snapshots go to the spool."""
        kind = arrays[0]
        self.book.reserve(n_levels)
        self.reserve_tickers(int(np.count_nonzero(kind[start:stop] == fast.TICKER)))
        room = stop - start
        if self.out_time.size < room:  # kept between calls: one allocation per size, not per call
            self.out_time, self.out_pos = np.empty(room, dtype=np.int64), np.empty(room, dtype=np.int64)
            self.out_block = np.empty((4, room, self.levels))
        out_time, out_pos, out_block = self.out_time, self.out_pos, self.out_block
        self.counters[fast.C_OUT] = 0
        b = self.book
        stopped, why = fast.binance_run(
            start, stop, *arrays, self.state, self.counters, self.tq_id, self.tq_values, self.tq_pos,
            self.dis_values, *b.parts(), self.levels, self.scale,
            out_time, out_pos, out_block)
        r = int(self.counters[fast.C_OUT])
        if r:
            self.emit(out_time[:r], out_pos[:r], out_block[:, :r])
        return stopped, why

    def emit(self, time_ns, pos, block) -> None:
        """To the spool; time going backwards names the line of the diff that did it."""
        assert self.spool is not None
        previous = self.spool.last_added_ns
        back = np.flatnonzero(np.diff(time_ns) < 0)
        bad = 0 if previous is not None and time_ns[0] < previous else (int(back[0]) + 1 if back.size else -1)
        self.spool.add(time_ns, block, where=self.where(int(pos[bad])) if bad >= 0 else None)

    def run_dicts(self, diffs: list[tuple[int, dict]]) -> None:
        """Apply diffs read by the Python path (after checking their fields)."""
        futures = self.report.market != "spot"
        for where, d in diffs:
            missing = [k for k in ("U", "u", "E", "b", "a") + (("pu",) if futures else ()) if k not in d]
            if missing:
                raise InputError(f"depthUpdate without {', '.join(missing)}", store=self.where(where).rsplit(":", 1)[0],
                                 index=where & ((1 << LINE_BITS) - 1), label=f"line {where & ((1 << LINE_BITS) - 1)}")
            _check_diff(d, self.where(where))
        arrays = _diff_arrays(diffs)
        self.run(arrays, 0, len(diffs), arrays[9].size)

    def start_instrument(self, data: dict) -> None:
        report = self.report
        futures = "pu" in data
        symbol = data["s"]
        report.market = ("coinm" if "ps" in data else "usdm") if futures else "spot"
        report.instrument = self.instrument or (symbol if futures else f"{symbol}_SPOT")
        if report.market == "coinm":
            self.scale = CONTRACT_USD.get(symbol, DEFAULT_CONTRACT_USD)
        attrs = {"source": "Binance " + report.market + " depth stream",
                 "size_units": "USD" if report.market == "coinm" else "base units"}
        self.spool = DaySpool(self.out, report.instrument, self.levels, self.chunk_rows, attrs)
        self.state[fast.S_INSTRUMENT] = 1
        self.state[fast.S_FUTURES] = int(report.market != "spot")
        saved = _load_state(self.out, report.instrument)
        if saved is not None and not self.state[fast.S_HAS_SID]:
            _restore(saved, self.book, self.state, report)

    def python_line(self, pos: int, text: str) -> None:
        """One line the scan left to Python: read with ``json`` and handled as before."""
        where = self.where(pos)
        path, line = where.rsplit(":", 1)
        if not text.strip():
            self.report.lines -= 1
            return
        ts, _, payload = text.partition(" ")
        try:
            msg = json.loads(payload)
            int(ts)
        except (ValueError, json.JSONDecodeError) as exc:
            raise InputError(f"malformed line: {exc}", store=path, index=int(line), label=f"line {line}") from exc
        if not isinstance(msg, dict):
            raise InputError(f"malformed line: a JSON {type(msg).__name__}, not an object", store=path,
                             index=int(line), label=f"line {line}")
        state, report = self.state, self.report
        if "lastUpdateId" in msg:  # REST snapshot: (re)initialise the book
            try:
                bids = [(float(p), float(q)) for p, q in msg["bids"]]
                asks = [(float(p), float(q)) for p, q in msg["asks"]]
                sid = int(msg["lastUpdateId"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"malformed REST depth snapshot ({type(exc).__name__}: {exc})", store=path,
                                 index=int(line), label=f"line {line}") from exc
            _check_levels(bids + asks, where)
            self.book.clear()
            self.book.load(np.array(bids).reshape(-1, 2), np.array(asks).reshape(-1, 2))
            state[fast.S_READY], state[fast.S_HAS_LAST], state[fast.S_HAS_SID], state[fast.S_SID] = 1, 0, 1, sid
            report.diffs_before_snapshot += len(self.pending)
            if self.pending:
                self.run_dicts(list(self.pending))
            self.pending.clear()
            return
        data = msg.get("data", msg)
        if not isinstance(data, dict):
            raise InputError("malformed line: its data is not an object", store=path, index=int(line),
                             label=f"line {line}")
        stream = msg.get("stream", "")
        if data.get("e") == "depthUpdate":
            if not state[fast.S_INSTRUMENT]:
                if "s" not in data:
                    raise InputError("depthUpdate without s (the symbol)", store=path, index=int(line),
                                     label=f"line {line}")
                self.start_instrument(data)
            if not state[fast.S_READY]:
                if not state[fast.S_HAS_SID]:
                    if len(self.pending) == MAX_PENDING_DIFFS:
                        report.diffs_dropped_before_snapshot += 1
                    self.pending.append((pos, data))
                return
            self.run_dicts([(pos, data)])
        elif "bookTicker" in str(stream) or data.get("e") == "bookTicker":
            try:
                values = [float(data[k]) for k in ("b", "B", "a", "A")]
                tid = int(data["u"])
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"malformed bookTicker ({type(exc).__name__}: {exc})", store=path,
                                 index=int(line), label=f"line {line}") from exc
            self.reserve_tickers(1)
            q = int(state[fast.S_TICKERS])
            self.tq_id[q], self.tq_pos[q], self.tq_values[q] = tid, pos, values
            state[fast.S_TICKERS] = q + 1

    def file(self, index: int, path: Path) -> None:
        """The file's blocks, each read and scanned on a second thread while this one
        rebuilds the book from the block before (both loops release the GIL)."""
        first = 1
        for data, n, scan in _scanned(path):
            scan.pos[:n] = (index << LINE_BITS) + first + np.arange(n)
            self.report.lines += int(np.count_nonzero(scan.kind[:n] != fast.BLANK))
            arrays = scan.arrays()
            room = int(scan.bid_range[:n].max(initial=0)) + int(scan.ask_range[:n].max(initial=0))
            i = 0
            while i < n:
                i, why = self.run(arrays, i, n, room)
                if why == fast.PYTHON:
                    text = data[scan.line_start[i]:scan.line_end[i]].decode("utf-8", errors="replace")
                    self.python_line(int(scan.pos[i]), text)
                    i += 1
            first += n

    def finish(self) -> None:
        b = self.book
        fast.compare_remaining(self.state, self.counters, self.tq_id, self.tq_values, self.tq_pos,
                               self.dis_values, *b.parts())
        c, report = self.counters, self.report
        report.diffs_applied, report.stale_diffs, report.gaps = (int(c[fast.C_APPLIED]), int(c[fast.C_STALE]),
                                                                 int(c[fast.C_GAPS]))
        report.bookticker_compared, report.bookticker_agree = int(c[fast.C_COMPARED]), int(c[fast.C_AGREE])
        if c[fast.C_GAP_POS] >= 0:
            a, b_, code = int(c[fast.C_GAP_A]), int(c[fast.C_GAP_B]), int(c[fast.C_GAP_CODE])
            why = (f"first diff U={a} u={b_} does not cover snapshot {int(c[fast.C_GAP_SID])}"
                   if code == fast.GAP_COVER else
                   f"expected {'pu' if code == fast.GAP_PU else 'U'}={a}, got {b_}")
            report.first_gap = f"{self.where(int(c[fast.C_GAP_POS]))}: {why}"
        if c[fast.C_DIS_POS] >= 0:
            t, (bb, bbq, ba, baq) = self.dis_values[:4], self.dis_values[4:]
            report.first_disagreement = (
                f"{self.where(int(c[fast.C_DIS_POS]))} bookTicker u={int(c[fast.C_DIS_U])}: ticker "
                f"{t[0]!r}x{t[1]!r} / {t[2]!r}x{t[3]!r}, book {bb!r}x{None if math.isnan(bb) else bbq!r} / "
                f"{ba!r}x{None if math.isnan(ba) else baq!r}")


def _check_levels(levels, where: str) -> None:
    bad = next(((p, q) for p, q in levels if not (math.isfinite(p) and math.isfinite(q))), None)
    if bad is not None:
        path, line = where.rsplit(":", 1)
        raise InputError(f"price or quantity is not a finite number: {bad[0]} x {bad[1]}", store=path,
                         index=int(line), label=f"line {line}")


def _check_diff(d: dict, where: str) -> None:
    path, line = where.rsplit(":", 1)
    try:
        levels = [(float(p), float(q)) for key in ("b", "a") for p, q in d[key]]
        event = int(d["E"])
        int(d["U"]), int(d["u"]), int(d.get("pu", 0))
    except (TypeError, ValueError) as exc:
        raise InputError(f"malformed depthUpdate ({type(exc).__name__}: {exc})", store=path, index=int(line),
                         label=f"line {line}") from exc
    if not 0 <= event < 9_000_000_000_000:
        raise InputError(f"depthUpdate event time E={event} ms is out of range", store=path, index=int(line),
                         label=f"line {line}")
    _check_levels(levels, where)


def import_binance(files, levels: int, out, instrument: str | None = None,
                   chunk_rows: int = store.BOOK_CHUNK_ROWS) -> dict:
    """Rebuild the book from recorded depth streams and write its top ``levels`` per snapshot.
    Returns the :class:`ImportReport` as a dict.

    Example::

        >>> import_binance(["btcusdt_20240808.gz"], 10, "data/binance.zarr")  # doctest: +SKIP
        {'instrument': 'BTCUSDT', 'market': 'usdm', ..., 'snapshots': 6547, 'gaps': 0, ...}
    """
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
    rebuild = _Rebuild(report, files, out, levels, chunk_rows, instrument)
    try:
        for index, path in enumerate(map(Path, files)):
            rebuild.file(index, path)
        rebuild.finish()
        if rebuild.spool is None:
            raise InputError("no depthUpdate diff in the files: nothing to import" if report.lines else
                             "the files hold no line: nothing to import", store=str(files[0]))
        if not rebuild.state[fast.S_HAS_SID]:
            raise InputError("no REST depth snapshot (lastUpdateId) in the files", store=str(files[0]))
    except BaseException:
        if rebuild.spool is not None:
            rebuild.spool.discard()  # complete days already written stay; the partial day never appears
        raise
    report.snapshots, report.days = rebuild.spool.close()
    if not Path(str(out)).exists() or report.instrument not in store.child_groups(out):
        return report.as_dict()  # nothing was ever written (a gap throughout): nothing to keep
    if report.snapshots or _load_state(out, report.instrument) is None:
        # a file that added nothing (all stale, or a gap throughout) leaves the book's state
        # as it was, so that the next file continues from the last good one
        _save_state(out, report.instrument, rebuild.book, rebuild.state, report.market)
    record_imported(out, {digests[str(f)]: {"file": Path(str(f)).name, "instrument": report.instrument}
                          for f in files})
    return report.as_dict()


STATE_ATTR = "binance_book_state"


def _save_state(out, instrument, book: fast.SortedBook, state: np.ndarray, market: str) -> None:
    """The whole book after the last applied diff, kept with the instrument so that a later
    file (the next day's capture, without a REST snapshot) continues it."""
    bids, asks = book.levels()
    # the levels as base64 of little-endian float64 (price, quantity) pairs: a full-depth
    # book is thousands of levels, which as JSON lists cost 0.05-0.1 s to build and encode
    value: dict[str, Any] = {"market": market, "ready": bool(state[fast.S_READY]),
                             "last_u": int(state[fast.S_LAST_U]) if state[fast.S_HAS_LAST] else None,
                             "snapshot_id": int(state[fast.S_SID]) if state[fast.S_HAS_SID] else None,
                             "levels_encoding": LEVELS_ENCODING,
                             "bids": _encode_levels(bids), "asks": _encode_levels(asks)}
    store.update_group_attrs(out, instrument, {STATE_ATTR: value})


LEVELS_ENCODING = "float64-le-base64"


def _encode_levels(levels: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(levels, dtype="<f8").tobytes()).decode("ascii")


def _decode_levels(saved: dict, side: str) -> np.ndarray:
    """A saved side's levels (n, 2): base64 as now written, or the JSON lists of stores
    written before."""
    if saved.get("levels_encoding") == LEVELS_ENCODING:
        return np.frombuffer(base64.b64decode(saved[side]), dtype="<f8").astype(np.float64).reshape(-1, 2)
    return np.array(saved[side], dtype=np.float64).reshape(-1, 2)


def _load_state(out, instrument):
    if not Path(str(out)).exists() or instrument not in store.child_groups(out):
        return None
    return store.group_attrs(out, instrument).get(STATE_ATTR)


def _restore(saved: dict, book: fast.SortedBook, state: np.ndarray, report: ImportReport) -> None:
    if saved["market"] != report.market:
        raise InputError(f"the store's {report.instrument} comes from a {saved['market']} stream, "
                         f"these files are {report.market}", instrument=report.instrument)
    if not saved["ready"]:
        return  # the stored book ended in a gap: only a REST snapshot can restart it
    book.clear()
    book.load(_decode_levels(saved, "bids"), _decode_levels(saved, "asks"))
    state[fast.S_READY] = 1
    state[fast.S_HAS_LAST], state[fast.S_LAST_U] = (saved["last_u"] is not None), saved["last_u"] or 0
    state[fast.S_HAS_SID], state[fast.S_SID] = (saved["snapshot_id"] is not None), saved["snapshot_id"] or 0
