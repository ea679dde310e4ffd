"""A bounded, thread-safe LRU cache of predictions (they are deterministic per model version)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class LRUCache:
    """Least-recently-used mapping with at most ``maxsize`` entries; ``maxsize`` 0 stores nothing."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        """The cached value, or ``None``; counts a hit or a miss."""
        if not self.maxsize:
            return None
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: object) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        if not self.maxsize:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
