"""Structured JSON logs: one object per line on stdout, with trace ids and no secrets.

    log = get_logger(__name__)
    log.info("message_sent", request_id=rid, to=req.to, duration_ms=42)   # `to` is masked

Fields follow docs/observability.md: ts, level, event, logger, stage, instance, trace_id, span_id, …
Libraries' standard-library records (uvicorn, aiokafka, FastStream) go through the same formatter,
so every line on stdout is JSON and passes through the same redaction.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from pipeline.observability.context import current_trace_ids
from pipeline.observability.redaction import redact, scrub_url
from pipeline.observability.stage import current_stage

OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})
# Loggers whose INFO lines are per-connection or per-message chatter; their warnings still come through
# (the Kafka clients', the first two, at most once per 10 s and message).
_KAFKA_LOGGERS = ("aiokafka", "kafka")
_QUIET_AT_INFO = (*_KAFKA_LOGGERS, "httpx", "httpcore")
# FastStream logs through these with `propagate = False` and its own coloured handler; ours replaces it.
_FASTSTREAM_LOGGERS = ("faststream", "faststream.access.kafka")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_PER_MESSAGE = frozenset({"Received", "Processed"})  # FastStream's lines around every message

_defaults: dict[str, str] = {"stage": "", "instance": ""}


class _PipelineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Our handler: a distinct type, so re-configuring replaces it and nothing else.

    Without an explicit stream it writes to whatever `sys.stdout` is *now* (test runners swap it),
    and FastStream, which adds a plain-text handler unless it finds one on `sys.stdout`, finds ours.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._own_stream = stream
        super().__init__(stream or sys.stdout)

    @property
    def stream(self) -> TextIO:
        return self._own_stream if self._own_stream is not None else sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        if self._own_stream is not None:
            self._own_stream = value


def _add_trace(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    # An event that names its trace (the sender's outcome line: the request's trace, logged from
    # another task) keeps it, and gets no span id from whatever span happens to be current.
    if "trace_id" not in event:
        ids = current_trace_ids()
        if ids is not None:
            event["trace_id"], event["span_id"] = ids
    return event


class _UtcTimestamp:
    """`ts`: ISO 8601 in UTC with microseconds, `2026-12-07T18:25:01.123456Z`.

    Written by hand because structlog's `TimeStamper(fmt="iso", utc=True)` builds and formats a whole
    datetime for every line (3.8 µs, a fifth of the sender's outcome line); the part up to the second
    changes once a second, so it is formatted once a second. It also always writes the microseconds,
    which `isoformat()` drops when they happen to be zero.
    """

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one tuple, swapped whole: threads log too

    def __call__(self, _: WrappedLogger, __: str, event: EventDict) -> EventDict:
        second, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        cached, prefix = self._second
        if second != cached:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event["ts"] = f"{prefix}.{nanoseconds // 1000:06d}Z"
        return event


def _stage_fields(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.setdefault("stage", current_stage() or _defaults["stage"])
    event.setdefault("instance", _defaults["instance"])
    return event


def _foreign_fields(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Tidy standard-library records; uvicorn's access line becomes fields, secret query values redacted."""
    args = event.pop("positional_args", None)
    # Copies of the message that another handler's formatting or uvicorn's colours left on the record.
    event.pop("message", None)
    event.pop("color_message", None)
    record = event.get("_record")
    if record is not None and record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        _client, method, path, http_version, status = args
        event.update(event="http_request", method=method, path=scrub_url(str(path)), status=status,
                     http_version=http_version)
    return event


# Added by the processors above from the record or the clock, never from data: nothing to redact.
_OWN_FIELDS = frozenset({"level", "logger", "ts", "trace_id", "span_id"})


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    return {k: v if k in _OWN_FIELDS else redact(v, k) for k, v in event.items()}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _DropNoise(logging.Filter):
    """Per-message chatter is dropped unless the level is DEBUG: FastStream's "Received"/"Processed"
    lines and access lines of Prometheus scrapes and health probes."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level <= logging.DEBUG:
            return True
        if record.name.startswith("faststream.access") and record.msg in _PER_MESSAGE:
            return record.levelno >= logging.WARNING
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            return str(record.args[2]).partition("?")[0] not in OPS_PATHS
        return True


class _ExpectedKafkaErrors(logging.Filter):
    """aiokafka logs at error what is routine while a group's coordinator is being elected (every start
    on a fresh broker, every coordinator move): a warning, so that an error line means an error."""

    _ROUTINE = ("GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError", "NotCoordinatorError")

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and record.name == "aiokafka.consumer.group_coordinator"
            and str(record.msg).startswith("Group Coordinator Request failed")
            and any(name in str(record.args) for name in self._ROUTINE)
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Repeats(logging.Filter):
    """A Kafka client's warning or error repeated within `window` seconds is counted, not printed:
    while a broker is down aiokafka logs each failed connection, about every 100 ms per node. The
    first line after the window carries `repeated`, how many were held back since the last one."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window
        self._clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (printed at, held back)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(_KAFKA_LOGGERS):
            return True
        key = (record.name, record.levelno, str(record.msg))  # the template: "node %s" repeats for every node
        now = self._clock()
        printed = self._seen.get(key)
        if printed is not None and now - printed[0] < self._window:
            self._seen[key] = (printed[0], printed[1] + 1)
            return False
        if printed is not None and printed[1]:
            record.repeated = printed[1]
        self._seen[key] = (now, 0)
        return True


