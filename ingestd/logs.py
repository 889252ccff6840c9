"""Logging set-up: one JSON object a line, or console rendering on a terminal.

structlog's events and the standard library's ``logging`` (psycopg, psycopg_pool,
watchdog, Python warnings) go through one handler on one stream, so every line is
rendered the same way and two threads never interleave within a line. Uncaught
exceptions, in the main thread or any other, come out the same way.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from types import TracebackType
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
_HANDLER_NAME = "ingestd"

log = structlog.get_logger("ingestd.logs")


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto",
              stream: TextIO | None = None, quiet: tuple[str, ...] = ()) -> None:
    """(Re)configure logging; safe to call again on SIGHUP to change the level.

    ``quiet``: loggers whose info is chatter for this process (a one-off command does not
    report the embedded server it borrows); their warnings still show."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    rendering: list[Processor] = (
        # ConsoleRenderer formats exceptions itself; escape codes only for a terminal.
        [_readable_values, structlog.dev.ConsoleRenderer(colors=stream.isatty())]
        if use_console
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_drop_known_noise)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Other libraries' info is chatter (psycopg_pool logs every connection it hands
    # out): their warnings and errors always show, their details only at debug.
    root.setLevel(logging.DEBUG if level == "debug" else max(logging.WARNING, _LEVELS[level]))
    logging.getLogger("ingestd").setLevel(_LEVELS[level])
    for name in quiet:
        logging.getLogger(name).setLevel(max(logging.WARNING, _LEVELS[level]))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def _drop_known_noise(record: logging.LogRecord) -> bool:
    """False for third-party lines that report no problem at a level that says otherwise."""
    # watchdog (7.x) logs this at ERROR when its emitter thread polls once more after
    # Observer.stop(): a shutdown race in which nothing is lost.
    return not (record.name.startswith("watchdog.")
                and "called when the thread is inactive" in record.getMessage())


def _excepthook(exc_type: type[BaseException], exc: BaseException,
                tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    log.critical("exception.uncaught", thread=threading.current_thread().name,
                 exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as the default hook: a thread's sys.exit() is not an error
    log.error("exception.uncaught", thread=args.thread.name if args.thread else None,
              exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _readable(value: Any) -> Any:
    """A dict or list as ``k:v,k:v`` / ``a,b`` when flat, else compact JSON."""
    if not isinstance(value, dict | list | tuple):
        return value
    items = value.values() if isinstance(value, dict) else value
    if value and all(isinstance(v, str | int | float | bool) for v in items):
        if isinstance(value, dict):
            return ",".join(f"{k}:{v}" for k, v in value.items())
        return ",".join(str(v) for v in value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _readable_values(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """For the console: nested values readably, not as Python reprs."""
    return {k: v if k in ("exc_info", "stack_info") else _readable(v)
            for k, v in event_dict.items()}
