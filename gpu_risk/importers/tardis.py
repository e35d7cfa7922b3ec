"""Tardis.dev normalized CSV: ``book_snapshot_N`` and ``incremental_book_L2`` into a book
store, ``derivative_ticker`` into a market history store (``stores.market_history``).

Both layouts (gzip or plain, any number of symbols and days per file) begin with
``exchange,symbol,timestamp,local_timestamp``; ``timestamp`` is the exchange's time in
microseconds since the epoch and becomes the snapshot time.

* ``book_snapshot_N``: columns ``asks[i].price, asks[i].amount, bids[i].price,
  bids[i].amount`` for i = 0..N-1; each row is a snapshot of the top N levels (an empty
  field is an empty level). Stored as is.
* ``incremental_book_L2``: columns ``is_snapshot, side, price, amount``. The rows of one
  message share ``timestamp`` and ``local_timestamp``; a run of ``is_snapshot=true`` rows
  after update rows resets the book (a reset: counted and reported, as Tardis does when a
  venue reconnects), ``amount`` 0 deletes a level, and after each message the top
  ``levels`` of each side are emitted as one snapshot. Rows of a symbol before its first
  snapshot update an unknown book: they are skipped and counted.

Files are read in blocks (``chunk_rows`` rows), each symbol's days spooled to disk and
written when complete (``importers._spool``): memory does not grow with the file. A file
already imported (the same bytes) is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from . import _compiled as fast
from ._spool import DaySpool, file_digest, imported_files, record_imported

KEYS = ["exchange", "symbol", "timestamp", "local_timestamp"]
INCREMENTAL = ["is_snapshot", "side", "price", "amount"]
TICKER = ["funding_timestamp", "funding_rate", "predicted_funding_rate", "open_interest", "last_price",
          "index_price", "mark_price"]


@dataclass
class TardisReport:
    layout: str = ""
    files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    rows: int = 0
    instruments: dict[str, dict] = field(default_factory=dict)  # name -> {snapshots, days}
    resets: int = 0  # snapshots that replaced a live book (incremental)
    rows_before_snapshot: int = 0  # updates of a book not yet known (incremental)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _layout(path: Path) -> tuple[str, list[str], int]:
    """("snapshot", columns, N) or ("incremental", columns, 0), from the header."""
    try:
        columns = list(pd.read_csv(path, nrows=0).columns)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, OSError, EOFError) as exc:
        raise InputError(f"cannot read the CSV header: {exc}", store=str(path), index=1, label="line 1") from exc
    if columns[:4] != KEYS:
        raise InputError(f"not a Tardis CSV: the header starts {columns[:4]}, not {KEYS}", store=str(path),
                         index=1, label="line 1 (header)")
    if columns[4:8] == INCREMENTAL:
        return "incremental", columns, 0
    if columns[4:] == TICKER:
        return "derivative_ticker", columns, 0
    levels = 0
    while f"asks[{levels}].price" in columns:
        levels += 1
    expected = [f"{side}[{i}].{what}" for i in range(levels) for side in ("asks", "bids")
                for what in ("price", "amount")]
    if levels == 0 or columns[4:] != expected:
        raise InputError("not a Tardis book_snapshot_N or incremental_book_L2 CSV (columns after "
                         f"local_timestamp: {columns[4:8]}...)", store=str(path), index=1, label="line 1 (header)")
    return "snapshot", columns, levels


def _chunks(path: Path, chunk_rows: int, dtypes: dict):
    """Blocks of rows, and the file line of each block's first row; one clear error for a
    malformed block (naming the file and the block's first line)."""
    first = 2
    try:
        for chunk in pd.read_csv(path, chunksize=chunk_rows, dtype=dtypes, keep_default_na=True):
            yield first, chunk
            first += len(chunk)
    except (ValueError, pd.errors.ParserError, EOFError, OSError) as exc:
        raise InputError(f"malformed CSV after line {first}: {' '.join(str(exc).split())[:300]}",
                         store=str(path), index=first, label=f"line {first}") from exc


def _micros(values: pd.Series, path: Path, first: int) -> np.ndarray:
    """A column of microseconds since the epoch as int64; one error naming the first field
    that is not a number."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"timestamp {values.iloc[i]!r} is not a number of microseconds", store=str(path),
                         variable="timestamp", index=first + i, label=f"line {first + i}")
    return numbers.to_numpy(dtype=np.int64)


def import_tardis(files, out, levels: int | None = None, instrument: str | None = None,
                  chunk_rows: int = 262_144) -> dict:
    """Import Tardis CSV files of one layout into the book store ``out``; returns the
    :class:`TardisReport` as a dict. ``levels``: levels per side to store (default: the
    file's N for ``book_snapshot_N``, 25 for ``incremental_book_L2``); ``instrument``: the
    name in the store when the files hold one symbol (default: the symbol).

    Example::

        >>> import_tardis(["binance-futures_book_snapshot_5_BTCUSDT.csv"], "data/tardis.zarr")  # doctest: +SKIP
        {'layout': 'snapshot', ..., 'instruments': {'BTCUSDT': {'snapshots': 10, ...}}}
    """
    paths = [Path(f) for f in files]
    report = TardisReport(files=[str(p) for p in paths])
    layouts = {p: _layout(p) for p in paths}
    kinds = {kind for kind, _, _ in layouts.values()}
    if len(kinds) > 1:
        raise InputError("the files mix book_snapshot_N and incremental_book_L2: import each layout on its own",
                         store=str(paths[0]))
    report.layout = kinds.pop() if kinds else ""
    digests = {p: file_digest(p) for p in paths}
    done = imported_files(out)
    report.skipped_files = [str(p) for p in paths if digests[p] in done]
    paths = [p for p in paths if digests[p] not in done]
    if levels is not None and levels < 1:
        raise ValueError("levels must be >= 1")
    if report.layout == "derivative_ticker":
        _read_tickers(paths, out, instrument, chunk_rows, report)
        if report.instruments:
            record_imported(out, {digests[p]: {"file": p.name, "instrument": sorted(report.instruments)}
                                  for p in paths})
        return report.as_dict()
    spools: dict[str, DaySpool] = {}

    def spool_of(symbol: str, n_levels: int, path: Path) -> DaySpool:
        name = instrument or symbol
        if name not in spools:
            if instrument is not None and spools:
                raise InputError(f"--instrument names one instrument, but the files hold several symbols "
                                 f"({', '.join(sorted(spools))}, {symbol})", store=str(path))
            spools[name] = DaySpool(out, name, n_levels, chunk_rows,
                                    {"source": f"Tardis {report.layout} {path.name}",
                                     "size_units": "venue units (amount)"})
        return spools[name]

    try:
        for path in paths:
            kind, columns, n = layouts[path]
            if kind == "snapshot":
                _read_snapshots(path, columns, n, levels or n, chunk_rows, spool_of, report)
            else:
                _read_incremental(path, levels or 25, chunk_rows, spool_of, report)
    except BaseException:
        for spool in spools.values():
            spool.discard()
        raise
    for name, spool in spools.items():
        snapshots, days = spool.close()
        report.instruments[name] = {"snapshots": snapshots, "days": days}
    if spools:
        record_imported(out, {digests[p]: {"file": p.name, "instrument": sorted(spools)} for p in paths})
    return report.as_dict()


def _read_snapshots(path, columns, n, levels, chunk_rows, spool_of, report) -> None:
    keep = min(levels, n)
    names = {side: ([f"{side}[{i}].price" for i in range(keep)], [f"{side}[{i}].amount" for i in range(keep)])
             for side in ("bids", "asks")}
    numeric = dict.fromkeys(columns[4:], "float64")
    for first, chunk in _chunks(path, chunk_rows, {"symbol": str, **numeric}):
        report.rows += len(chunk)
        t_ns = _micros(chunk["timestamp"], path, first) * 1000
        block = np.full((4, len(chunk), levels), np.nan)
        block[1] = block[3] = 0.0
        for k, side in ((0, "bids"), (2, "asks")):
            prices, sizes = names[side]
            block[k][:, :keep] = chunk[prices].to_numpy(dtype=np.float64)
            block[k + 1][:, :keep] = chunk[sizes].to_numpy(dtype=np.float64)
            empty = np.isnan(block[k]) | (np.nan_to_num(block[k + 1], nan=0.0) == 0.0)
            block[k][empty], block[k + 1][empty] = np.nan, 0.0  # an empty level: no price, size 0
        symbols = chunk["symbol"].astype(str).to_numpy()
        for symbol in pd.unique(symbols):
            rows = np.flatnonzero(symbols == symbol)
            spool_of(str(symbol), levels, path).add(t_ns[rows], block[:, rows],
                                                   where=f"{path}:{first + int(rows[0])}")


@dataclass
class _Book:
    book: fast.SortedBook = field(default_factory=fast.SortedBook)
    state: np.ndarray = field(default_factory=lambda: np.zeros(fast.TARDIS_STATE_SIZE, dtype=np.int64))


def _read_incremental(path, levels, chunk_rows, spool_of, report) -> None:
    """The rows of each symbol through the compiled book (``_compiled.tardis_run``)."""
    books: dict[str, _Book] = {}

    def run(symbol: str, columns: tuple, final: bool) -> None:
        entry = books.setdefault(symbol, _Book())
        n = columns[0].size
        entry.book.reserve(n)
        out_time = np.empty(n + 1, dtype=np.int64)
        out_block = np.empty((4, n + 1, levels))
        b = entry.book
        written, backwards = fast.tardis_run(*columns, entry.state, *b.parts(), levels, final, out_time, out_block)
        if backwards >= 0:  # named here, where the line is known
            raise InputError(f"event time goes backwards at {path}:{backwards}", store=str(path), instrument=symbol,
                             index=int(backwards), label=f"line {backwards}")
        if written:
            spool_of(symbol, levels, path).add(out_time[:written], out_block[:, :written], where=f"{path}:{first}")

    dtypes = {"symbol": "category", "side": "category", "is_snapshot": "category", "price": "float64",
              "amount": "float64"}
    first = 2
    for first, chunk in _chunks(path, chunk_rows, dtypes):
        report.rows += len(chunk)
        stamps = _micros(chunk["timestamp"], path, first)
        local = _micros(chunk["local_timestamp"], path, first)
        snapshot = _choice(chunk["is_snapshot"], ("true", "false"), "is_snapshot", "neither true nor false",
                           path, first) == 0
        is_bid = _choice(chunk["side"], ("bid", "ask"), "side", "neither bid nor ask", path, first) == 0
        price, amount = chunk["price"].to_numpy(dtype=np.float64), chunk["amount"].to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(price) & np.isfinite(amount))
        if bad.any():
            line = first + int(np.argmax(bad))
            raise InputError("price or amount is not a number", store=str(path), variable="price",
                             index=line, label=f"line {line}")
        lines = first + np.arange(len(chunk), dtype=np.int64)
        symbols = chunk["symbol"].astype("category")
        codes = symbols.cat.codes.to_numpy()
        # each symbol's rows in file order (books are independent); the earliest line at
        # fault is named when several symbols' times go backwards in one block
        errors = []
        for k, symbol in enumerate(symbols.cat.categories):
            rows = np.flatnonzero(codes == k)
            if rows.size == 0:
                continue
            try:
                run(str(symbol), (stamps[rows], local[rows], snapshot[rows], is_bid[rows], price[rows], amount[rows],
                                  lines[rows]), False)
            except InputError as exc:
                errors.append(exc)
        if errors:
            raise min(errors, key=lambda exc: exc.index if exc.index is not None else 0)
    empty = np.empty(0, dtype=np.int64)
    for symbol, entry in books.items():
        report.resets += int(entry.state[fast.T_RESETS])
        report.rows_before_snapshot += int(entry.state[fast.T_BEFORE])
        run(symbol, (empty, empty, np.empty(0, bool), np.empty(0, bool), np.empty(0), np.empty(0), empty), True)


def _choice(values: pd.Series, allowed: tuple[str, str], name: str, what: str, path, first: int) -> np.ndarray:
    """Index of each value in ``allowed`` (case-insensitive); one error naming the first row
    with anything else."""
    categories = values.cat.categories.astype(str).str.lower()
    index = np.array([allowed.index(c) if c in allowed else -1 for c in categories], dtype=np.int64)
    codes = values.cat.codes.to_numpy()
    found = np.where(codes >= 0, index[codes.clip(0)], -1)
    if (found < 0).any():
        i = int(np.argmax(found < 0))
        raise InputError(f"{name} {values.iloc[i]!r} is {what}", store=str(path), variable=name, index=first + i,
                         label=f"line {first + i}")
    return found


def _read_tickers(paths, out, instrument, chunk_rows, report) -> None:
    """``derivative_ticker`` rows into the market history store, each symbol's UTC day
    written whole when the next begins (or the files end)."""
    from ..stores import market_history  # noqa: PLC0415

    stored = market_history.market_history_days(out)
    days: dict[str, dict] = {}  # name -> {"day", "rows": [frames], "file"}: the day being read
    last_seen: dict[str, int] = {}  # name -> the latest update time read (ns)

    def flush(name: str) -> None:
        current = days.pop(name, None)
        if not current or not current["rows"]:
            return
        table = pd.concat(current["rows"])
        values = {f: table[f].to_numpy(dtype=np.float64) for f in market_history.FIELDS}
        funding = pd.to_numeric(table["funding_timestamp"], errors="coerce").to_numpy(dtype=np.float64)
        funding_time = np.where(np.isfinite(funding), funding * 1000, np.nan)
        funding_time = np.array([np.datetime64(int(v), "ns") if np.isfinite(v) else np.datetime64("NaT", "ns")
                                 for v in funding_time], dtype="datetime64[ns]")
        market_history.write_market_history_day(out, name, current["day"], table["t_ns"].to_numpy().astype(
            "datetime64[ns]"), values, funding_time, {"source": f"Tardis derivative_ticker {current['file']}"})
        info = report.instruments.setdefault(name, {"updates": 0, "days": []})
        info["updates"] += len(table)
        info["days"].append(current["day"])

    numeric = dict.fromkeys(TICKER, "float64")
    for path in paths:
        for first, chunk in _chunks(path, chunk_rows, {"symbol": str, **numeric}):
            report.rows += len(chunk)
            chunk = chunk.assign(t_ns=_micros(chunk["timestamp"], path, first) * 1000,
                                 line=first + np.arange(len(chunk)))
            for symbol, rows in chunk.groupby("symbol", sort=False):
                name = instrument or str(symbol)
                if instrument is not None and any(n != name for n in days):
                    raise InputError("--instrument names one instrument, but the files hold several symbols",
                                     store=str(path))
                t = rows["t_ns"].to_numpy()
                last = last_seen.get(name)
                back = np.flatnonzero(np.diff(np.concatenate([[last], t]) if last is not None else t) < 0)
                if back.size:
                    line = int(rows["line"].to_numpy()[back[0] + (0 if last is not None else 1)])
                    raise InputError(f"time goes backwards at {path}:{line}", store=str(out), instrument=name,
                                     index=line, label=f"line {line}")
                day_of = t.astype("datetime64[ns]").astype("datetime64[D]").astype(str)
                for day in pd.unique(day_of):
                    part = rows[day_of == day]
                    if day in stored.get(name, []):
                        raise InputError(f"the store already holds {name} on {day} (overlapping or repeated "
                                         "input)", store=str(out), instrument=name)
                    if name in days and days[name]["day"] != day:
                        flush(name)
                    current = days.setdefault(name, {"day": day, "rows": [], "file": path.name})
                    current["rows"].append(part)
                last_seen[name] = int(t[-1])
    for name in list(days):
        flush(name)
