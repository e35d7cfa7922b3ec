"""The HTML report: one self-contained file (tables, and plots as embedded PNGs)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

from . import store
from .families import families
from .limits import day_figures, operator_summary

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.meta{color:#555;font-size:.9em} img{max-width:100%} .headline{font-size:1.15em}
nav{font-size:.9em} nav ol{columns:2}
"""


def _png(fig, alt: str | None = None) -> str:
    """The figure as an embedded PNG; its alt text is ``alt`` or the axes' titles."""
    if alt is None:
        alt = "; ".join(ax.get_title() for ax in fig.axes if ax.get_title()) or "figure"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>')


def _number(v: float) -> str:
    """Readable at any magnitude, no more digits than matter: 1,031,837,583 / 612.35 /
    3.0721 / 0.02705."""
    if np.isnan(v):
        return ""
    if v.is_integer() and abs(v) < 1e15:  # counts and round figures: no trailing zeros
        return f"{v:,.0f}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.2f}"
    if abs(v) >= 1:
        return f"{v:,.4f}"
    return f"{v:.4g}"


def _table(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return _number(float(v))
        if isinstance(v, (int, np.integer)):
            return f"{v:,}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or ""] + list(df.columns))
    rows = "".join("<tr>" + f"<td>{html.escape(str(i))}</td>" + "".join(f"<td>{fmt(v)}</td>" for v in r)
                   + "</tr>" for i, r in zip(df.index, df.itertuples(index=False)))
    return f"<table><tr>{head}</tr>{rows}</table>"


def _glance_values(results: xr.DataTree, day: str) -> dict[str, tuple[float, str]]:
    """The figures of the summary at the top for one day: name -> (value, format). Those
    the operator's summary has too come from it (one definition each)."""
    node = results[day]
    shared = day_figures(node, watch=1.0)
    out: dict[str, tuple[float, str]] = {}
    if "liquidation" in node.children:
        liq = node["liquidation"].to_dataset()
        ratio = liq["collateral_ratio"].values
        shock = liq["liquidation_shock_down"].values
        out["accounts below collateral ratio 1 (liquidatable now)"] = (float(shared["accounts_below_1"]), "count")
        out["accounts liquidated by a common move of -5 % or less"] = (
            float(np.sum((ratio >= 1) & np.isfinite(shock) & (shock >= -0.05))), "count")
        out["open interest, long + short (USD)"] = (shared["open_interest"], "money")
    if "stress" in node.children:
        st = node["stress"].to_dataset()
        worst = shared["worst_shortfall"]
        out["worst stress shortfall over the grid (USD)"] = (np.nan if worst is None else worst, "money")
        out["most accounts liquidated in one stress scenario"] = (float(st["accounts_liquidated"].max()), "count")
    if shared.get("cascade_amplification") is not None:
        out["largest cascade amplification (final move / initial shock)"] = (shared["cascade_amplification"], "ratio")
    if "positions_summary" in node.children:
        out["accounts left out by validation"] = (float(node["positions_summary"]["n_excluded"]), "count")
    if "imbalance" in node.children:
        grid = node["imbalance"].to_dataset()
        empty = (grid["n_updates"] == 0) & grid["mid_price"].isnull()
        out["imbalance buckets without a current book (gaps)"] = (float(empty.sum()), "count")
    return out


def _fmt(value: float, kind: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    if kind == "count":
        return f"{value:,.0f}"
    if kind == "money":
        return f"{value:,.0f}"  # whole currency units: cents do not help a decision
    return f"{value:.2f}"


STATUS_COLOURS = {"red": "#d73027", "amber": "#fdae61", "green": "#1a9850", "n/a": "#bbbbbb"}


def operator_section(results: xr.DataTree, days: list[str], operator: dict) -> str:
    """What to act on, before any figure: accounts below a collateral ratio of 1 and near
    it, the accounts at risk by notional, the limits and their status, the last day's
    figures and their change, and the caveats that apply to them."""
    last = days[-1]
    parts = [f"<h2>What to act on, {last}</h2>"]
    below, near = operator.get("accounts_below_1"), operator.get("accounts_below_watch")
    if below is not None:
        parts.append(f"<p class='headline'><b>{below:,}</b> account(s) below collateral ratio 1 "
                     f"(liquidatable now); <b>{near:,}</b> below {operator['watch_ratio']:g}.</p>")
    checks = operator.get("limits", [])
    if checks:
        def shown(v):
            return "" if v is None else _number(float(v))

        rows = "".join(
            f"<tr><td>{html.escape(c['limit'])}</td><td>{shown(c['value'])}"
            f"</td><td>{shown(c['max'])}</td><td>{shown(c['warn'])}</td>"
            f"<td style='background:{STATUS_COLOURS[c['status']]};color:#fff'><b>{c['status']}</b></td></tr>"
            for c in checks)
        parts.append("<h3>Limits</h3><table><tr><th>limit</th><th>value</th><th>max</th><th>warn from</th>"
                     f"<th>status</th></tr>{rows}</table>")
    else:
        parts.append("<p class='meta'>No limits are set: a workflow's <code>limits:</code> section sets them "
                     "(docs/operations.md), and a breach then makes the run exit with status 3.</p>")
    top = operator.get("top_accounts") or []
    if top:
        df = pd.DataFrame([{
            "account": r["account"], "collateral ratio": r["collateral_ratio"],
            "move to liquidation (%)": ("now (below 1)" if r["move_to_liquidation_pct"] == 0
                                        else "none in range" if r["move_to_liquidation_pct"] is None
                                        else f"{r['move_to_liquidation_pct']:+.2f}"),
            "collateral value (USD)": r["collateral_value"], "requirement (USD)": r["requirement"],
            "gross exposure (USD)": r["gross_exposure"]} for r in top]).set_index("account")
        parts.append(f"<h3>Accounts at risk: collateral ratio below {operator['watch_ratio']:g}, largest "
                     "gross exposure first</h3>" + _table(df.astype(object).where(df.notnull(), float("nan"))))
    parts.append(glance_section(results, days))
    caveats = []
    scenario = operator.get("worst_scenario")
    if scenario:
        where = ", ".join(f"{k.replace('_', ' ')} {100 * v:+g} %" for k, v in scenario.items())
        caveats.append(f"The worst stress scenario of the grid is {where}.")
    exhausted = operator.get("cascades_exhausting_book")
    if exhausted is not None and exhausted > 0:
        caveats.append(f"{100 * exhausted:.0f} % of the last day's cascades ran past the visible book: "
                       "their moves depend on the depth extrapolation (see each cascade table).")
    if caveats:
        parts.append("<p class='meta'>" + " ".join(html.escape(c) for c in caveats) + "</p>")
    return "".join(parts)


def trends_section(results: xr.DataTree, days: list[str]) -> str:
    """Every day's headline figures, so that a drift over the history shows (the family
    sections below show the last day in detail)."""
    if len(days) < 2:
        return ""
    table = {day: _glance_values(results, day) for day in days}
    names = list(dict.fromkeys(name for values in table.values() for name in values))
    if not names:
        return ""
    kinds = {name: kind for values in table.values() for name, (_, kind) in values.items()}
    df = pd.DataFrame({name: [table[d][name][0] if name in table[d] else np.nan for d in days] for name in names},
                      index=pd.Index(days, name="date"))
    shown = pd.DataFrame({name: [_fmt(v, kinds[name]) if np.isfinite(v) else "" for v in df[name]]
                          for name in names}, index=df.index)
    # days down, figures across, as the reader scans a day
    parts = [f"<h2>Trends over {len(days)} days</h2>", _table(shown)]
    plotted = [n for n in names if df[n].notna().sum() > 2][:4]  # a line needs three days to say much
    if plotted:
        import matplotlib.dates as mdates  # noqa: PLC0415

        fig, axes = plt.subplots(1, len(plotted), figsize=(2.9 * len(plotted), 2.6), squeeze=False)
        for ax, name in zip(axes[0], plotted):
            ax.plot(pd.to_datetime(df.index), df[name].values, marker="o", ms=3)
            ax.set_title(name if len(name) < 40 else name[:38] + "...", fontsize=8)
            ax.xaxis.set_major_locator(mdates.DayLocator(interval=max(1, len(days) // 6)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        parts.append(_png(fig, alt="trends of " + ", ".join(plotted)))
    return "".join(parts)


def glance_section(results: xr.DataTree, days: list[str]) -> str:
    """The last day's headline figures of every family and their change since the day
    before (every figure is computed from the results store, nothing else)."""
    last = days[-1]
    now = _glance_values(results, last)
    if not now:
        return ""
    before = _glance_values(results, days[-2]) if len(days) > 1 else {}
    rows = []
    for name, (value, kind) in now.items():
        change = ""
        if name in before and np.isfinite(before[name][0]) and np.isfinite(value):
            delta = value - before[name][0]
            change = ("+" if delta > 0 else "") + _fmt(delta, kind) if delta else "unchanged"
        rows.append({"": name, last: _fmt(value, kind), f"change since {days[-2]}" if len(days) > 1 else "": change})
    df = pd.DataFrame(rows).set_index("")
    if len(days) == 1:
        df = df.drop(columns=[""], errors="ignore")
    return (f"<h3>At a glance, {last}</h3><p class='meta'>The last day's figures from every family in the "
            "results, with their change since the day before. Details follow.</p>" + _table(df))


def summary_section(results: xr.DataTree, days: list[str]) -> str:
    parts = ["<h2>Datasets</h2>"]
    book_rows, pos_rows, oi = [], [], {}
    for day in days:
        node = results[day]
        if "book_summary" in node.children:
            b = node["book_summary"].to_dataset().load()
            for inst in b.instrument.values:
                r = b.sel(instrument=inst)
                book_rows.append({"date": day, "instrument": str(inst),
                                  "snapshots": int(r.n_snapshots), "open": float(r.open_mid),
                                  "high": float(r.high_mid), "low": float(r.low_mid),
                                  "close": float(r.close_mid),
                                  "spread (bps)": float(r.mean_spread_bps)})
        if "positions_summary" in node.children:
            p = node["positions_summary"].to_dataset().load()
            pos_rows.append({"date": day, "accounts": int(p.n_accounts), "isolated": int(p.n_isolated),
                             "borrowing": int(p.n_borrowing), "excluded (qc)": int(p.n_excluded),
                             "long OI (USD)": float(p.long_open_interest.sum()),
                             "short OI (USD)": float(p.short_open_interest.sum())})
            oi[day] = p[["long_open_interest", "short_open_interest", "oi_imbalance"]]
    if book_rows:
        df = pd.DataFrame(book_rows).set_index("date")
        n_inst = df["instrument"].nunique()
        parts.append(f"<p>{n_inst} instruments over {len(days)} days, "
                     f"{df['snapshots'].sum():,} book snapshots.</p>")
        parts.append("<h3>Books by day</h3>" + _table(df))
        fig, ax = plt.subplots(figsize=(9, 3.2))
        for inst, g in df.groupby("instrument"):
            ax.plot(pd.to_datetime(g.index), g["close"] / g["open"].iloc[0] - 1, marker="o", label=inst)
        ax.set_ylabel("close / first open - 1")
        ax.set_title("Daily close of the mid, relative to the first open")
        ax.legend(fontsize=8)
        parts.append(_png(fig))
    if pos_rows:
        parts.append("<h3>Accounts by as-of date</h3>" + _table(pd.DataFrame(pos_rows).set_index("date")))
        last = list(oi)[-1]
        o = oi[last]
        df = pd.DataFrame({"long OI (USD)": o.long_open_interest.values,
                           "short OI (USD)": o.short_open_interest.values,
                           "imbalance (L-S)/(L+S)": o.oi_imbalance.values},
                          index=pd.Index([str(i) for i in o.instrument.values], name="instrument"))
        fig, ax = plt.subplots(figsize=(9, 3.2))
        x = np.arange(len(df))
        ax.bar(x - 0.2, df["long OI (USD)"] / 1e6, 0.4, label="long")
        ax.bar(x + 0.2, df["short OI (USD)"] / 1e6, 0.4, label="short")
        ax.set_xticks(x, df.index, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("USD millions")
        ax.set_title(f"Open interest by instrument, {last} (the table: liquidation thresholds)")
        ax.legend()
        parts.append(_png(fig))
    if not book_rows and not pos_rows:
        return ""
    return "\n".join(parts)


def _block_mean(values: np.ndarray, columns: int) -> tuple[np.ndarray, int]:
    """``values`` (time, ...) averaged over consecutive blocks of time so that about
    ``columns`` remain (NaN where a block has no value); returns (means, block length)."""
    span = max(1, -(-values.shape[0] // columns))
    n = -(-values.shape[0] // span) * span
    padded = np.full((n, *values.shape[1:]), np.nan)
    padded[:values.shape[0]] = values
    blocks = padded.reshape(n // span, span, *values.shape[1:])
    counts = np.isfinite(blocks).sum(axis=1)
    sums = np.nansum(blocks, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), span


def _duration(td: pd.Timedelta) -> str:
    seconds = td.total_seconds()
    return f"{seconds:g} s" if seconds < 60 else f"{seconds / 60:g} min"


def ofi_regression(grid: xr.Dataset, instrument: str, every: int) -> dict:
    """Least squares of the mid-price change on level-1 OFI over windows of ``every``
    buckets (Cont, Kukanov & Stoikov 2014, eq. 3): slope, intercept, R^2, windows used."""
    g = grid.sel(instrument=instrument)
    n = g.sizes["time"] // every * every
    ofi = g.ofi.isel(level=0).values[:n].reshape(-1, every).sum(axis=1)
    mid = g.mid_price.values[:n].reshape(-1, every)[:, -1]
    prev_mid = np.concatenate([[np.nan], mid[:-1]])
    dmid = mid - prev_mid
    ok = np.isfinite(ofi) & np.isfinite(dmid)
    x, y = ofi[ok], dmid[ok]
    if x.size < 3 or np.var(x) == 0:
        return {"slope": np.nan, "intercept": np.nan, "r2": np.nan, "n": int(x.size), "x": x, "y": y}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else np.nan
    return {"slope": slope, "intercept": intercept, "r2": r2, "n": int(x.size), "x": x, "y": y}


def imbalance_section(results: xr.DataTree, days: list[str]) -> str:
    with_grids = _days_with(results, days, "imbalance")
    if not with_grids:
        return ""
    day = with_grids[-1]
    grid = results[day]["imbalance"].to_dataset()
    bucket = pd.Timedelta(grid.attrs.get("bucket", "1s"))
    every = max(1, int(pd.Timedelta("1min") / bucket))
    parts = [f"<h2>Imbalance grids, {day}</h2>",
             f"<p>Buckets of {_duration(bucket)}; {grid.sizes['time']:,} buckets x {grid.sizes['level']} levels "
             f"per instrument. Depth imbalance (bid - ask)/(bid + ask) over levels 1..k; "
             f"order-flow imbalance of Cont, Kukanov & Stoikov (2014) at level 1.</p>"]
    rows = []
    for inst in grid.instrument.values:
        g = grid.sel(instrument=inst).load()
        units = str(g["size_units"].values) if "size_units" in g.coords else "base units"
        # about 600 columns for about 600 pixels: each the mean of its buckets (every
        # bucket counts; taking every n-th one drew stripes)
        depth, span = _block_mean(g.depth_imbalance.values, 600)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4), gridspec_kw={"width_ratios": [2, 1]})
        hours = g.sizes["time"] * bucket / pd.Timedelta("1h")
        im = ax1.imshow(depth.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest",
                        origin="lower", extent=[0, hours, 0.5, g.sizes["level"] + 0.5])
        ax1.set_xlabel("hours from the first bucket (UTC)")
        ax1.set_ylabel("levels 1..k")
        ax1.set_title(f"{inst}: depth imbalance (bid - ask)/(bid + ask), mean per {_duration(span * bucket)}",
                      fontsize=9)
        fig.colorbar(im, ax=ax1)
        reg = ofi_regression(grid, str(inst), every)
        ax2.scatter(reg["x"], reg["y"], s=3, alpha=0.4)
        if np.isfinite(reg["slope"]):
            xs = np.linspace(np.min(reg["x"]), np.max(reg["x"]), 10)
            ax2.plot(xs, reg["slope"] * xs + reg["intercept"], color="k")
        ax2.set_xlabel(f"level-1 OFI per {_duration(every * bucket)} ({units})", fontsize=8)
        ax2.set_ylabel("mid change (quote currency)", fontsize=8)
        ax2.set_title(f"{inst}: mid change on OFI, R\u00b2 {reg['r2']:.2f}", fontsize=9)
        ax2.xaxis.set_major_locator(plt.MaxNLocator(4))  # wide OFI values: labels never overlap
        ax2.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        fig.tight_layout()
        parts.append(_png(fig))
        rows.append({"instrument": str(inst), "windows": reg["n"], "slope (price per unit OFI)": reg["slope"],
                     "R^2": reg["r2"], "mean |queue imbalance|": float(np.abs(g.depth_imbalance.isel(level=0)).mean()),
                     "updates": int(g.n_updates.sum())})
    parts.append("<h3>Mid-price change on level-1 OFI</h3>" +
                 _table(pd.DataFrame(rows).set_index("instrument")))
    return "\n".join(parts)


def _panels(n: int, height: float):
    """A figure of ``n`` per-instrument panels in two columns (unused panels hidden); returns
    (figure, the n axes)."""
    cols = min(2, n) or 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()[:max(n, 1)]


def _days_with(results: xr.DataTree, days: list[str], family: str) -> list[str]:
    """The complete days whose results hold ``family``."""
    return [d for d in days if family in results[d].children]


def _over_days(results: xr.DataTree, days: list[str], family: str) -> xr.Dataset:
    """``family``'s results of ``days`` joined along time, in memory."""
    return xr.concat([results[d][family].to_dataset() for d in days], "time", data_vars="minimal",
                     coords="minimal", compat="override").load()


def leverage_section(results: xr.DataTree, days: list[str]) -> str:
    """Funding, open interest and basis over every day that holds them, per instrument."""
    with_leverage = _days_with(results, days, "leverage")
    if not with_leverage:
        return ""
    grid = xr.concat([results[d]["leverage"].to_dataset() for d in with_leverage], "time", join="outer")
    names = [str(i) for i in grid.instrument.values]
    parts = [f"<h2>Funding, open interest and basis, {with_leverage[0]} .. {with_leverage[-1]}</h2>",
             f"<p>Per bucket of {html.escape(str(grid.attrs.get('bucket', '')))}: the last value known at the "
             "bucket's end, from the market history store.</p>"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 7), sharex=True)
    for name in names:
        g = grid.sel(instrument=name)
        times = g.time.values
        axes[0].plot(times, g.funding_rate.values * 1e4, label=name, lw=0.8)
        oi = g.open_interest.values
        first = oi[np.isfinite(oi)][0] if np.isfinite(oi).any() else np.nan
        axes[1].plot(times, oi / first, label=name, lw=0.8)
        axes[2].plot(times, g.basis.values * 1e4, label=name, lw=0.8)
    axes[0].set_title("funding rate (bps per interval)", fontsize=9)
    axes[1].set_title("open interest, relative to the first value", fontsize=9)
    axes[2].set_title("basis: mark / index - 1 (bps)", fontsize=9)
    axes[0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    parts.append(_png(fig))
    rows = []
    for name in names:
        g = grid.sel(instrument=name)
        rows.append({"instrument": name, "last funding (bps)": float(g.funding_rate.values[-1] * 1e4),
                     "open interest": float(g.open_interest.values[-1]),
                     "OI change over the period": float(np.nansum(g.open_interest_change.values[1:])),
                     "mean basis (bps)": float(np.nanmean(g.basis.values) * 1e4),
                     "updates": int(np.nansum(g.n_updates.values))})
    parts.append(_table(pd.DataFrame(rows).set_index("instrument")))
    return "\n".join(parts)


def liquidation_section(results: xr.DataTree, days: list[str]) -> str:
    with_liquidation = _days_with(results, days, "liquidation")
    if not with_liquidation:
        return ""
    day = with_liquidation[-1]
    liq = results[day]["liquidation"].to_dataset().load()
    parts = [f"<h2>Liquidation thresholds, {day}</h2>",
             "<p>Liquidation map: notional (USD at the liquidation price) of the positions whose "
             "liquidation price lies in each bin of distance from the mark; longs below, shorts above.</p>"]
    perps = [str(i) for i in liq.instrument.values  # instruments with a liquidation map
             if float(liq.liquidation_map.sel(instrument=i).sum()) > 0]
    fig, axes = _panels(len(perps), 2.8)
    for ax, inst in zip(axes, perps):
        mp = liq.liquidation_map.sel(instrument=inst)
        x = mp.price_bin.values * 100
        width = np.diff(mp.price_bin_lower.values).mean() * 100 if mp.sizes["price_bin"] > 1 else 1
        ax.bar(x, mp.sel(side="long").values / 1e6, width, color="tab:red", label="long")
        ax.bar(x, mp.sel(side="short").values / 1e6, width, color="tab:green", label="short", alpha=0.8)
        ax.set_title(inst, fontsize=9)
        ax.set_xlabel("liquidation price vs mark (%)", fontsize=8)
        ax.set_ylabel("USD millions", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    parts.append(_png(fig))
    shock = liq.liquidation_shock_down.values
    ratio = liq.collateral_ratio.values
    fig, ax = plt.subplots(figsize=(9, 3))
    finite = shock[np.isfinite(shock) & (ratio >= 1)]
    ax.hist(finite * 100, bins=100, color="tab:blue")
    ax.set_xlabel("common market move at which the account is liquidated (%)")
    ax.set_ylabel("accounts")
    ax.set_title(f"Distance to liquidation ({finite.size:,} of {int((ratio >= 1).sum()):,} accounts above "
                 "collateral ratio 1 have a threshold down to -99 %)", fontsize=10)
    parts.append(_png(fig))
    # accounts not yet liquidatable (those below 1 lead the report), nearest down-move first;
    # with their size, so that a small account does not read like a large one
    candidates = np.where(np.isfinite(shock) & (ratio >= 1), -shock, np.inf)
    order = np.argsort(candidates, kind="stable")[:15]
    order = order[np.isfinite(candidates[order])]
    top = pd.DataFrame({"collateral ratio": ratio[order], "move down to liquidation (%)": 100 * shock[order],
                        "move up to liquidation (%)": 100 * liq.liquidation_shock_up.values[order]},
                       index=pd.Index(liq.account.values[order], name="account"))
    if "gross_exposure" in liq:
        top["gross exposure (USD)"] = liq.gross_exposure.values[order]
    parts.append("<h3>Accounts above collateral ratio 1 closest to liquidation (smallest down-move)</h3>"
                 + _table(top))
    oi = pd.DataFrame({"long OI (USD)": liq.long_open_interest.values,
                       "short OI (USD)": liq.short_open_interest.values,
                       "leverage imbalance (L-S)/(L+S)": liq.oi_imbalance.values,
                       "liquidated below -10 % (USD)": liq.liquidation_map.sel(side="long").where(
                           liq.price_bin_upper <= -0.1 + 1e-12, 0).sum("price_bin").values},
                      index=pd.Index([str(i) for i in liq.instrument.values], name="instrument"))
    parts.append("<h3>Open interest and leverage imbalance</h3>" + _table(oi))
    return "\n".join(parts)


def stress_section(results: xr.DataTree, days: list[str]) -> str:
    stress_days = _days_with(results, days, "stress")
    if not stress_days:
        return ""
    day = stress_days[-1]
    st = results[day]["stress"].to_dataset().load()
    second = str([d for d in st["shortfall"].dims if d != "price_shock"][0])
    parts = [f"<h2>Stress surfaces, {day}</h2>",
             f"<p>Every account's collateral ratio over {st.sizes['price_shock']} common price shocks "
             f"(beta-scaled) x {st.sizes[second]} {second.replace('_', ' ')}s.</p>"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    x = st[second].values
    y = st.price_shock.values * 100
    for ax, name, title in ((axes[0], "accounts_liquidated", "accounts liquidated"),
                            (axes[1], "shortfall", "shortfall (bad debt), USD millions")):
        z = st[name].values / (1e6 if name == "shortfall" else 1)
        mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap="magma_r")
        ax.set_xlabel(second.replace("_", " "))
        ax.set_ylabel("price shock (%)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(mesh, ax=ax)
    fig.tight_layout()
    parts.append(_png(fig))
    worst = st["shortfall"].where(st["shortfall"] == st["shortfall"].max(), drop=True)
    ws, wv = float(worst.price_shock.values[0]), float(worst[second].values[0])
    parts.append(f"<p><b>Worst scenario</b>: price shock {ws:+.0%}, {second.replace('_', ' ')} {wv:+.2f}: "
                 f"shortfall {float(st['shortfall'].max()):,.0f} USD, "
                 f"{int(st['accounts_liquidated'].sel({'price_shock': ws, second: wv})):,} accounts liquidated.</p>")
    if "liquidity_shortfall" in st:
        cell = {"price_shock": ws, second: wv}
        at_mark, by_book = float(st["shortfall"].sel(cell)), float(st["liquidity_shortfall"].sel(cell))
        parts.append(f"<p><b>Priced by the book</b>: closing the accounts liquidated in that scenario through the "
                     f"day's last book snapshot instead of at the mark: {by_book:,.0f} USD "
                     f"({by_book / at_mark:.2f}x the shortfall at the mark); over the grid, the book adds up to "
                     f"{float((st['liquidity_shortfall'] - st['shortfall']).max()):,.0f} USD "
                     "(docs/methodology.md, \"Shortfall priced by the book\").</p>" if at_mark > 0 else
                     f"<p><b>Priced by the book</b>: {by_book:,.0f} USD in that scenario.</p>")
    if len(stress_days) > 1:
        prev = results[stress_days[-2]]["stress"].to_dataset().load()
        if prev["shortfall"].shape == st["shortfall"].shape:
            change = (st["shortfall"] - prev["shortfall"].values) / 1e6
            fig, ax = plt.subplots(figsize=(6, 3.6))
            lim = float(np.abs(change).max()) or 1.0
            mesh = ax.pcolormesh(x, y, change.values, shading="nearest", cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xlabel(second.replace("_", " "))
            ax.set_ylabel("price shock (%)")
            ax.set_title(f"shortfall change since {stress_days[-2]} (USD millions)", fontsize=10)
            fig.colorbar(mesh, ax=ax)
            parts.append(f"<h3>Shortfall change since {stress_days[-2]}</h3>" + _png(fig))
    span = st["span_requirement"].values
    parts.append(f"<p>SPAN requirement (16 CME scenarios): total {np.nansum(span):,.0f} USD over "
                 f"{np.isfinite(span).sum():,} accounts; largest {np.nanmax(span):,.0f} USD.</p>")
    return "\n".join(parts)


def contagion_section(results: xr.DataTree, days: list[str]) -> str:
    """Contagion amplification per instrument next to its single-instrument cascade (where
    both ran), and the bad debt by shock."""
    with_contagion = _days_with(results, days, "contagion")
    if not with_contagion:
        return ""
    co = _over_days(results, with_contagion, "contagion")
    shocks = co.initial_shock.values
    names = [str(i) for i in co.instrument.values if bool(co.mid_price.sel(instrument=i).notnull().any())]
    parts = [f"<h2>Portfolio contagion, {with_contagion[0]} to {with_contagion[-1]}</h2>",
             f"<p>At {co.sizes['time']:,} times, every asset moved by 1 + beta x each of {shocks.size} common "
             "shocks; accounts below C/R 1 are liquidated round after round across every book at once (a cross "
             "account closes all its positions), until a round liquidates nobody (docs/methodology.md, "
             "\"Portfolio contagion\"). Beside each instrument's contagion amplification, its single-instrument "
             "cascade's, where the cascade family ran on the same days.</p>"]
    cascade_days = _days_with(results, with_contagion, "cascade")
    cascade = _over_days(results, cascade_days, "cascade") if cascade_days else None
    rows = []
    for s0 in shocks[np.argsort(np.abs(shocks))][:4]:
        for name in names:
            row = {"instrument": name, "shock": f"{100 * s0:+g} %",
                   "contagion amplification (median)": float(co.amplification.sel(instrument=name, initial_shock=s0)
                                                             .median()),
                   "accounts liquidated (median)": float(co.accounts_liquidated.sel(instrument=name,
                                                                                     initial_shock=s0).median())}
            if cascade is not None and name in cascade.instrument.values and s0 in cascade.initial_shock.values:
                row["cascade amplification (median)"] = float(
                    cascade.amplification.sel(instrument=name, initial_shock=s0).median())
            rows.append(row)
    if rows:
        parts.append(_table(pd.DataFrame(rows).set_index(["instrument", "shock"])))
    if "pull" in co:
        down = shocks[shocks < 0]
        s0 = down[np.argmin(np.abs(down + 0.05))] if down.size else shocks[np.argmin(np.abs(shocks))]
        matrix = co.pull.sel(initial_shock=s0, source=names, instrument=names).median("time").to_pandas()
        matrix.index.name, matrix.columns.name = "source book", "instrument"
        parts.append(f"<h3>Which instruments pull which, at a {100 * s0:+g} % shock</h3><p>Each cell: the part of "
                     "the column instrument's amplification that the row instrument's book brings (the contagion "
                     "with every book, minus the contagion with the row's book taken away, per unit of shock; "
                     "median over the times). 0: the two share no liquidated account or asset; blank: the row "
                     "itself.</p>")
        parts.append(_table(matrix.round(4)))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(shocks * 100, co.shortfall.median("time").values, marker="o", ms=3, label="median")
    ax.plot(shocks * 100, co.shortfall.max("time").values, marker="o", ms=3, label="worst time")
    ax.set_xlabel("common shock (%)")
    ax.set_ylabel("bad debt (USD)")
    ax.set_title("Shortfall of the liquidated accounts at the prices their orders got", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    parts.append(_png(fig))
    return "\n".join(parts)


def cascade_section(results: xr.DataTree, days: list[str]) -> str:
    cascade_days = _days_with(results, days, "cascade")
    if not cascade_days:
        return ""
    ca = _over_days(results, cascade_days, "cascade")
    shocks = ca.initial_shock.values
    extrapolation = ca.attrs.get("depth_extrapolation", "none")
    parts = [f"<h2>Liquidation cascades, {cascade_days[0]} to {cascade_days[-1]}</h2>",
             f"<p>At {ca.sizes['time']:,} times, every book moved by each of {shocks.size} initial shocks; "
             "forced sales of the positions whose liquidation price the price reaches walk the moved "
             "book, wave after wave, until a wave closes nothing. Amplification = final move / initial "
             f"shock (1: nobody liquidated). Depth beyond the visible levels: {html.escape(str(extrapolation))}"
             + (" (cumulative size ~ distance from the mid ** gamma, gamma fitted on deep books: "
                + ", ".join(f"{html.escape(str(n))} {g:.2f}" for n, g in zip(ca.instrument.values,
                                                                             np.atleast_1d(ca.attrs["depth_exponent"])))
                + ")" if str(extrapolation) == "power" and "depth_exponent" in ca.attrs else "")
             + " (see docs/methodology.md).</p>"]
    names = [str(i) for i in ca.instrument.values]
    valid = ca.amplification.notnull()
    exhausted_share = float(ca.book_exhausted.where(valid).mean()) if bool(valid.any()) else 0.0
    depth_note = ("<p class='meta'><b>Depth assumption:</b> "
                  + ("beyond the visible levels the cumulative size grows as the distance from the mid to the "
                     "power gamma fitted on deep books (depth_extrapolation power)" if str(extrapolation) == "power"
                     else f"beyond the visible levels each further {100 * float(extrapolation):g} % of price holds "
                     "the visible side's size again (depth_extrapolation "
                     f"{html.escape(str(extrapolation))})" if str(extrapolation) != "none"
                     else "none: a cascade stops at the deepest visible level")
                  + f"; {100 * exhausted_share:.0f} % of these cascades ran past the visible book, so "
                  "their size depends on that assumption more than on the data.</p>")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for inst in names:
        amp = ca.amplification.sel(instrument=inst)
        med = amp.median("time").values
        for ax, side in ((axes[0], shocks < 0), (axes[1], shocks > 0)):
            line, = ax.plot(shocks[side] * 100, med[side], marker="o", ms=3, label=inst)
            ax.fill_between(shocks[side] * 100, amp.quantile(0.1, "time").values[side],
                            amp.quantile(0.9, "time").values[side], color=line.get_color(), alpha=0.12)
    for ax, title in ((axes[0], "down shocks (longs sold into the bids)"),
                      (axes[1], "up shocks (shorts bought from the asks)")):
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xlabel("initial shock (%)")
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("amplification (median, 10-90 % band)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    parts.append("<h3>Amplification versus initial shock</h3>" + _png(fig) + depth_note)
    fig, axes = _panels(len(names), 3.0)
    move = (ca.final_price / ca.mid_price - 1) * 100
    lim = float(np.nanpercentile(np.abs(move.values), 99)) if np.isfinite(move.values).any() else 1.0
    for ax, inst in zip(axes, names):
        z = move.sel(instrument=inst).values.T
        mesh = ax.pcolormesh(ca.time.values, np.arange(shocks.size), z, shading="nearest", cmap="RdBu",
                             vmin=-lim, vmax=lim)
        gone = ca.book_exhausted.sel(instrument=inst).values.T.astype(float)
        if gone.any():  # hatched: the cascade ran past the visible book (extrapolated depth)
            ax.contourf(ca.time.values, np.arange(shocks.size), gone, levels=[0.5, 1.5], colors="none",
                        hatches=["////"])
        ax.set_yticks(np.arange(shocks.size)[::2], [f"{v:+.0%}" for v in shocks[::2]], fontsize=7)
        ax.set_title(inst, fontsize=9)
        ax.set_ylabel("initial shock", fontsize=8)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        fig.colorbar(mesh, ax=ax, label="final move (%)")
    fig.tight_layout()
    parts.append("<h3>Final price move, time x initial shock</h3>" + _png(fig)
                 + "<p class='meta'>Hatched cells: the cascade ran past the visible book.</p>" + depth_note)
    down = shocks[shocks < 0]
    ref = float(down[np.argmin(np.abs(down + 0.05))]) if down.size else float(shocks[0])
    at = ca.sel(initial_shock=ref)
    rows = []
    for inst in names:
        a = at.sel(instrument=inst)
        amp = a.amplification.values
        rows.append({"instrument": inst, "median amplification": float(np.nanmedian(amp)),
                     "max amplification": float(np.nanmax(amp)) if np.isfinite(amp).any() else np.nan,
                     "median liquidated (USD)": float(a.liquidated_notional.median()),
                     "visible book exhausted (%)": 100 * float(a.book_exhausted.mean()),
                     "median rounds": float(a.rounds.median())})
    parts.append(f"<h3>At an initial shock of {ref:+.0%}</h3>"
                 + _table(pd.DataFrame(rows).set_index("instrument")) + depth_note)
    # when in the day the books were most fragile: amplification at the reference shock by
    # UTC hour, over every day of the results
    by_hour = at.amplification.groupby(at.time.dt.hour).median()
    fig, ax = plt.subplots(figsize=(9, 3))
    for inst in names:
        ax.plot(by_hour.hour.values, by_hour.sel(instrument=inst).values, marker="o", ms=3, label=inst)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xlabel("hour of day (UTC)")
    ax.set_ylabel(f"median amplification at {ref:+.0%}")
    ax.set_xticks(range(0, 24, 2))
    ax.legend(fontsize=8)
    fig.tight_layout()
    parts.append("<h3>Fragility by time of day</h3>" + _png(fig) + depth_note)
    frag = at.amplification.to_dataframe().dropna(subset=["amplification"])
    frag = frag.sort_values("amplification", ascending=False).groupby(level="instrument", sort=False).head(3)
    frag = frag.assign(**{"final move (%)": (at.final_price / at.mid_price - 1).to_series().loc[frag.index] * 100,
                          "liquidated (USD)": at.liquidated_notional.to_series().loc[frag.index]})
    frag = frag.assign(**{"past the visible book": at.book_exhausted.to_series().loc[frag.index].map(
        {True: "yes", False: "no"})})
    frag.index = pd.Index([f"{i} {pd.Timestamp(t):%Y-%m-%d %H:%M}" for i, t in frag.index], name="instrument, time")
    parts.append(f"<h3>Most fragile times: the 3 largest amplifications at {ref:+.0%} per instrument</h3>"
                 + _table(frag[["amplification", "final move (%)", "liquidated (USD)", "past the visible book"]])
                 + depth_note)
    return "\n".join(parts)


STAGE_LABELS = {"open_validate": "open + validate", "graph": "build graphs", "read_decode": "read + decode",
                "kernel": "kernels", "encode_write": "encode + write", "other": "other task work",
                "scheduling_idle": "scheduling + idle"}


def _timing_section(results_path) -> str:
    """Where each computed day's wall time went (the run's own breakdown), in seconds and as
    shares of the day; the kernels' own seconds by kernel."""
    stages = store.run_stages(results_path)
    if not stages:
        return ""
    rows, kernels = {}, {}
    for day, st in stages.items():
        parts = st.get("breakdown", {})
        total = sum(parts.values()) or 1.0
        rows[day] = {STAGE_LABELS.get(k, k): f"{v:.2f} s ({v / total:.0%})" for k, v in parts.items()}
        kernels[day] = {k: f"{v:.2f} s" for k, v in st.get("kernels", {}).items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "day"
    kernel_table = pd.DataFrame.from_dict(kernels, orient="index").fillna("")
    kernel_table.index.name = "day"
    return ("<h2>Where the time went</h2><p class='meta'>Each day's wall time, split as the run measured "
            "it (task time divided by the threads that ran it; see docs/operations.md). Days skipped "
            "because their results were current keep the figures of the run that computed them.</p>"
            + _table(table) + "<h3>Kernel seconds</h3>" + _table(kernel_table))


def _contents(body: list[str]) -> list[str]:
    """Give every section heading an anchor and put a table of contents after the
    operator's section (the first)."""
    import re  # noqa: PLC0415

    entries: list[tuple[str, str]] = []
    out: list[str] = []
    for part in body:
        def anchor(match):
            n = len(entries)
            entries.append((f"s{n}", re.sub(r"<[^>]+>", "", match.group(1))))
            return f"<h2 id='s{n}'>{match.group(1)}</h2>"
        out.append(re.sub(r"<h2>(.*?)</h2>", anchor, part))
    if len(entries) < 2:
        return out
    toc = "<nav><b>Contents</b><ol>" + "".join(f"<li><a href='#{a}'>{t}</a></li>" for a, t in entries) + "</ol></nav>"
    first = next(i for i, part in enumerate(out) if "<h2 id='s0'>" in part)
    return out[:first] + [toc] + out[first:]


def write_report(results_path, out_path, *, title: str = "gpu_risk report", meta: dict | None = None,
                 limits=None, operator: dict | None = None) -> Path:
    """Write the HTML report of every complete day in ``results_path``; returns its path.
    ``limits`` (:class:`gpu_risk.limits.Limits`): default, those the last run recorded;
    ``operator``: their :func:`~gpu_risk.limits.operator_summary`, where already computed."""
    out_path = Path(out_path)
    days = store.results_days(results_path)
    results = store.open_results(results_path)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='meta'>Written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} from "
            f"{html.escape(str(results_path))}; {len(days)} complete day(s): "
            f"{html.escape(', '.join(days))}.</p>"]
    for key, value in (meta or {}).items():
        if isinstance(value, dict):
            value = "; ".join(f"{k} {v}" for k, v in value.items() if v not in (None, "None"))
        body.append(f"<p class='meta'><b>{html.escape(key)}</b>: {html.escape(str(value))}</p>")
    if days:
        if operator is None:
            operator = operator_summary(results_path, limits)
        body.append(operator_section(results, days, operator))
        body.append(trends_section(results, days))
        for family in families().values():
            # a family's section only where some day holds its results
            if family.report is not None and any(g in results[d].children for d in days for g in family.groups):
                body.append(family.report(results, days))
        body.append(_timing_section(results_path))
    else:
        body.append("<p>No complete day in the results store yet.</p>")
    body = _contents(body)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(page)
    tmp.replace(out_path)  # atomic: a reader never sees half a report
    return out_path
