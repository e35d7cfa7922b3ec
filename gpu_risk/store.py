"""Every store's public functions in one namespace (``gpu_risk.store.open_book``, ...).

They live by store kind in :mod:`gpu_risk.stores`: ``days`` (atomic day groups, seals,
the writer lock), ``book``, ``positions``, ``market`` and ``results``.
"""

from .coding import decode_margin_mode, encode_margin_mode  # noqa: F401
from .stores.book import *  # noqa: F403
from .stores.book import _check_instrument_name  # noqa: F401
from .stores.book_arrays import INSTRUMENT_ARRAYS, is_instrument_arrays, migrate_book, store_layout  # noqa: F401
from .stores.days import *  # noqa: F403
from .stores.days import _with_attrs  # noqa: F401
from .stores.market import *  # noqa: F403
from .stores.market_history import (  # noqa: F401
    market_history_days,
    open_market_history,
    open_market_history_day,
    write_market_history_day,
)
from .stores.positions import *  # noqa: F403
from .stores.results import *  # noqa: F403
