"""What the API does with the items of a request, apart from HTTP.

    service = ApiService(settings, telemetry)
    await service.start(); ...; await service.stop()
    outcomes = await service.submit(api_key, [item, ...], idempotency_keys=[key_or_None, ...])
    # one Accepted or Rejection per item, in order

Order of checks per item: sanitation and validation (422), the key's permission for the business
number (403), the idempotency key (replay, 409, 422) and a caller-chosen request id (replay, 409
`request_id_in_use`), then Kafka: 202 only after the broker's acknowledgement, 503 when the record
is certainly not written, 504 when a broker had it but did not confirm in time. Valid items are
published together, so a batch costs one produce round trip however many of its items are rejected.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.api.idempotency import Decision, IdempotencyStore, Owner, Replay, request_id_scope, scope_of
from pipeline.api.intake import Admitted, Intake, Rejection, invalid, message_type_label
from pipeline.api.publisher import Delivery, Publisher, Unavailable
from pipeline.auth import ApiKeys
from pipeline.config import ApiKey, Settings
from pipeline.contracts import ApiOutcome, FieldError, utcnow
from pipeline.observability import Telemetry, get_logger
from pipeline.observability import metrics as m

log = get_logger(__name__)


@dataclass(frozen=True)
class Accepted:
    request_id: str
    accepted_at: str
    phone_number_id: str
    replayed: bool = False


Outcome = Accepted | Rejection


class ApiService:
    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        self.settings = settings
        self.keys = ApiKeys(settings.api.api_keys())
        self.intake = Intake(settings)
        self.publisher = Publisher(settings, telemetry.tracer_provider)
        self.idempotency = IdempotencyStore(settings, self.publisher)
        self._retry_after = settings.api.retry_after_seconds
        self._settling: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.publisher.start()
        await self.idempotency.start()

    async def stop(self) -> None:
        await self.settled()
        await self.idempotency.stop()
        await self.publisher.stop()

    async def ready(self) -> bool:
        return self.idempotency.ready and await self.publisher.connected()

    # --- rejections -------------------------------------------------------------------------------

    def unavailable(self) -> Rejection:
        return Rejection(
            status=503,
            code="unavailable",
            message="Kafka could not take the message in time (unreachable or too slow): it was not written, "
            f"and never will be; retry after {self._retry_after} s",
        )

    def unknown(self) -> Rejection:
        return Rejection(
            status=504,
            code="outcome_unknown",
            message="Kafka received the message but did not confirm it in time, so it may or may not be "
            f"accepted; retry after {self._retry_after} s with the same Idempotency-Key to learn which "
            "(without a key, a retry may send it twice)",
        )

    def in_progress(self) -> Rejection:
        return Rejection(
            status=409,
            code="idempotency_key_in_progress",
            message="a request with this Idempotency-Key is still being processed; "
            f"retry after {self._retry_after} s to get its result",
        )

    # --- submitting -------------------------------------------------------------------------------

    async def submit(
        self, key: ApiKey, items: Sequence[Any], idempotency_keys: Sequence[str | None], sanitise: bool = True
    ) -> list[Outcome]:
        """One outcome per item. `sanitise=False` when the body cannot hold control characters."""
        now = utcnow()
        outcomes: list[Outcome | None] = [None] * len(items)
        admitted: dict[int, Admitted] = {}
        scopes: dict[str, int] = {}
        for index, (item, idempotency_key) in enumerate(zip(items, idempotency_keys, strict=True)):
            result = self.intake.admit(item, idempotency_key=idempotency_key, now=now, sanitise=sanitise)
            if isinstance(result, Rejection):
                outcomes[index] = result
                continue
            request = result.request
            phone_number_id = request.phone_number_id or ""
            if not key.allows(phone_number_id):
                outcomes[index] = Rejection(
                    status=403,
                    code="forbidden",
                    message=f"this API key may not send from phone_number_id {phone_number_id}",
                )
                continue
            duplicate = next((f for scope, f in _scopes(result) if scope in scopes), None)
            if duplicate is not None:
                outcomes[index] = invalid([_duplicate_in_batch(duplicate, scopes[_scope_named(result, duplicate)])])
                continue
            scopes.update((scope, index) for scope, _ in _scopes(result))
            admitted[index] = result

        owners = await self._claim(admitted, outcomes)
        to_publish = [i for i in admitted if outcomes[i] is None]
        await self._publish(to_publish, admitted, owners, outcomes, _rfc3339(now))

        final = [o if o is not None else self.unavailable() for o in outcomes]
        # One increment per label pair, not per item: a batch of 1,000 would otherwise cost 1,000.
        counts = Counter((api_outcome(o), message_type_label(i)) for i, o in zip(items, final, strict=True))
        for (outcome, message_type), count in counts.items():
            m.API_REQUESTS.labels(outcome=outcome, message_type=message_type).inc(count)
        return final

    async def _claim(
        self, admitted: dict[int, Admitted], outcomes: list[Outcome | None]
    ) -> dict[int, list[Owner]]:
        """Claim each item's idempotency key and caller-chosen request id; the owners publish."""
        keyed = [i for i, a in admitted.items() if _scopes(a)]
        if not keyed:
            return {}
        decisions = await asyncio.gather(*(self._claim_one(admitted[i]) for i in keyed))
        owners: dict[int, list[Owner]] = {}
        for index, decision in zip(keyed, decisions, strict=True):
            phone_number_id = admitted[index].request.phone_number_id or ""
            match decision:
                case list():
                    owners[index] = decision
                case Replay(request_id=request_id, accepted_at=accepted_at):
                    outcomes[index] = Accepted(request_id, accepted_at, phone_number_id, replayed=True)
                case Rejection():
                    outcomes[index] = decision
        return owners

    async def _claim_one(self, admitted: Admitted) -> list[Owner] | Replay | Rejection:
        """Claim the item's scopes in order (key, then request id); the first that is not ours decides.

        A later refusal releases the earlier claims; a replay of the request id (the same message
        sent again under a new key) also answers the key, so a retry with that key replays too.
        """
        held: list[Owner] = []
        for scope, field in _scopes(admitted):
            try:
                decision: Decision = await self.idempotency.claim(scope, admitted.fingerprint,
                                                                  admitted.request.request_id)
            except Unavailable:
                await asyncio.gather(*(self.idempotency.release(o) for o in held))
                return self.unavailable()
            if isinstance(decision, Owner):
                held.append(decision)
                continue
            if isinstance(decision, Replay):
                await asyncio.gather(*(self.idempotency.accept(o, decision.accepted_at) for o in held))
                return decision
            await asyncio.gather(*(self.idempotency.release(o) for o in held))
            if decision.reason == "in_progress":
                return self.in_progress()
            return _request_id_in_use() if field == "request_id" else invalid([_reused_key()])
        return held

    async def _publish(
        self,
        indexes: list[int],
        admitted: dict[int, Admitted],
        owners: dict[int, list[Owner]],
        outcomes: list[Outcome | None],
        accepted_at: str,
    ) -> None:
        """Publish the admitted requests; `accepted_at` is their common acceptance time (RFC 3339)."""
        if not indexes:
            return
        requests = [admitted[i].request for i in indexes]

        def late(position: int, acknowledged: bool) -> None:
            # Answered 504 (unknown); now Kafka has decided. If it was written the sender will send
            # it, so a retry with the same key must get this request's answer.
            request = requests[position]
            log.warning("kafka_settled_after_504", request_id=request.request_id, acknowledged=acknowledged)
            for owner in owners.get(indexes[position], []):
                self._settle(owner, accepted_at if acknowledged else None)

        try:
            deliveries = await self.publisher.publish(requests, on_late=late)
        except Unavailable:
            deliveries = [Delivery.FAILED] * len(requests)
        if any(d is not Delivery.ACKNOWLEDGED for d in deliveries):
            log.warning("kafka_not_acknowledged", messages=len(requests),
                        acknowledged=deliveries.count(Delivery.ACKNOWLEDGED))
        settling: list[asyncio.Task[None]] = []
        for index, request, delivery in zip(indexes, requests, deliveries, strict=True):
            if delivery is Delivery.ACKNOWLEDGED:
                outcomes[index] = Accepted(request.request_id, accepted_at, request.phone_number_id or "")
            elif delivery is Delivery.PENDING:
                outcomes[index] = self.unknown()  # FAILED stays None: 503, not written
            if delivery is not Delivery.PENDING:  # PENDING settles in `late`
                acknowledged = delivery is Delivery.ACKNOWLEDGED
                settling.extend(self._settle(o, accepted_at if acknowledged else None) for o in owners.get(index, []))
        # Answer only once the key's record is in Kafka: a crash after answering cannot then let a
        # retry publish a second message.
        await asyncio.gather(*settling)

    def _settle(self, owner: Owner, accepted_at: str | None) -> asyncio.Task[None]:
        settle = self.idempotency.accept(owner, accepted_at) if accepted_at else self.idempotency.release(owner)
        task = asyncio.create_task(settle)
        self._settling.add(task)  # keeps late settlements alive, and lets `stop` wait for them
        task.add_done_callback(self._settling.discard)
        return task

    async def settled(self) -> None:
        """Wait for every idempotency record being written."""
        if self._settling:
            await asyncio.gather(*self._settling)

    @staticmethod
    def count(outcome: Outcome, message_type: str) -> None:
        m.API_REQUESTS.labels(outcome=api_outcome(outcome), message_type=message_type).inc()


