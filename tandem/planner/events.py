"""A discrete-event loop: callbacks run in time order on a virtual clock."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    """Runs scheduled callbacks in (time, scheduling order); `now` is the virtual clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._order = itertools.count()

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` at `when` (or now, if that has passed)."""
        heapq.heappush(self._queue, (max(when, self.now), next(self._order), callback, args))

    def after(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay, callback, *args)

    def clock(self) -> float:
        return self.now

    def run(self, until: float | None = None, done: Callable[[], bool] | None = None) -> None:
        """Process events until none are left, until `done()` holds after an event, or until
        the next is later than `until` (then the clock reads `until`)."""
        queue = self._queue
        while queue:
            if until is not None and queue[0][0] > until:
                self.now = until
                return
            when, _, callback, args = heapq.heappop(queue)
            self.now = when
            callback(*args)
            if done is not None and done():
                return
