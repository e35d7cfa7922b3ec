"""Errors raised on bad input: each names the store, variable, instrument and index."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data.

    Every instance carries where the problem is so that a user can find it in
    their data without re-running anything: ``store`` (path or name),
    ``variable``, ``instrument`` (or asset/account label where that is the
    natural key) and ``index`` (the first offending position along the
    variable's leading dimension), plus ``count`` of offending rows.
    """

    def __init__(
        self,
        problem: str,
        *,
        store: str | None = None,
        variable: str | None = None,
        instrument: str | None = None,
        index: int | None = None,
        label: object | None = None,
        count: int | None = None,
    ):
        self.problem = problem
        self.store = store
        self.variable = variable
        self.instrument = instrument
        self.index = index
        self.label = label
        self.count = count
        where = []
        if store is not None:
            where.append(f"store {store!r}")
        if instrument is not None:
            where.append(f"instrument {instrument!r}")
        if variable is not None:
            where.append(f"variable {variable!r}")
        if index is not None:
            at = f"first bad index {index}"
            if label is not None:
                at += f" ({_cut(str(label))})"
            where.append(at)
        if count is not None and count > 1:
            where.append(f"{count} bad rows in all")
        problem = _cut(problem, 1000)
        message = problem if not where else f"{problem} [{', '.join(where)}]"
        super().__init__(message)


MAX_FIELD = 300  # characters of a bad value shown in a message (a problem: 1,000)


def _cut(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` cut to ``limit`` characters (a 2 MB bad field is not echoed whole)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


class SchemaError(InputError):
    """A store or dataset lacks a variable, or a variable has the wrong dims or dtype."""
