"""`compiled`: numba's `njit` with its on-disk cache where one can be written, and without it where not.

numba caches compiled code next to the module or under `$HOME/.cache`; where neither is writable (a read-only
install with no usable home) `njit(cache=True)` raises at import, which would take the whole detector down.
There the function compiles again in each process instead (~6 s on the first small wave), and works the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: `numba.njit(cache=True, **options)`, or `numba.njit(**options)` where nothing can be cached."""
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available for file ..."
            return numba.njit(**options)(function)
    return wrap
