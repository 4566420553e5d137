"""One event a log line: its name, then `key=value` fields, e.g.
`request_routed request_id=3f2a decode=decode-0 prefill=prefill-1`.

Every tandem service logs this way, so a line can be found by its event and a request
followed by its id across the gateway, the sidecar and the pods. Fields are formatted only
when the level is enabled.
"""

from __future__ import annotations

import logging


class EventLog:
    """A `logging.Logger` that takes an event name and its fields as keywords."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def debug(self, event: str, /, **fields: object) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, /, **fields: object) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, /, **fields: object) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, /, **fields: object) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, /, **fields: object) -> None:
        """An error with the traceback of the exception being handled (logs only); call it
        from an `except` block."""
        if self.logger.isEnabledFor(logging.ERROR):
            self.logger.exception("%s", event_line(event, fields), stacklevel=2)  # noqa: LOG004

    def enabled(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)

    def _log(self, level: int, event: str, fields: dict[str, object]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", event_line(event, fields), stacklevel=3)


def event_line(event: str, fields: dict[str, object]) -> str:
    return " ".join([event, *(f"{key}={value}" for key, value in fields.items())])
