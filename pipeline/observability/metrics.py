"""The metric catalog: every `delivery_*` metric, defined once with its help text and labels.

    from pipeline.observability import metrics
    metrics.MESSAGES.labels(phone_number_id=pnid, outcome=MessageOutcome.SENT).inc(exemplar=exemplar())

Names and labels are a public interface (dashboards, alerts, users' queries): add, never rename.
Label values come from `pipeline.contracts.vocabulary`; never a phone number, message or request id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, CollectorRegistry

from pipeline.contracts.vocabulary import Stage
from pipeline.observability.context import current_trace_id

# `*_created` series double the series count and no dashboard or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Graph API calls sit around 100-300 ms with a tail to the client timeout; API calls are ms.
_GRAPH_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Status transitions span seconds (sent) to days (read).
_TRANSITION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600, 3 * 24 * 3600)

registry: CollectorRegistry = REGISTRY

# --- api ------------------------------------------------------------------------------------------
REPLAYED = Counter(
    "delivery_replayed_records",
    "Records consumed that a dead-letter replay put back on their topic (header replayed-from), by stage.",
    ["stage"],
)
API_REQUESTS = Counter(
    "delivery_api_requests", "Send requests received by the HTTP API, by outcome and message type.",
    ["outcome", "message_type"],
)
API_REQUEST_DURATION = Histogram(
    "delivery_api_request_duration_seconds", "Time to answer an API request, by route.",
    ["route"], buckets=_API_BUCKETS,
)

# --- sender ---------------------------------------------------------------------------------------
SEND_ATTEMPTS = Counter(
    "delivery_send_attempts", "Graph API send attempts, by outcome and error class/code.",
    ["phone_number_id", "outcome", "error_class", "error_code"],
)
MESSAGES = Counter(
    "delivery_messages", "Send requests that reached a terminal outcome (one per request).",
    ["phone_number_id", "outcome"],
)
SEND_DURATION = Histogram(
    "delivery_send_duration_seconds", "Duration of Graph API send calls.",
    ["phone_number_id"], buckets=_GRAPH_BUCKETS,
)
RATE_LIMIT_WAIT = Histogram(
    "delivery_rate_limit_wait_seconds", "Time a message waited for the number's rate limiter.",
    ["phone_number_id"], buckets=_WAIT_BUCKETS,
)
RATE_LIMIT = Gauge(
    "delivery_rate_limit_per_second", "Current effective send rate limit of a business number.",
    ["phone_number_id"],
)
RATE_LIMIT_CONFIGURED = Gauge(
    "delivery_rate_limit_configured_per_second", "Configured send rate limit of a business number.",
    ["phone_number_id"],
)
CIRCUIT_STATE = Gauge(
    "delivery_circuit_state", "Circuit breaker state per business number: 0 closed, 1 half-open, 2 open.",
    ["phone_number_id"],
)
CIRCUIT_TRIPS = Counter(
    "delivery_circuit_trips",
    "Times a number's circuit left closed or re-opened, by reason (service_failures, failure_ratio, blocked, "
    "probe_failed, trial_failed).",
    ["phone_number_id", "reason"],
)
CIRCUIT_PROBES = Counter(
    "delivery_circuit_probes",
    "Health probes (GET of the phone number) of a number whose circuit is half-open, by result.",
    ["phone_number_id", "result"],
)
INFLIGHT = Gauge("delivery_inflight_messages", "Graph API calls in flight in this sender.")
AMBIGUOUS_ATTEMPTS = Counter(
    "delivery_ambiguous_attempts",
    "Attempts that timed out after the request was written: Meta may have sent the message.",
    ["phone_number_id"],
)
AMBIGUOUS_RESOLVED = Counter(
    "delivery_ambiguous_resolved",
    "Ambiguous attempts decided by Meta's status webhooks: sent (a status came within the window) or not_sent.",
    ["phone_number_id", "resolution"],
)
NUMBER_BLOCKED = Gauge(
    "delivery_number_blocked",
    "1 while a business number is stopped by an auth or policy error (needs an operator).",
    ["phone_number_id", "error_class"],
)

# --- every stage ----------------------------------------------------------------------------------
DEAD_LETTERS = Counter(
    "delivery_dead_letters", "Records sent to the dead-letter topic, by stage and reason.", ["stage", "reason"],
)
CONSUMER_LAG = Gauge(
    "delivery_consumer_lag_messages", "Messages behind the end of the topic, per topic and consumer group.",
    ["topic", "group"],
)

# --- ingest ---------------------------------------------------------------------------------------
WEBHOOKS = Counter("delivery_webhooks", "Webhook requests received from Meta, by outcome.", ["outcome"])
STATUS_EVENTS = Counter(
    "delivery_status_events", "Deduplicated delivery status events, by status.", ["status", "phone_number_id"],
)
STATUS_DUPLICATES = Counter("delivery_status_duplicates", "Status updates dropped as duplicates.")
STATUS_OUT_OF_ORDER = Counter(
    "delivery_status_out_of_order", "Status updates that arrived after a later state (kept, not applied back).",
)
FAILURES = Counter(
    "delivery_failures", "Failed delivery statuses reported by Meta, by error class and code.",
    ["error_class", "error_code"],
)
TRANSITION = Histogram(
    "delivery_transition_seconds", "Time between delivery states of one message.",
    ["transition"], buckets=_TRANSITION_BUCKETS,
)
INBOUND_MESSAGES = Counter("delivery_inbound_messages", "Inbound user messages received, by type.", ["type"])
ACCOUNT_EVENTS = Counter(
    "delivery_account_events",
    "Account, template, quality and opt-out events written to account.events, by kind and Meta's event.",
    ["kind", "event"],
)
WEBHOOK_SKIPPED = Counter(
    "delivery_webhook_skipped",
    "Parts of webhooks that have no record of their own (they stay on webhooks.raw), by field and reason.",
    ["field", "reason"],
)

# --- store ----------------------------------------------------------------------------------------
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_ROWS = Counter("delivery_store_rows_written", "Rows the store's projection upserted, by table.", ["table"])
STORE_BATCH_DURATION = Histogram(
    "delivery_store_batch_duration_seconds", "Time to project one batch: parse, write, commit the transaction.",
    buckets=_BATCH_BUCKETS,
)
STORE_PROJECTION_LAG = Gauge(
    "delivery_store_projection_lag_seconds",
    "Age of the newest record of each topic when its batch was committed to the database.", ["topic"],
)
STORE_DB_ERRORS = Counter(
    "delivery_store_db_errors", "Database operations that failed (retried), by operation.", ["operation"],
)
STORE_RETENTION_DELETED = Counter(
    "delivery_store_retention_deleted", "Rows removed by the retention pass, by table.", ["table"],
)
STORE_READ_DURATION = Histogram(
    "delivery_store_read_duration_seconds", "Time to answer a read API request, by route.",
    ["route"], buckets=_API_BUCKETS,
)


# --- notify ---------------------------------------------------------------------------------------
# `endpoint` is a subscription URL's host:port: bounded, it comes from settings (NOTIFY_SUBSCRIPTIONS).
# A receiver should answer in tens of milliseconds; the tail runs to the read timeout.
_CALLBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CALLBACK_ATTEMPTS = Counter(
    "delivery_callback_attempts", "Callback POSTs, by endpoint (host:port) and what came back.",
    ["endpoint", "result"],
)
CALLBACKS = Counter(
    "delivery_callbacks", "Callback events that ended for an endpoint, by outcome (delivered or dead_lettered).",
    ["endpoint", "outcome"],
)
CALLBACK_ATTEMPT_DURATION = Histogram(
    "delivery_callback_attempt_duration_seconds", "Duration of one callback POST, answer or not.",
    ["endpoint"], buckets=_CALLBACK_BUCKETS,
)
CALLBACK_RETRIES = Counter(
    "delivery_callback_retries", "Callback attempts scheduled again after a failure.", ["endpoint"],
)
CALLBACK_BREAKER = Gauge(
    "delivery_callback_breaker_state", "Endpoint circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["endpoint"],
)
CALLBACK_QUEUE_DEPTH = Gauge(
    "delivery_callback_queue_depth", "Callback deliveries waiting or in flight for an endpoint.",
    ["endpoint"],
)
CALLBACK_OLDEST_AGE = Gauge(
    "delivery_callback_oldest_event_age_seconds",
    "Age of the oldest undelivered event of an endpoint (since it entered Kafka); 0 when none waits.",
    ["endpoint"],
)
CALLBACK_DISABLED = Gauge(
    "delivery_callback_subscription_disabled",
    "1 when an endpoint answered 410 Gone and its subscription was disabled until restart.",
    ["endpoint"],
)

# Which stage exposes which catalog metric (all are registered in every process, but a stage's
# tests and dashboards only expect its own to carry data).
_EVERY_STAGE: tuple[MetricWrapperBase, ...] = (DEAD_LETTERS,)
_EVERY_CONSUMER: tuple[MetricWrapperBase, ...] = (CONSUMER_LAG,)
CATALOG_BY_STAGE: Mapping[Stage, tuple[MetricWrapperBase, ...]] = {
    Stage.API: (API_REQUESTS, API_REQUEST_DURATION, *_EVERY_STAGE),
    Stage.SENDER: (
        SEND_ATTEMPTS, MESSAGES, SEND_DURATION, RATE_LIMIT_WAIT, RATE_LIMIT, RATE_LIMIT_CONFIGURED, CIRCUIT_STATE,
        CIRCUIT_TRIPS, CIRCUIT_PROBES, INFLIGHT, AMBIGUOUS_ATTEMPTS, AMBIGUOUS_RESOLVED, NUMBER_BLOCKED, REPLAYED,
        *_EVERY_STAGE, *_EVERY_CONSUMER,
    ),
    Stage.INGEST: (
        WEBHOOKS, STATUS_EVENTS, STATUS_DUPLICATES, STATUS_OUT_OF_ORDER, FAILURES, TRANSITION, INBOUND_MESSAGES,
        ACCOUNT_EVENTS, WEBHOOK_SKIPPED, *_EVERY_STAGE, *_EVERY_CONSUMER,
    ),
    Stage.STORE: (
        STORE_ROWS, STORE_BATCH_DURATION, STORE_PROJECTION_LAG, STORE_DB_ERRORS, STORE_RETENTION_DELETED,
        STORE_READ_DURATION, *_EVERY_STAGE, *_EVERY_CONSUMER,
    ),
    Stage.NOTIFY: (
        CALLBACK_ATTEMPTS, CALLBACKS, CALLBACK_ATTEMPT_DURATION, CALLBACK_RETRIES, CALLBACK_BREAKER,
        CALLBACK_QUEUE_DEPTH, CALLBACK_OLDEST_AGE, CALLBACK_DISABLED, *_EVERY_STAGE, *_EVERY_CONSUMER,
    ),
    Stage.SANDBOX: (),  # Meta's stand-in: it serves /metrics but owns no delivery_* metric
}


@dataclass(frozen=True)
class CatalogEntry:
    """One metric as a scraper sees it: `name` includes `_total` for counters."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


