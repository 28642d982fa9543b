"""The store's telemetry as one hook object: the projection and the read API call it, never metrics.

    hooks = StoreTelemetry()
    hooks.batch_committed(seconds=0.02, written={"outbound_messages": 3}, newest_ms={"send.results": 1764000000000})
    hooks.db_error("write")
    with hooks.reading("/v1/messages/{request_id}"): ...
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

from pipeline.contracts.vocabulary import DeadLetterReason, Stage
from pipeline.observability import get_logger
from pipeline.observability import metrics as m

log = get_logger(__name__)


TABLES = ("outbound_messages", "status_events", "inbound_messages")
OPERATIONS = ("write", "read", "retention", "erase", "connect")


class StoreTelemetry:
    def __init__(self, routes: tuple[str, ...] = ()) -> None:
        # Every series exists at 0 from the start: rates and alerts see the first increment.
        for table in TABLES:
            m.STORE_ROWS.labels(table=table)
            m.STORE_RETENTION_DELETED.labels(table=table)
        for operation in OPERATIONS:
            m.STORE_DB_ERRORS.labels(operation=operation)
        for route in routes:
            m.STORE_READ_DURATION.labels(route=route)

    def lag(self, pending: dict[str, int], newest_ms: dict[str, int]) -> None:
        """Between batches: a topic with records waiting is as far behind as its newest committed record
        is old (so the gauge grows while the store is stuck); a topic with none waiting is not behind."""
        now_ms = time.time() * 1000
        for topic, waiting in pending.items():
            if waiting == 0:
                m.STORE_PROJECTION_LAG.labels(topic=topic).set(0)
            elif topic in newest_ms:
                m.STORE_PROJECTION_LAG.labels(topic=topic).set(max(0.0, (now_ms - newest_ms[topic]) / 1000))

    def batch_committed(self, seconds: float, written: Mapping[str, int], newest_ms: Mapping[str, int]) -> None:
        m.STORE_BATCH_DURATION.observe(seconds)
        for table, rows in written.items():
            if rows:
                m.STORE_ROWS.labels(table=table).inc(rows)
        now_ms = time.time() * 1000
        for topic, timestamp_ms in newest_ms.items():
            m.STORE_PROJECTION_LAG.labels(topic=topic).set(max(0.0, (now_ms - timestamp_ms) / 1000))

    def db_error(self, operation: str, error: Exception) -> None:
        m.STORE_DB_ERRORS.labels(operation=operation).inc()
        # The message of BackendUnavailable names the engine and the error type, never the DSN.
        log.warning("store_db_error", operation=operation, error=str(error))

    def dead_lettered(self, reason: DeadLetterReason, topic: str, partition: int, offset: int) -> None:
        m.DEAD_LETTERS.labels(stage=Stage.STORE, reason=reason).inc()
        log.warning("record_dead_lettered", reason=reason, topic=topic, partition=partition, offset=offset)

    def retention_removed(self, removed: Mapping[str, int]) -> None:
        for table, rows in removed.items():
            m.STORE_RETENTION_DELETED.labels(table=table).inc(rows)
        if any(removed.values()):
            log.info("retention_pass", **{f"removed_{t}": n for t, n in removed.items()})

    @contextlib.contextmanager
    def reading(self, route: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            m.STORE_READ_DURATION.labels(route=route).observe(time.perf_counter() - started)
