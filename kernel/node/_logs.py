"""Structured logs: one JSON object per line, carrying the node id.

A record's ``agent_id`` and ``correlation_id`` are the attributes the kernel's log
record factory gives every record (``kerna._log_context``): the agent whose worker made
it and the conversation of the message it was handling (so a user's ``log.info`` inside
a handler carries them too); they are left out when None (outside any agent). Other
``extra`` values are kept as keys of the object.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has: not extras. A plain LogRecord, not makeLogRecord's,
# which the record factory (kerna._log_context) gives agent_id and correlation_id.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT = frozenset({"agent_id", "correlation_id"})  # kerna._log_context's


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ``ts`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, ``node``, then ``agent_id`` and ``correlation_id`` when
    known, the record's other extras, and ``exc`` (the traceback) when there is one."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node_id,
        }
        for key, value in vars(record).items():
            if key in _CONTEXT and value is None:
                continue  # made outside any agent
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, default=str)


def _timestamp(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def configure_logging(node_id: str, level: str, fmt: str) -> None:
    """Send the root logger's records to stderr, as JSON lines (``fmt="json"``) or
    plain text with the node id."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
