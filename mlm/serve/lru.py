"""The one least-recently-used cache of the package: loaded models, answers, time-lapse skeletons, Curves views.

Every cache the server keeps is bounded, because a public Space serves whoever comes: without a bound, visitors
asking about every run folder or every sentence would grow the process until it is killed. A `pinned` entry (a
shipped model) neither counts against the bound nor leaves; the others go least recently used first. Thread-safe:
the web server's threads and the inference worker share these caches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def never(key) -> bool:
    return False


class LRU(Generic[K, V]):
    """A mapping of at most `size` entries besides the pinned ones; `get` counts as a use."""

    def __init__(self, size: int, pinned: Callable[[K], bool] = never):
        if size < 0:
            raise ValueError(f"an LRU cache holds 0 or more entries, not {size}")
        self.size, self.pinned = size, pinned
        self._items: OrderedDict[K, V] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Keep `value` under `key` (replacing what was there), then drop the least recently used entries that are
        not pinned beyond `size`. `pinned` is asked here only, so it may be as slow as reading a file."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            evictable = [k for k in self._items if not self.pinned(k)]
            for old in evictable[: max(0, len(evictable) - self.size)]:
                del self._items[old]

    def keys(self) -> list[K]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
