"""The power depth model's fit (gpu_risk.fit_depth_profile, `gpu-risk fit-depth`): exact on
books built from the model, and the synthetic market's exponents reproduced from the shared
Binance capture they were fitted on."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_risk import fit_depth_profile
from gpu_risk.errors import InputError
from gpu_risk.synth import DEPTH_EXPONENTS

FEED = Path(__file__).resolve().parents[2] / "shared/data/real/binance_hftbacktest_feed"


def power_book(rng, gamma_bid, gamma_ask, rows=40, levels=60, mid=50_000.0):
    """Snapshots whose cumulative size is exactly c d^gamma at every level (d the relative
    distance from the mid, levels at random increasing distances)."""
    out = {}
    first = rng.uniform(1e-5, 1e-4, size=(rows, 1))  # the same on both sides: the mid is `mid`
    for side, gamma, sign in (("bid", gamma_bid, -1.0), ("ask", gamma_ask, 1.0)):
        steps = rng.uniform(1e-5, 1e-4, size=(rows, levels))
        steps[:, 0] = 0.0
        distance = first + np.cumsum(steps, axis=1)
        cum = rng.uniform(1.0, 50.0, size=(rows, 1)) * (distance / distance[:, :1]) ** gamma
        out[f"{side}_price"] = mid * (1 + sign * distance)
        out[f"{side}_size"] = np.diff(cum, axis=1, prepend=0.0)
    return xr.Dataset({k: (("time", "level"), v) for k, v in out.items()},
                      coords={"time": np.arange(rows).astype("datetime64[s]").astype("datetime64[ns]"),
                              "level": np.arange(1, levels + 1)})


@settings(max_examples=10, deadline=None)
@given(st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_the_fit_recovers_the_exponent_of_a_power_book(gamma_bid, gamma_ask, visible, seed):
    rng = np.random.default_rng(seed)
    ds = power_book(rng, gamma_bid, gamma_ask)
    fit = fit_depth_profile(ds.assign_attrs(instrument="X"), visible_levels=visible)
    np.testing.assert_allclose(float(fit.depth_exponent_bid.sel(instrument="X")), gamma_bid, rtol=1e-9)
    np.testing.assert_allclose(float(fit.depth_exponent_ask.sel(instrument="X")), gamma_ask, rtol=1e-9)
    assert int(fit.rows.sel(instrument="X")) == 2 * ds.sizes["time"]


def test_empty_levels_are_skipped_and_bad_books_are_one_line_errors():
    rng = np.random.default_rng(1)
    ds = power_book(rng, 1.2, 1.2)
    holed = ds.copy(deep=True)
    holed["bid_price"][:, -5:] = np.nan  # a book that ends early on one side
    holed["bid_size"][:, -5:] = 0.0
    fit = fit_depth_profile(holed.assign_attrs(instrument="X"), visible_levels=10)
    np.testing.assert_allclose(float(fit.depth_exponent.sel(instrument="X")), 1.2, rtol=1e-9)
    with pytest.raises(InputError, match="levels"):
        fit_depth_profile(ds.isel(level=slice(0, 11)).assign_attrs(instrument="X"), visible_levels=10)
    with pytest.raises(InputError, match="no snapshot"):
        fit_depth_profile(ds.isel(time=slice(0, 0)).assign_attrs(instrument="X"), visible_levels=10)


@pytest.mark.skipif(not FEED.exists(), reason="the shared Binance captures are not here")
def test_the_synthetic_market_exponent_is_the_fit_of_the_shared_capture(tmp_path):
    """BTCUSDT's exponent in the synthetic market is what `gpu-risk fit-depth` gives on the
    shared USD-M capture imported with its 1,000 levels."""
    from typer.testing import CliRunner

    from gpu_risk.cli import app
    from gpu_risk.importers.binance import import_binance

    import_binance([FEED / "usdm/btcusdt_20240808.gz"], 1000, tmp_path / "deep.zarr")
    result = CliRunner().invoke(app, ["fit-depth", str(tmp_path / "deep.zarr"), "--json"])
    assert result.exit_code == 0, result.output
    fitted = {row["instrument"]: row for row in json.loads(result.output)["instruments"]}
    assert abs(fitted["BTCUSDT"]["depth_exponent"] - DEPTH_EXPONENTS["BTCUSDT"]) < 0.0005
    assert fitted["BTCUSDT"]["levels"] == 1000 and fitted["BTCUSDT"]["max_distance"] > 0.001


def test_bad_depth_settings_are_one_line_errors(tmp_path):
    """A depth exponent outside (0, 10], the power model without fitted exponents, an
    unknown model name, and a fit on a book too shallow: each one line naming what."""
    import copy

    from conftest import MARKET_SPEC
    from test_contagion import PERPS, SPEC, make_accounts, make_books
    from typer.testing import CliRunner

    from gpu_risk import cascade, contagion
    from gpu_risk.cli import app
    from gpu_risk.store import market_from_dict, write_book

    spec = copy.deepcopy(MARKET_SPEC)
    first = next(iter(spec["instruments"]))
    spec["instruments"][first]["depth_exponent"] = -1.0
    from gpu_risk.errors import SchemaError
    from gpu_risk.validate import validate_market

    with pytest.raises((InputError, SchemaError), match="depth_exponent") as found:
        validate_market(market_from_dict(spec))
    assert first in str(found.value)
    rng = np.random.default_rng(0)
    market = market_from_dict(SPEC)
    book = make_books(rng)
    positions = make_accounts(rng, market)
    when = book["BTCUSDT"].time.values
    for run in (cascade, contagion):
        with pytest.raises(InputError, match="depth_exponent") as found:
            run(book, positions, market, when, [-0.05], depth_extrapolation="power")
        assert "\n" not in str(found.value) and any(name in str(found.value) for name in PERPS)
        with pytest.raises(ValueError, match="depth_extrapolation must be"):
            run(book, positions, market, when, [-0.05], depth_extrapolation="deep")
    shallow = tmp_path / "shallow.zarr"
    write_book(book["BTCUSDT"].to_dataset(), shallow, "BTCUSDT")
    result = CliRunner().invoke(app, ["fit-depth", str(shallow)])
    assert result.exit_code == 2 and "levels" in result.output and len(result.output.strip().splitlines()) == 1
