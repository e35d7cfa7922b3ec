"""gpu_risk: GPU-accelerated batch risk over order books and positions stored in Zarr.

Public API (SPEC): ``open_book``, ``open_positions``, ``open_market`` and the writers;
``imbalance_grid``, ``liquidation``, ``stress_surface``, ``cascade``; for studies,
``open_market_history``, ``leverage_day``, ``build_study`` and ``open_study``.
"""

from .cascade import cascade
from .contagion import contagion
from .depth import fit_depth_profile
from .errors import InputError, SchemaError
from .imbalance import imbalance_grid
from .leverage import leverage_day
from .liquidation import liquidation
from .store import (
    open_book,
    open_market,
    open_market_history,
    open_positions,
    open_results,
    write_book,
    write_market,
    write_positions,
)
from .stress import stress_surface
from .study import build_study, open_study
from .validate import validate_book_dataset, validate_market, validate_positions

__version__ = "0.1.0"

__all__ = [
    "cascade",
    "contagion",
    "fit_depth_profile",
    "InputError",
    "imbalance_grid",
    "leverage_day",
    "liquidation",
    "build_study",
    "open_study",
    "stress_surface",
    "SchemaError",
    "open_book",
    "open_market",
    "open_market_history",
    "open_positions",
    "open_results",
    "write_book",
    "write_market",
    "write_positions",
    "validate_book_dataset",
    "validate_market",
    "validate_positions",
]
