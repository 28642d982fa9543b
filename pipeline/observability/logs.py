"""Structured JSON logs: one object per line on stdout, with trace ids and no secrets.

    log = get_logger(__name__)
    log.info("message_sent", request_id=rid, to=req.to, duration_ms=42)   # `to` is masked

Fields follow docs/observability.md: ts, level, event, stage, instance, trace_id, span_id, …
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from pipeline.observability.context import current_span_id, current_trace_id
from pipeline.observability.redaction import redact


def _add_trace(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    trace_id = current_trace_id()
    if trace_id:
        event.setdefault("trace_id", trace_id)
        event.setdefault("span_id", current_span_id())
    return event


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    return {k: redact(v, k) for k, v in event.items()}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(stage: str, instance: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library (uvicorn, aiokafka, faststream) to JSON on `stream`."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_trace,
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact,
            _stage_fields(stage, instance),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO about connections; their warnings still come through.
    for name in ("aiokafka", "kafka", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _stage_fields(stage: str, instance: str) -> Any:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event.setdefault("stage", stage)
        event.setdefault("instance", instance)
        return event

    return add


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
