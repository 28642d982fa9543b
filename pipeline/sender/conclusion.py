"""The conclusion: a request's one outcome record, published through the Sink, then its offset done.

    conclude = Concluder(sink, telemetry, results_topic=results, dead_letters_topic=dead, holds=holds,
                         clock=time.monotonic)
    await conclude.outcome(work, Terminal(MessageOutcome.SENT), wamid="wamid.…")  # send.results or dead-letters
    await conclude.dead_letter(tracker, origin, rejected, span, context)         # a record that is no request
    await conclude.reroute(tracker, origin, reroute, span, context)              # re-published keyed by its number
    conclude.fatal                     # set when publishing can never succeed again: stop the process

`holds(partition, tracker)` says whether `tracker` is still the partition's (the engine's ownership).

Contract, for each of the three:
* it publishes exactly one record (a `SendResult` keyed by the number, a `DeadLetter` keyed like its
  origin, or the re-routed request keyed by its number), through `Sink.publish` with the input
  partition as `source_partition` (so it lands in that partition's transaction), and retries a
  timed-out or failed publish with a growing delay (at most 5 s) until the broker acknowledges;
* then, and only then, it marks the record's offset done (`OffsetTracker.done`): an outcome is
  durable before its offset can be committed;
* if the partition is lost before the acknowledgement (`holds` turns false) it stops and marks
  nothing: the partition's next owner makes the outcome;
* a producer that can never publish again (fenced, its transaction gone) sets `fatal` and the
  error is raised, never retried: the process must restart from its last commit (commits.py).
  Publishes that fail the same way once `fatal` is set mark nothing and raise nothing: one error
  is reported, not one per outcome in flight.
Telemetry is one call per event: `concluded`, `rejected`, `rerouted`, `handed_back`, `publish_failed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from opentelemetry.context import Context
from opentelemetry.trace import Span

from pipeline.contracts import DeadLetterReason, MessageOutcome
from pipeline.sender.decode import Rejected
from pipeline.sender.intake import Reroute
from pipeline.sender.offsets import OffsetTracker
from pipeline.sender.outcomes import Sink, dead_letter_record, result_record
from pipeline.sender.retry import Terminal
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Origin, Work

_JSON_HEADERS = (("content-type", b"application/json"),)
_PUBLISH_RETRY_MAX = 5.0
# The producer can no longer publish in this process' transactions: fatal, not retried.
_BROKEN_PRODUCER = (ProducerFenced, InvalidProducerEpoch, OutOfOrderSequenceNumber, IllegalOperation)


class Concluder:
    def __init__(self, sink: Sink, telemetry: SenderTelemetry, *, results_topic: str, dead_letters_topic: str,
                 holds: Callable[[int, OffsetTracker], bool], clock: Callable[[], float]) -> None:
        self._sink = sink
        self._telemetry = telemetry
        self._results_topic = results_topic
        self._dead_letters_topic = dead_letters_topic
        self._holds = holds
        self._now = clock
        self.fatal: BaseException | None = None

    async def outcome(self, work: Work, verdict: Terminal, *, wamid: str | None = None) -> None:
        """Publish the request's one outcome, then mark its offset done."""
        outcome = verdict.outcome
        if outcome is MessageOutcome.DEAD_LETTERED:
            error = verdict.error
            text = (error.message or "") if error is not None else ""
            if error is not None and error.code is not None:
                text = f"Graph API code {error.code} ({error.error_class.value}): {text}"
            reason = verdict.reason or DeadLetterReason.UNEXPECTED_ERROR
            topic, key = self._dead_letters_topic, work.origin.key
            value = dead_letter_record(work.origin, reason, text, work.request.request_id)
        else:
            topic, key = self._results_topic, work.number.encode()
            value = result_record(work, outcome, wamid=wamid)
        headers = (*_JSON_HEADERS, ("request-id", work.request.request_id.encode()))
        assert work.tracker is not None
        if not await self._publish(work.tracker, work.origin, topic, key, value, headers, work.context):
            self._telemetry.handed_back(work, "revoked" if self.fatal is None else "fenced")
            return
        work.tracker.done(work.origin.offset)
        self._telemetry.concluded(work, outcome, wamid=wamid, duration_ms=(self._now() - work.received) * 1000,
                                  reason=verdict.reason)

    async def dead_letter(
        self, tracker: OffsetTracker, origin: Origin, rejected: Rejected, span: Span, context: Context
    ) -> None:
        """A record that is no request we may send: its dead letter, then its offset done."""
        value = dead_letter_record(origin, rejected.reason, rejected.error, rejected.request_id)
        headers = [*_JSON_HEADERS]
        if rejected.request_id:
            headers.append(("request-id", rejected.request_id.encode()))
        published = await self._publish(tracker, origin, self._dead_letters_topic, origin.key, value, headers, context)
        if published:
            tracker.done(origin.offset)
        self._telemetry.rejected(origin, rejected.reason, rejected.error, rejected.request_id, span,
                                 published=published)

    async def reroute(self, tracker: OffsetTracker, origin: Origin, reroute: Reroute, span: Span,
                      context: Context) -> None:
        """A request on a partition that does not own its number: re-published keyed by the number."""
        request, number = reroute.request, reroute.number
        value = request.model_dump_json().encode()
        headers = [(k, v) for k, v in origin.headers if k != "traceparent"]
        published = await self._publish(tracker, origin, origin.topic, number.encode(), value, headers, context)
        if published:
            tracker.done(origin.offset)
        self._telemetry.rerouted(request.request_id, number, origin, reroute.home, span, published=published)

    async def _publish(
        self, tracker: OffsetTracker, origin: Origin, topic: str, key: bytes | None, value: bytes,
        headers: Sequence[tuple[str, bytes]], context: Context | None,
    ) -> bool:
        """Publish until acknowledged; False if the partition was lost meanwhile (nothing to commit)."""
        delay = 0.1
        while True:
            if not self._holds(origin.partition, tracker):
                return False
            try:
                await self._sink.publish(topic, key, value, headers, context=context, source_partition=origin.partition)
                return True
            except _BROKEN_PRODUCER as exc:
                # Retrying cannot help (fenced, or the transaction is gone): the process must stop and
                # restart from its last commit (commits.py), not wait forever with its partitions held.
                if self.fatal is None:
                    self.fatal = exc
                    self._telemetry.publish_failed(topic, origin, exc, retry_in=-1.0)
                    raise
                # The same end, already reported: every outcome waiting on the commit gate fails at
                # once (3,381 of them, two error lines each, in a run on a starved machine). Like a
                # lost partition: nothing is marked done, and the restart makes the outcome.
                return False
            except (KafkaError, TimeoutError) as exc:
                self._telemetry.publish_failed(topic, origin, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _PUBLISH_RETRY_MAX)