def describe(metric: MetricWrapperBase) -> CatalogEntry:
    (family,) = metric.describe()
    name = f"{family.name}_total" if family.type == "counter" else family.name
    # prometheus_client has no public accessor for a metric's label names.
    labels: tuple[str, ...] = tuple(metric._labelnames)
    return CatalogEntry(name=name, type=family.type, labels=labels, help=family.documentation)


def catalog() -> list[CatalogEntry]:
    """Every catalog metric, in definition order (the docs table follows it)."""
    return [describe(m) for m in ALL_METRICS]


def catalog_names(stage: Stage) -> frozenset[str]:
    """Exposed names of the metrics `stage` owns, e.g. `{"delivery_api_requests_total", …}`."""
    return frozenset(describe(m).name for m in CATALOG_BY_STAGE[stage])


def exposed_names(exposition: str) -> frozenset[str]:
    """Metric family names in a `/metrics` body, counters with their `_total` (the parser drops it)."""
    return frozenset(_exposed(f.name, f.type) for f in text_string_to_metric_families(exposition))


def _exposed(name: str, type_: str) -> str:
    return f"{name}_total" if type_ == "counter" and not name.endswith("_total") else name


def exemplar() -> dict[str, str] | None:
    """`{"trace_id": …}` for the current span, to attach to an observation (OpenMetrics only)."""
    trace_id = current_trace_id()
    return {"trace_id": trace_id} if trace_id else None


def error_code_label(code: int | None, known: frozenset[int]) -> str:
    """Keep the label set bounded: codes outside the documented table become `other`."""
    if code is None:
        return "none"
    return str(code) if code in known else "other"


# Every metric defined above, in definition order (the docs table follows it).
ALL_METRICS: tuple[MetricWrapperBase, ...] = tuple(v for v in globals().values() if isinstance(v, MetricWrapperBase))
