"""numba's ``njit``, or where numba cannot be imported, the function itself.

numba is a dependency: the planner's pricing search (``planner/knapsack.py``), a lone replica's
queue bound (``queue.py``), and the slot maths' line and duty-cycle capacity (``slot.py``) are
compiled with it, each statement for statement its Python source, so both give the same numbers
and the source runs where numba does not (correct, far slower: the planner's budgets assume the
compiled speed).
"""

from __future__ import annotations

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; a platform without it runs the source
    def njit(*args: object, **kw: object) -> object:
        """Stand-in for ``numba.njit``: the function itself, uncompiled."""
        return args[0] if args and callable(args[0]) else (lambda f: f)

__all__ = ["njit"]
