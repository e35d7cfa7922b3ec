"""The market store: one group per date of prices, haircuts, instruments and brackets; or a YAML/TOML file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from ..errors import SchemaError
from ..schema import (
    MARKET_ASSET_VARS,
    MARKET_BRACKET_VARS,
    MARKET_INSTRUMENT_VARS,
    as_str,
)
from ..validate import (
    validate_market,
)
from .days import (
    PathLike,
    _open_root,
    _pick_date,
    _with_attrs,
    complete_days,
    day_key,
    init_store,
    open_day_dataset,
    write_day_dataset,
)


def write_market(ds: xr.Dataset, path: PathLike, date: Any) -> str:
    """Write one as-of date of market parameters as a complete group (validated first)."""
    validate_market(ds, store=str(path))
    init_store(path, "market")
    key = day_key(date)
    ds = _with_attrs(ds, MARKET_ASSET_VARS, MARKET_INSTRUMENT_VARS, MARKET_BRACKET_VARS)
    ds.attrs["date"] = key
    write_day_dataset(ds, path, key)
    return key


def market_dates(path: PathLike) -> list[str]:
    _open_root(path, "market")
    return complete_days(path)


_NUMBERS = {"assets": ("price", "haircut", "beta"), "instruments": ("mark_price", "strike", "implied_vol",
                                                                    "depth_exponent")}


def _check_spec_shape(spec: Any, source: str | None) -> None:
    """A market spec's structure, each problem named by its path (``instruments.X.brackets[1]``)
    before any value is read: the values themselves are validated by ``validate_market``."""
    def fail(where: str, what: str) -> None:
        raise SchemaError(f"market spec: {where} {what}", store=source)

    if not isinstance(spec, dict):
        fail("the file", f"must be a mapping with 'assets' and 'instruments', not {type(spec).__name__}")
    for section in ("assets", "instruments"):
        if section not in spec:
            fail(section, "is missing")
        table = spec[section]
        if not isinstance(table, dict) or not table:
            fail(section, "must be a non-empty mapping of name -> fields")
        for name, fields in table.items():
            if not isinstance(fields, dict):
                fail(f"{section}.{name}", f"must be a mapping of fields, not {type(fields).__name__}")
            for key in _NUMBERS[section]:
                value = fields.get(key)
                if value is not None and not isinstance(value, bool):
                    try:
                        float(value)
                    except (TypeError, ValueError):
                        fail(f"{section}.{name}.{key}", f"must be a number, not {value!r}")
            if section == "instruments":
                brackets = fields.get("brackets", [])
                if not isinstance(brackets, list):
                    fail(f"instruments.{name}.brackets", "must be a list of [floor, mmr, amount] rows")
                for j, row in enumerate(brackets):
                    if not isinstance(row, (list, tuple)) or len(row) not in (2, 3):
                        fail(f"instruments.{name}.brackets[{j}]", f"must be [floor, mmr, amount], not {row!r}")
                    try:
                        [float(x) for x in row]
                    except (TypeError, ValueError):
                        fail(f"instruments.{name}.brackets[{j}]", f"must hold numbers, not {row!r}")
                expiry = fields.get("expiry")
                if expiry is not None:
                    try:
                        pd.Timestamp(expiry)
                    except (TypeError, ValueError):
                        fail(f"instruments.{name}.expiry", f"is not a date: {expiry!r}")


def market_from_dict(spec: dict, *, source: str | None = None) -> xr.Dataset:
    """Build a market Dataset from a mapping (the YAML/TOML layout of docs/data.md)::

        date: 2026-01-02
        assets: {USDT: {price: 1, haircut: 0, beta: 0}, BTC: {price: 60000, haircut: 0.05}}
        instruments:
          BTCUSDT: {kind: linear, underlying: BTC, mark_price: 60000,
                    brackets: [[0, 0.004, 0], [50000, 0.005, 50]]}
          BTC-C-70000: {kind: option, underlying: BTC, mark_price: 1234.5, strike: 70000,
                        expiry: 2026-03-27, call_put: call, implied_vol: 0.55}
    """
    _check_spec_shape(spec, source)
    assets = spec["assets"]
    instruments = spec["instruments"]
    asset_names = list(assets)
    inst_names = list(instruments)
    n_brackets = max([len(v.get("brackets", [])) for v in instruments.values()] + [1])
    floor = np.full((len(inst_names), n_brackets), np.nan)
    mmr = np.full_like(floor, np.nan)
    amount = np.full_like(floor, np.nan)
    for i, name in enumerate(inst_names):
        for j, row in enumerate(instruments[name].get("brackets", [])):
            floor[i, j], mmr[i, j] = float(row[0]), float(row[1])
            amount[i, j] = float(row[2]) if len(row) > 2 else np.nan
    get = lambda table, names, key, default: [table[n].get(key, default) for n in names]  # noqa: E731
    ds = xr.Dataset(
        {
            "price": ("asset", np.array(get(assets, asset_names, "price", np.nan), dtype=float)),
            "haircut": ("asset", np.array(get(assets, asset_names, "haircut", 0.0), dtype=float)),
            "beta": ("asset", np.array(get(assets, asset_names, "beta", 1.0), dtype=float)),
            "kind": ("instrument", np.array(get(instruments, inst_names, "kind", ""), dtype=str)),
            "underlying": ("instrument", np.array(get(instruments, inst_names, "underlying", ""), dtype=str)),
            "mark_price": ("instrument", np.array(get(instruments, inst_names, "mark_price", np.nan), dtype=float)),
            "strike": ("instrument", np.array(get(instruments, inst_names, "strike", np.nan), dtype=float)),
            "expiry": ("instrument", np.array(
                [np.datetime64(pd.Timestamp(e)) if e is not None else np.datetime64("NaT")
                 for e in get(instruments, inst_names, "expiry", None)], dtype="datetime64[ns]")),
            "call_put": ("instrument", np.array(get(instruments, inst_names, "call_put", ""), dtype=str)),
            "implied_vol": ("instrument", np.array(get(instruments, inst_names, "implied_vol", np.nan), dtype=float)),
            "depth_exponent": ("instrument", np.array(get(instruments, inst_names, "depth_exponent", np.nan),
                                                      dtype=float)),
            "notional_floor": (("instrument", "bracket"), floor),
            "mmr": (("instrument", "bracket"), mmr),
            "maintenance_amount": (("instrument", "bracket"), amount),
        },
        coords={"asset": np.array(asset_names, dtype=str), "instrument": np.array(inst_names, dtype=str),
                "bracket": np.arange(n_brackets)},
    )
    if "date" in spec:
        ds.attrs["date"] = day_key(spec["date"])
    return ds


def open_market(path: PathLike, date: Any = None, *, validate: bool = True) -> xr.Dataset:
    """Open market parameters: a Zarr market store (one as-of date; the latest by default)
    or a YAML/TOML file in the layout of :func:`market_from_dict`. Loaded in memory (small)."""
    p = Path(path)
    if p.suffix.lower() in (".yaml", ".yml", ".toml"):
        text = p.read_text()
        try:
            spec = tomllib.loads(text) if p.suffix.lower() == ".toml" else yaml.safe_load(text)
        except Exception as exc:
            raise SchemaError(f"cannot parse market file: {exc}", store=str(path)) from exc
        ds = market_from_dict(spec, source=str(path))
    else:
        key = _pick_date(path, market_dates(path), date, "market")
        ds = open_day_dataset(path, key).load()
        for name in ("kind", "underlying", "call_put"):
            if name in ds:
                ds[name] = ds[name].copy(data=as_str(ds[name].values))
        ds.attrs.update(date=key)
    ds.attrs["store"] = str(path)
    if validate:
        validate_market(ds, store=str(path))
    return ds