def api_outcome(outcome: Outcome) -> ApiOutcome:
    if isinstance(outcome, Accepted):
        return ApiOutcome.DUPLICATE if outcome.replayed else ApiOutcome.ACCEPTED
    if outcome.status in (401, 403):
        return ApiOutcome.UNAUTHORIZED
    if outcome.status in (503, 504):
        return ApiOutcome.UNAVAILABLE
    if outcome.status == 409:
        return ApiOutcome.DUPLICATE
    return ApiOutcome.INVALID


def _rfc3339(value: Any) -> str:
    return str(value.isoformat().replace("+00:00", "Z"))


def _reused_key() -> FieldError:
    return FieldError(
        field="idempotency_key",
        rule="idempotency_key_reused",
        message="was already used for a different request within the idempotency window",
    )


def _request_id_in_use() -> Rejection:
    return Rejection(
        status=409,
        code="request_id_in_use",
        message="this request_id already names a different message within the idempotency window; "
        "choose another request_id (the same message again would be answered with the original result)",
        fields=[FieldError(field="request_id", rule="request_id_in_use",
                           message="already used for a different message within the idempotency window")],
    )


def _scopes(admitted: Admitted) -> list[tuple[str, str]]:
    """What an item claims, with the field that names it: its idempotency key, its own request id."""
    request = admitted.request
    scopes = []
    if request.idempotency_key is not None:
        scopes.append((scope_of(request.phone_number_id or "", request.idempotency_key), "idempotency_key"))
    if "request_id" not in admitted.stamped:  # chosen by the caller, so it may collide
        scopes.append((request_id_scope(request.request_id), "request_id"))
    return scopes


def _scope_named(admitted: Admitted, field: str) -> str:
    return next(scope for scope, f in _scopes(admitted) if f == field)


def _duplicate_in_batch(field: str, first: int) -> FieldError:
    return FieldError(
        field=field,
        rule="duplicate_in_batch",
        message=f"the same {field.replace('_', ' ')} is used by item {first} of this batch",
    )
