"""Historical studies: the day-by-day results of a date range joined into one dataset
(instrument x time) and a study report.

Buckets are aligned to midnight UTC and labelled by their end, as every time grid of
gpu_risk: the bucket labelled T covers T - bucket <= t < T.

A study is a workflow with a ``study`` section (``workflows/study.yaml``): the workflow
computes and stores each day's families as usual (re-runs skip current days), then
:func:`build_study` reads the results of the range, one day at a time, and joins them per
instrument on buckets of ``study.bucket``:

* from ``imbalance``: ``ofi`` (level-1 order-flow imbalance summed over the bucket) and
  ``mid_price`` (at the bucket's last grid bucket); ``log_return`` = log of the mid's
  change over the bucket, and ``next_abs_return``: the absolute log return of the *next*
  bucket (the realised move that follows);
* from ``leverage``: funding, open interest, its change, mark, index and basis (last known
  at the bucket's end; changes summed);
* from ``cascade``: ``fragility``, the mean over the bucket's snapshots of the cascade
  amplification at the initial shock nearest ``study.fragility_shock``;
* from ``summary`` (the positions of the day, where there are any): ``leverage_imbalance``
  (L - S)/(L + S) of open interest, the day's value on each of its buckets.

A family not in the workflow leaves its variables out. The dataset is written whole to
``study.output`` (group ``study``) and read back by :func:`open_study`.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from pydantic import BaseModel, ConfigDict, field_validator

from . import store
from .stores.days import PathLike, init_store, open_day_dataset, write_day_dataset

KIND = "study"
GROUP = "study"
ATTRS = {
    "ofi": ("see size_units", "level-1 order-flow imbalance summed over the bucket"),
    "mid_price": ("quote currency", "mid price at the bucket's end"),
    "log_return": ("1", "log(mid at the bucket's end / mid at the previous bucket's end)"),
    "next_abs_return": ("1", "|log_return| of the next bucket: the realised move that follows"),
    "fragility": ("1", "mean cascade amplification at the study's initial shock"),
    "leverage_imbalance": ("1", "(long - short)/(long + short) open interest of the day's positions"),
}
LEVERAGE_LAST = ("funding_rate", "predicted_funding_rate", "open_interest", "mark_price", "index_price", "basis")
LEVERAGE_SUM = ("open_interest_change", "n_updates")


class StudyConfig(BaseModel):
    """The study section of a workflow."""

    model_config = ConfigDict(extra="forbid")
    output: Path
    report: Path | None = None
    bucket: str = "1h"
    fragility_shock: float = -0.05

    @field_validator("bucket")
    @classmethod
    def _divides_a_day(cls, value: str) -> str:
        from .leverage import bucket_edges  # noqa: PLC0415

        bucket_edges("2000-01-01", value)
        return value


def _bucket_of(times: np.ndarray, starts: np.ndarray, width: str | None = None) -> np.ndarray:
    """The study bucket of each instant, or of each result bucket labelled by its end (of
    ``width``): the one its start falls in."""
    if width is not None:
        times = times - np.timedelta64(pd.Timedelta(width).value, "ns")
    return np.searchsorted(starts, times, side="right") - 1


def _per_bucket(values: np.ndarray, index: np.ndarray, n: int, how: str) -> np.ndarray:
    """Reduce ``values`` (instrument, time) over the buckets ``index`` of its time axis:
    ``sum`` (NaN ignored, 0 for none), ``last`` (the last finite value) or ``mean``."""
    out = np.full((values.shape[0], n), 0.0 if how == "sum" else np.nan)
    for k in range(n):
        cols = np.flatnonzero(index == k)
        if cols.size == 0:
            continue
        block = values[:, cols]
        if how == "sum":
            out[:, k] = np.nansum(block, axis=1)
        elif how == "mean":
            finite = np.isfinite(block)
            count = finite.sum(axis=1)
            out[:, k] = np.where(count > 0, np.where(finite, block, 0.0).sum(axis=1) / np.maximum(count, 1), np.nan)
        else:
            finite = np.isfinite(block)
            last = block.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
            out[:, k] = np.where(finite.any(axis=1), block[np.arange(block.shape[0]), last], np.nan)
    return out


def study_day(results: dict[str, xr.Dataset], day: str, bucket: str, fragility_shock: float) -> xr.Dataset:
    """One day's results (family group -> Dataset) on the study's buckets (instrument, time)."""
    from .leverage import bucket_edges  # noqa: PLC0415

    edges = bucket_edges(day, bucket)
    n = edges.size
    variables: dict[str, xr.DataArray] = {}

    def add(name: str, instruments, values: np.ndarray, attrs: tuple[str, str] | dict) -> None:
        a = attrs if isinstance(attrs, dict) else {"units": attrs[0], "long_name": attrs[1]}
        variables[name] = xr.DataArray(values, dims=("instrument", "time"),
                                       coords={"instrument": [str(i) for i in instruments]}, attrs=a)

    if "imbalance" in results:
        grid = results["imbalance"]
        index = _bucket_of(grid.time.values, edges, grid.attrs.get("bucket", "1s"))
        ofi = grid.ofi.isel(level=0).transpose("instrument", "time").values
        mid = grid.mid_price.transpose("instrument", "time").values
        add("ofi", grid.instrument.values, _per_bucket(ofi, index, n, "sum"),
            {"units": str(grid.ofi.attrs.get("units", "")), "long_name": ATTRS["ofi"][1]})
        add("mid_price", grid.instrument.values, _per_bucket(mid, index, n, "last"), ATTRS["mid_price"])
    if "leverage" in results:
        lev = results["leverage"]
        index = _bucket_of(lev.time.values, edges, lev.attrs["bucket"])
        for name in LEVERAGE_LAST + LEVERAGE_SUM:
            add(name, lev.instrument.values,
                _per_bucket(lev[name].transpose("instrument", "time").values, index, n,
                            "sum" if name in LEVERAGE_SUM else "last"), dict(lev[name].attrs))
    if "cascade" in results:
        casc = results["cascade"]
        shocks = casc.initial_shock.values
        nearest = shocks[int(np.argmin(np.abs(shocks - fragility_shock)))]
        amp = casc.amplification.sel(initial_shock=nearest).transpose("instrument", "time").values
        index = _bucket_of(casc.time.values, edges)
        add("fragility", casc.instrument.values, _per_bucket(amp, index, n, "mean"),
            (ATTRS["fragility"][0], f"{ATTRS['fragility'][1]} ({nearest:g})"))
    if "positions_summary" in results and "oi_imbalance" in results["positions_summary"]:
        imb = results["positions_summary"]["oi_imbalance"]
        add("leverage_imbalance", imb.instrument.values, np.repeat(imb.values[:, None], n, axis=1),
            ATTRS["leverage_imbalance"])
    series = [v for k, v in variables.items() if k != "leverage_imbalance"]
    if not series:
        return xr.Dataset(coords={"time": ("time", edges + np.timedelta64(pd.Timedelta(bucket).value, "ns"))})
    # the instruments with a time series; the positions' imbalance joins those
    names = sorted(set().union(*(v.instrument.values.tolist() for v in series)))
    ds = xr.Dataset({k: v.reindex(instrument=names) for k, v in variables.items()})
    ends = edges + np.timedelta64(pd.Timedelta(bucket).value, "ns")
    return ds.assign_coords(time=("time", ends, {"long_name": "bucket end (UTC): the bucket holds "
                                                               "T - bucket <= t < T"}))


def build_study(results_path: PathLike, days: list[str], bucket: str = "1h",
                fragility_shock: float = -0.05) -> xr.Dataset:
    """The study dataset (instrument, time) of ``days`` of a results store; each day read
    once, so that the cost per day does not grow with the range.

    Example::

        >>> ds = build_study("results/study.zarr", ["2026-01-05", "2026-01-06"], "1h")  # doctest: +SKIP
        >>> float(xr.corr(ds.funding_rate, ds.open_interest_change))                     # doctest: +SKIP
    """
    parts = []
    for day in days:
        store.check_results_day(results_path, day)
        groups = {g: open_day_dataset(results_path, f"{day}/{g}").load()
                  for g in store.child_groups(results_path, day)
                  if g in ("imbalance", "leverage", "cascade", "positions_summary")}
        parts.append(study_day(groups, day, bucket, fragility_shock))
    if not parts:
        raise ValueError("no day to study")
    ds = xr.concat(parts, "time", join="outer", data_vars="all", coords="minimal", compat="override")
    if "mid_price" in ds:
        log_mid = np.log(ds.mid_price)
        ds["log_return"] = log_mid.diff("time").reindex(time=ds.time).assign_attrs(
            units=ATTRS["log_return"][0], long_name=ATTRS["log_return"][1])
        ds["next_abs_return"] = abs(ds["log_return"]).shift(time=-1).assign_attrs(
            units=ATTRS["next_abs_return"][0], long_name=ATTRS["next_abs_return"][1])
    ds.attrs.update(bucket=bucket, days=list(days), results=str(results_path), fragility_shock=fragility_shock)
    return ds


def write_study(ds: xr.Dataset, path: PathLike) -> Path:
    """Write the study dataset whole (complete only once written)."""
    init_store(path, KIND)
    write_day_dataset(ds, path, GROUP, {"time": 8760, "instrument": 1})
    return Path(str(path))


def open_study(path: PathLike) -> xr.Dataset:
    """The study dataset a study workflow wrote.

    Example::

        >>> gpu_risk.open_study("results/study_dataset.zarr").funding_rate.plot.line(x="time")  # doctest: +SKIP
    """
    if not store.is_complete(path, GROUP):
        raise FileNotFoundError(f"no complete study dataset at {path}")
    return open_day_dataset(path, GROUP)


# ---------------------------------------------------------------------------------------
# the study report


def relation(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson and Spearman correlation, least-squares slope, and pairs used (finite)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(x.size), "pearson": np.nan, "spearman": np.nan, "slope": np.nan, "x": x, "y": y}
    if x.size < 3 or np.var(x) == 0 or np.var(y) == 0:
        return out
    out["pearson"] = float(np.corrcoef(x, y)[0, 1])
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    out["spearman"] = float(np.corrcoef(rx, ry)[0, 1])
    out["slope"] = float(np.polyfit(x, y, 1)[0])
    return out


def _daily(ds: xr.Dataset, name: str, how: str) -> xr.DataArray:
    days = ds.time.dt.floor("1D")
    grouped = ds[name].groupby(days)
    return grouped.sum(skipna=True, min_count=1) if how == "sum" else grouped.last(skipna=True)


def study_report(ds: xr.Dataset, out_path: PathLike, title: str = "gpu_risk study") -> Path:
    """The study report: each instrument's time series, and the relations a researcher asks
    first (OFI against returns per day, funding against open interest change, cascade
    fragility against the next bucket's realised move), as scatter plots and a table."""
    from .report import CSS, _contents, _png, _table, plt  # noqa: PLC0415

    names = [str(i) for i in ds.instrument.values]
    bucket = str(ds.attrs.get("bucket", ""))
    days = list(ds.attrs.get("days", []))
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='meta'>Written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} from "
            f"{html.escape(str(ds.attrs.get('results', '')))}: {len(days)} day(s), "
            f"{html.escape(days[0] if days else '')} .. {html.escape(days[-1] if days else '')}; "
            f"{len(names)} instrument(s); buckets of {html.escape(bucket)}.</p>"]
    series = [v for v in ("mid_price", "funding_rate", "open_interest", "basis", "fragility", "leverage_imbalance")
              if v in ds]
    if series:
        body.append("<h2>Time series</h2>")
        fig, axes = plt.subplots(len(series), 1, figsize=(11, 1.9 * len(series)), sharex=True, squeeze=False)
        for ax, name in zip(axes[:, 0], series):
            for inst in names:
                values = ds[name].sel(instrument=inst).values
                if name in ("mid_price", "open_interest"):  # relative: instruments of any price level
                    finite = values[np.isfinite(values)]
                    values = values / finite[0] if finite.size else values
                ax.plot(ds.time.values, values, lw=0.7, label=inst)
            label = ATTRS.get(name, (None, name))[1] if name in ATTRS else ds[name].attrs.get("long_name", name)
            rel = " (relative to the first value)" if name in ("mid_price", "open_interest") else ""
            ax.set_title(f"{name}: {label}{rel}", fontsize=9)
        axes[0, 0].legend(fontsize=7, ncol=4)
        fig.tight_layout()
        body.append(_png(fig))
    pairs = []
    if "ofi" in ds and "log_return" in ds:
        pairs.append(("OFI and the day's return", "daily level-1 OFI (sum)", "daily log return",
                      lambda inst: (_daily(ds, "ofi", "sum").sel(instrument=inst).values,
                                    _daily(ds, "log_return", "sum").sel(instrument=inst).values)))
        pairs.append((f"OFI and the return, per {bucket}", f"level-1 OFI per {bucket}", "log return",
                      lambda inst: (ds.ofi.sel(instrument=inst).values, ds.log_return.sel(instrument=inst).values)))
    if "funding_rate" in ds and "open_interest_change" in ds:
        pairs.append(("Funding and the change of open interest", "funding rate", f"open interest change per {bucket}",
                      lambda inst: (ds.funding_rate.sel(instrument=inst).values,
                                    ds.open_interest_change.sel(instrument=inst).values)))
    if "fragility" in ds and "next_abs_return" in ds:
        pairs.append(("Cascade fragility and the next move", "cascade amplification (mean)",
                      f"|log return| of the next {bucket}",
                      lambda inst: (ds.fragility.sel(instrument=inst).values,
                                    ds.next_abs_return.sel(instrument=inst).values)))
    rows = []
    for heading, xlabel, ylabel, get in pairs:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        fig, axes = plt.subplots(1, len(names), figsize=(min(11, 3.6 * len(names)), 3.0), squeeze=False)
        for ax, inst in zip(axes[0], names):
            found = relation(*get(inst))
            ax.scatter(found["x"], found["y"], s=4, alpha=0.5)
            if np.isfinite(found["slope"]):
                xs = np.linspace(found["x"].min(), found["x"].max(), 10)
                ax.plot(xs, found["slope"] * (xs - found["x"].mean()) + found["y"].mean(), color="k", lw=0.8)
            ax.set_title(f"{inst}: r {found['pearson']:.2f}, n {found['n']}", fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.ticklabel_format(axis="both", style="sci", scilimits=(-3, 4))
            rows.append({"relation": heading, "instrument": inst, "pairs": found["n"], "Pearson r": found["pearson"],
                         "Spearman rho": found["spearman"], "slope": found["slope"]})
        fig.tight_layout()
        body.append(_png(fig))
    if rows:
        body.append("<h2>The relations in numbers</h2>" + _table(pd.DataFrame(rows).set_index("relation")))
    if not series and not rows:
        body.append("<p>The study holds no variable to show: run imbalance, leverage or cascade in it.</p>")
    body = _contents(body)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    out_path = Path(str(out_path))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(page)
    tmp.replace(out_path)
    return out_path
