"""Objects that hold threads and locks start afresh in a forked child (a Gunicorn worker)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable


def reset_after_fork(reset: Callable[[], object]) -> None:
    """Call the bound method ``reset`` in every child forked from now on.

    Only a weak reference is registered (a fork hook cannot be removed), so the hook keeps no
    object alive and does nothing once its object is gone.
    """
    method = weakref.WeakMethod(reset)
    os.register_at_fork(after_in_child=lambda: (bound := method()) is not None and bound())
