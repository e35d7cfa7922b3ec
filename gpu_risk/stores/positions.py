"""The positions store: one group per as-of date of accounts' balances and positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..coding import decode_margin_mode, encode_margin_mode
from ..schema import (
    MARGIN_MODES,
    POSITION_VARS,
    describe,
)
from ..validate import (
    QC_RULES_VERSION,
    OnBadRows,
    is_clean_summary,
    positions_qc_summary,
    positions_without_bad_rows,
    validate_positions,
)
from .days import (
    ACCOUNT_CHUNK_ROWS,
    QC_ATTR,
    PathLike,
    RegionWriter,
    _lazy_template,
    _open_root,
    _pick_date,
    _record_qc,
    _with_attrs,
    check_manifest,
    complete_days,
    day_key,
    init_store,
    is_sealed,
    open_day_dataset,
    write_day_dataset,
)


def write_positions(ds: xr.Dataset, path: PathLike, date: Any,
                    chunk_rows: int = ACCOUNT_CHUNK_ROWS) -> str:
    """Write one as-of date of positions as a complete group (validated first)."""
    validate_positions(ds, store=str(path))
    init_store(path, "positions")
    key = day_key(date)
    ds = encode_margin_mode(_with_attrs(ds, POSITION_VARS))
    ds.attrs["date"] = key
    ds.attrs[QC_ATTR] = {"rules": QC_RULES_VERSION, "rows": int(ds.sizes["account"]), "bad_rows": 0}
    write_day_dataset(ds, path, key, {"account": chunk_rows})
    return key


def positions_writer(path: PathLike, date: Any, accounts: np.ndarray, assets: list[str],
                     instruments: list[str], chunk_rows: int = ACCOUNT_CHUNK_ROWS) -> RegionWriter:
    """A :class:`RegionWriter` for one as-of date, written account slab by account slab."""
    init_store(path, "positions")
    key = day_key(date)
    sizes = {"account": len(accounts), "asset": len(assets), "instrument": len(instruments)}
    variables: dict[str, tuple[tuple[str, ...], np.dtype, dict]] = {}
    for name, var in POSITION_VARS.items():
        if name == "margin_mode":
            variables[name] = (var.dims, np.dtype(np.uint8), describe(var) | {
                "flag_values": list(range(len(MARGIN_MODES))), "flag_meanings": " ".join(MARGIN_MODES)})
        else:
            variables[name] = (var.dims, np.dtype("float64"), describe(var))
    coords = {"account": ("account", np.asarray(accounts, dtype=np.int64)),
              "asset": ("asset", np.asarray(assets, dtype=object)),
              "instrument": ("instrument", np.asarray(instruments, dtype=object))}
    template = _lazy_template(coords, variables, sizes, {"account": chunk_rows})
    template.attrs["date"] = key
    return RegionWriter(template, path, key, "account", chunk_rows, encode=encode_margin_mode,
                        before_complete=record_positions_qc)


def record_positions_qc(path: PathLike, group: str) -> dict:
    """Validate a written as-of date of positions in one pass and record the summary."""
    return _record_qc(path, group, lambda ds: positions_qc_summary(decode_margin_mode(ds)))


def positions_dates(path: PathLike) -> list[str]:
    _open_root(path, "positions")
    return complete_days(path)


def open_positions(path: PathLike, date: Any = None, *, market: xr.Dataset | None = None,
                   validate: bool = True, on_bad_rows: OnBadRows = "raise",
                   chunks: Any = None, trust_recorded: bool = True) -> xr.Dataset:
    """Open the positions of one as-of date (the latest by default), lazily.

    With ``market`` given, unknown instruments and assets are checked too. An as-of date
    whose recorded validation (written with it) says it is clean is not read to be validated
    again, unless ``trust_recorded=False``.
    """
    key = _pick_date(path, positions_dates(path), date, "positions")
    ds = open_day_dataset(path, key, chunks)
    sealed = is_sealed(path, key, ds.encoding)
    if not sealed:
        check_manifest(path, key, ds.encoding)
    summary = ds.attrs.pop(QC_ATTR, None)
    ds.attrs.update(date=key, store=str(path))
    ds = decode_margin_mode(ds)
    if validate and trust_recorded and sealed and is_clean_summary(summary, ds.sizes["account"]):
        trusted = positions_without_bad_rows(ds, market, on_bad_rows=on_bad_rows)
        if trusted is not None:
            return trusted
    if validate:
        ds = validate_positions(ds, market, store=str(path), on_bad_rows=on_bad_rows)
    return ds