def configure_logging(stage: str, instance: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (uvicorn, aiokafka, faststream) to JSON on `stream`.

    Safe to call again (tests, several stages in one process): it replaces its own handler only.
    """
    _defaults.update(stage=stage, instance=instance)
    numeric_level = logging.getLevelName(level) if isinstance(level, str) else level
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        _UtcTimestamp(),
        _add_trace,
        structlog.processors.format_exc_info,
    ]
    handler = _PipelineHandler(stream)
    render: list[Processor] = [_redact, _stage_fields, structlog.processors.JSONRenderer(serializer=_dumps)]
    # The pipeline's own events are rendered by structlog and written straight to the handler's
    # stream, filtered by level before any work: the standard library's route (a LogRecord, copied
    # again by the formatter, the handler's filters) cost about half of a line's 43 µs, paid once per
    # outcome by the sender. Libraries' records still come through the handler, formatted the same.
    structlog.configure(
        processors=[*shared, *render],
        logger_factory=_LineWriterFactory(handler),
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _foreign_fields],
        pass_foreign_args=True,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    # On the handler too: FastStream sets its own loggers to INFO, which the root level cannot override.
    handler.setLevel(numeric_level)
    handler.setFormatter(formatter)
    handler.addFilter(_DropNoise(numeric_level))
    handler.addFilter(_ExpectedKafkaErrors())
    handler.addFilter(_Repeats())

    root = logging.getLogger()
    _replace_handlers(root, handler)
    root.setLevel(numeric_level)
    for name in _QUIET_AT_INFO:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))
    _PerMessageQuietLogger.drop = numeric_level > logging.DEBUG
    for name in _FASTSTREAM_LOGGERS:
        # Our handler on the logger itself: FastStream sees a stdout handler and adds none of its own.
        _replace_handlers(_per_message_quiet(name), handler)
    for name in _UVICORN_LOGGERS:
        # uvicorn's own dictConfig (when a server is built without log_config=None) installs plain
        # text handlers that do not propagate; send those records to the root handler instead.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class _PerMessageQuietLogger(logging.Logger):
    """FastStream logs "Received" and "Processed" around every message at INFO; dropping them here,
    before a LogRecord exists, saves ~20 µs of CPU per message (bench/observability_overhead.py)."""

    drop = True

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.drop and level < logging.WARNING and msg in _PER_MESSAGE:
            return
        super().log(level, msg, *args, **kwargs)


def _per_message_quiet(name: str) -> logging.Logger:
    """The named logger, as a `_PerMessageQuietLogger` (FastStream finds it by name)."""
    existing = logging.Logger.manager.loggerDict.get(name)
    if isinstance(existing, logging.Logger):
        if not isinstance(existing, _PerMessageQuietLogger):
            # Created before setup() (a broker built first): same state, quieter class.
            existing.__class__ = _PerMessageQuietLogger
        return existing
    previous = logging.getLoggerClass()
    logging.setLoggerClass(_PerMessageQuietLogger)
    try:
        return logging.getLogger(name)
    finally:
        logging.setLoggerClass(previous)


def _replace_handlers(logger: logging.Logger, handler: logging.Handler) -> None:
    """Swap our previous handler and plain console handlers (basicConfig's, FastStream's) for
    `handler`; keep specialised ones (pytest's capture handlers subclass StreamHandler)."""

    def console(h: logging.Handler) -> bool:
        return isinstance(h, _PipelineHandler) or type(h) is logging.StreamHandler

    logger.handlers[:] = [h for h in logger.handlers if not console(h)] + [handler]


class _LineWriter:
    """structlog's final logger: one rendered line to the handler's current stream, flushed (as the
    handler would), under the handler's lock (threads log too)."""

    __slots__ = ("_handler", "name")

    def __init__(self, handler: _PipelineHandler, name: str) -> None:
        self._handler = handler
        self.name = name  # read by add_logger_name

    def msg(self, line: str) -> None:
        handler = self._handler
        with handler.lock or contextlib.nullcontext():
            stream = handler.stream
            stream.write(line + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


class _LineWriterFactory:
    def __init__(self, handler: _PipelineHandler) -> None:
        self._handler = handler

    def __call__(self, name: str | None = None, *_: Any) -> _LineWriter:
        return _LineWriter(self._handler, name or "")


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger: `.info(event, **fields)`, `.warning(…)`, `.exception(…)`, `.bind(**fields)`."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
