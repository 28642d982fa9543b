"""Everything an operator sees of the sender, in one hook object: spans, metric children, gauges, log lines.

    telemetry = SenderTelemetry(tracer, group="delivery-sender")
    span, context = telemetry.record_received(record, request_id)   # the `process` span of a fetched record
    telemetry.lane_created(number, rate=80.0)                    # gauges and every outcome series at 0
    telemetry.attempted(number, "sent", ErrorClass.NONE, None, seconds=0.21, waited=0.01)
    telemetry.concluded(work, MessageOutcome.SENT, wamid="wamid.…", duration_ms=230.5)
    telemetry.circuit_changed(number, change)
    telemetry.probed(number, "ok", 12.0)
    telemetry.rate_decreased(number, 78.4)

The engine's steps call one method per event and hold no metric, span or log code of their own.
Metric children are cached per label set: `labels()` costs a dict build and a lock per call, which
showed in the sender's profile. wamids never leave here raw: logs carry `wamid_ref(wamid)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from prometheus_client import Counter

from pipeline.contracts import CircuitReason, CircuitState, DeadLetterReason, ErrorClass, ErrorInfo, MessageOutcome
from pipeline.contracts.dead_letters import REPLAYED_FROM
from pipeline.observability import get_logger
from pipeline.observability import metrics as m
from pipeline.observability.context import context_from_traceparent
from pipeline.observability.redaction import wamid_ref
from pipeline.observability.tracing import messaging_attributes
from pipeline.whatsapp import KNOWN_ERROR_CODES, GraphApiError

if TYPE_CHECKING:
    from pipeline.sender.breaker import CircuitChange
    from pipeline.sender.scheduler import Lane
    from pipeline.sender.work import Origin, Work

log = get_logger("pipeline.sender.engine")  # the logger name operators' queries already use

_TRIP_REASONS = frozenset({
    CircuitReason.SERVICE_FAILURES, CircuitReason.FAILURE_RATIO, CircuitReason.BLOCKED,
    CircuitReason.PROBE_FAILED, CircuitReason.TRIAL_FAILED,
})


class FetchedRecord(Protocol):
    topic: str
    partition: int
    offset: int
    headers: Any


def trace_id(work: Work) -> str | None:
    return work.traceparent[3:35] if work.traceparent else None


class SenderTelemetry:
    def __init__(self, tracer: Tracer, group: str) -> None:
        self._tracer = tracer
        self._group = group
        self._children: dict[tuple[Any, ...], Any] = {}
        self._blocked: dict[str, ErrorClass] = {}
        # A bound logger once, after `setup()`: the module proxy re-binds on every call.
        self._log = log.bind()

    # --- intake -----------------------------------------------------------------------------------

    def record_received(self, record: FetchedRecord, request_id: str | None) -> tuple[Span, Context]:
        """The CONSUMER span `process {topic}`, parented on the record's traceparent, and its context.

        `request_id`: the decoded request's (None when the record is no request).
        """
        parent = None
        for name, raw in record.headers or ():
            if name == "traceparent" and parent is None:
                parent = context_from_traceparent(raw.decode("ascii", "replace"))
            elif name == REPLAYED_FROM:
                m.REPLAYED.labels(stage="sender").inc()
        span = self._tracer.start_span(
            f"process {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=messaging_attributes(record.topic, record.partition, record.offset, self._group),
        )
        if request_id is not None:
            span.set_attribute("messaging.message.id", request_id)
        return span, trace.set_span_in_context(span)

    # --- lanes ------------------------------------------------------------------------------------

    def lane_created(self, number: str, rate: float) -> None:
        m.RATE_LIMIT_CONFIGURED.labels(phone_number_id=number).set(rate)
        m.RATE_LIMIT.labels(phone_number_id=number).set(rate)
        m.CIRCUIT_STATE.labels(phone_number_id=number).set(CircuitState.CLOSED.gauge_value)
        # Every outcome's series exists at 0 from the number's first message: rate() cannot see the
        # increase that gives birth to a series, so a first burst of failures between two scrapes
        # would move neither the send error ratio nor its alert.
        for outcome in MessageOutcome:
            self._child(m.MESSAGES, number, outcome.value)
        for result in ("ok", "failed"):  # likewise the circuit's probes, for its panel and the first probe
            self._child(m.CIRCUIT_PROBES, number, result)

    def lane_dropped(self, number: str) -> None:
        for gauge in (m.RATE_LIMIT, m.RATE_LIMIT_CONFIGURED, m.CIRCUIT_STATE):
            with contextlib.suppress(KeyError):
                gauge.remove(number)
        blocked = self._blocked.pop(number, None)
        if blocked is not None:
            with contextlib.suppress(KeyError):
                m.NUMBER_BLOCKED.remove(number, blocked.value)
        log.info("lane_dropped", phone_number_id=number)

    def rates(self, lanes: Iterable[Lane]) -> None:
        for lane in lanes:
            m.RATE_LIMIT.labels(phone_number_id=lane.number).set(round(lane.limiter.rate, 3))

    def rate_decreased(self, number: str, rate: float) -> None:
        m.RATE_LIMIT.labels(phone_number_id=number).set(round(rate, 3))
        log.warning("rate_decreased", phone_number_id=number, rate=round(rate, 2))

    # --- the circuit ------------------------------------------------------------------------------

    def circuit_changed(self, number: str, change: CircuitChange) -> None:
        state, blocked = change.state, change.blocked
        m.CIRCUIT_STATE.labels(phone_number_id=number).set(state.gauge_value)
        if change.reason in _TRIP_REASONS:
            self._child(m.CIRCUIT_TRIPS, number, change.reason.value).inc()
        previous = self._blocked.get(number)
        if blocked is not None and previous is None:
            self._blocked[number] = blocked
            m.NUMBER_BLOCKED.labels(phone_number_id=number, error_class=blocked.value).set(1)
            log.error("number_blocked", phone_number_id=number, error_class=blocked.value,
                      hint="fix the token or the account; the sender probes again and resumes by itself")
        elif blocked is None and previous is not None:
            del self._blocked[number]
            m.NUMBER_BLOCKED.labels(phone_number_id=number, error_class=previous.value).set(0)
            log.warning("number_unblocked", phone_number_id=number, error_class=previous.value)
        # One line per change, saying why (and on what evidence): circuit_open, circuit_half_open, circuit_closed.
        log.warning("circuit_" + state.value, phone_number_id=number, reason=change.reason.value, **change.evidence)

    def probed(self, number: str, result: str, duration_ms: float, error: BaseException | None = None) -> None:
        if error is not None and not isinstance(error, GraphApiError):
            log.error("circuit_probe_error", phone_number_id=number, exc_info=error)
        self._child(m.CIRCUIT_PROBES, number, result).inc()
        log.info("circuit_probe", phone_number_id=number, probe="health_check", result=result,
                 duration_ms=round(duration_ms, 1))

    # --- attempts ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def in_trace(self, work: Work) -> Iterator[None]:
        """Run the Graph API call in the request's trace: the client's span is a child of `process`."""
        token = otel_context.attach(work.context) if work.context is not None else None
        try:
            yield
        finally:
            if token is not None:
                otel_context.detach(token)

    def dispatched(self, work: Work, waited: float) -> None:
        """A call is about to be written (`waited`: intake to first dispatch, on the first attempt only)."""
        if work.attempts == 1:
            self._observe(m.RATE_LIMIT_WAIT, work.number, waited)
        m.INFLIGHT.inc()

    def answered(self, work: Work, seconds: float, *, terminal: bool, error: GraphApiError | None,
                 unexpected: BaseException | None) -> None:
        """The call returned (a wamid, Meta's error, or a bug in the client)."""
        number = work.number
        m.INFLIGHT.dec()
        self._observe(m.SEND_DURATION, number, seconds)
        if error is not None:
            if error.ambiguous:
                self._child(m.AMBIGUOUS_ATTEMPTS, number).inc()
            self._child(m.SEND_ATTEMPTS, number, "failed" if terminal else "retry", error.error_class.value,
                        m.error_code_label(error.code, KNOWN_ERROR_CODES)).inc()
        elif unexpected is not None:
            self._child(m.SEND_ATTEMPTS, number, "failed", ErrorClass.OTHER.value, "none").inc()
            log.error("send_unexpected_error", request_id=work.request.request_id, exc_info=unexpected)
        else:
            self._child(m.SEND_ATTEMPTS, number, "sent", ErrorClass.NONE.value, "none").inc()

    def retrying(self, work: Work, error: GraphApiError, delay: float, *, held: bool) -> None:
        self._log.info("send_retry", request_id=work.request.request_id, phone_number_id=work.number,
                       to=work.recipient, error_class=error.error_class.value, error_code=error.code,
                       attempts=work.attempts, delay_s=round(delay, 3), held=held, trace_id=trace_id(work))

    def parked(self, work: Work, window: float) -> None:
        self._log.warning("send_ambiguous_parked", request_id=work.request.request_id, phone_number_id=work.number,
                          window_s=window, attempts=work.attempts, trace_id=trace_id(work))

    def resolved(self, work: Work, wamid: str | None, waited: float) -> None:
        resolution = "sent" if wamid is not None else "not_sent"
        self._child(m.AMBIGUOUS_RESOLVED, work.number, resolution).inc()
        self._log.info("send_ambiguous_resolved", request_id=work.request.request_id, phone_number_id=work.number,
                       resolution=resolution, waited_s=round(waited, 3), trace_id=trace_id(work),
                       wamid_ref=wamid_ref(wamid) if wamid is not None else None)

    # --- outcomes ---------------------------------------------------------------------------------

    def concluded(self, work: Work, outcome: MessageOutcome, *, wamid: str | None, duration_ms: float,
                  reason: DeadLetterReason | None = None) -> None:
        """The request's one outcome is on Kafka: count it, log it, end its span."""
        number = work.number
        if outcome is MessageOutcome.DEAD_LETTERED:
            m.DEAD_LETTERS.labels(stage="sender", reason=(reason or DeadLetterReason.UNEXPECTED_ERROR).value).inc()
        tid = trace_id(work)
        self._child(m.MESSAGES, number, outcome.value).inc(exemplar={"trace_id": tid} if tid else None)
        error: ErrorInfo | None = work.last_error if outcome is not MessageOutcome.SENT else None
        fields: dict[str, Any] = {
            "request_id": work.request.request_id, "phone_number_id": number, "to": work.recipient,
            "outcome": outcome.value, "attempts": work.attempts, "duration_ms": round(duration_ms, 1),
            "trace_id": tid,
        }
        if wamid is not None:
            fields["wamid_ref"] = wamid_ref(wamid)  # a wamid holds the recipient's number: never logged raw
        if error is not None:
            fields["error_class"] = error.error_class.value
            fields["error_code"] = error.code
        if outcome is MessageOutcome.SENT:
            self._log.info("message_sent", **fields)
        else:
            self._log.warning("message_" + outcome.value, **fields)
        span = work.span
        if span is not None:
            span.set_attribute("delivery.outcome", outcome.value)
            if error is not None:
                span.set_status(trace.StatusCode.ERROR, f"{outcome.value}: {error.error_class.value} {error.code}")
            span.end()

    def rejected(self, origin: Origin, reason: DeadLetterReason, error: str, request_id: str | None, span: Span,
                 *, published: bool) -> None:
        """A record that is no request (or has no number) was dead-lettered (if `published`)."""
        span.set_attribute("delivery.outcome", MessageOutcome.DEAD_LETTERED.value)
        span.set_status(trace.StatusCode.ERROR, reason.value)
        if published:
            m.DEAD_LETTERS.labels(stage="sender", reason=reason.value).inc()
            log.warning("message_dead_lettered", reason=reason.value, error=error, request_id=request_id,
                        partition=origin.partition, offset=origin.offset,
                        trace_id=format(span.get_span_context().trace_id, "032x"))
        span.end()

    def rerouted(self, request_id: str, number: str, origin: Origin, to_partition: int, span: Span, *,
                 published: bool) -> None:
        span.set_attribute("delivery.rerouted", True)
        if published:
            log.info("request_rerouted", request_id=request_id, phone_number_id=number,
                     from_partition=origin.partition, to_partition=to_partition)
        span.end()

    def handed_back(self, work: Work, why: str) -> None:
        """The work's partition went: its span ends without an outcome (the next owner makes one)."""
        if work.span is not None:
            work.span.set_attribute("delivery.handed_back", why)
            work.span.end()
            work.span = None

    def publish_failed(self, topic: str, origin: Origin, error: BaseException, retry_in: float) -> None:
        log.error("outcome_publish_failed", topic=topic, partition=origin.partition, offset=origin.offset,
                  error=str(error), retry_in_s=retry_in)

    def task_failed(self, partition: int, error: BaseException) -> None:
        log.error("sender_task_failed", partition=partition, exc_info=error)

    # --- plumbing ---------------------------------------------------------------------------------

    def _observe(self, histogram: Any, number: str, value: float) -> None:
        child = self._children.get((histogram, number))
        if child is None:
            child = self._children[(histogram, number)] = histogram.labels(number)
        child.observe(value)

    def _child(self, counter: Counter, *labels: str) -> Counter:
        key = (counter, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*labels)
        return child
