"""The attempt: one Graph API call for a dispatched request, and its verdict.

    attempts = Attempts(client, policy, watch, telemetry, clock=time.monotonic)
    answer = await attempts.run(work, lane, may_send=lambda: True)   # None: not sent (its slot is released)
    answer.verdict, answer.wamid, answer.at         # Terminal(SENT), "wamid.…", when it answered
    if isinstance(answer.verdict, Park):            # the call may have sent it: the caller parks it, then
        answer = await attempts.resolve(work, lane, answer)   # Terminal(SENT) with the status' wamid, or Retry
    await attempts.probe(lane)                      # the breaker's half-open probe: Meta's health call

Contract of `run`:
* it writes the request only when the number's sliding window allows (`limiter.send`, checked
  when the request is written, not when the scheduler chose it) and `may_send()` still holds,
  asked before every write (ownership and the group lease: no send after losing the partition).
  When `may_send()` turns false it releases the reserved slot and returns None, having sent nothing;
* otherwise it makes exactly one call (`work.attempts` + 1), run in the request's trace context;
* the answer's effects on the number are applied where they can be seen: a 200 is the breaker's
  success, an error goes through `RetryPolicy.settle` (breaker evidence, limiter cut or pause, the
  work's charge); a client exception that is not a `GraphApiError` is a bug and dead-letters the
  request (`unexpected_error`) rather than being retried forever;
* it returns the verdict; it does not touch the scheduler, the offsets or the outcome topics:
  requeueing (Retry/Hold), parking (Park) and concluding (Terminal) are the caller's.

`resolve` waits for a parked request's status (ambiguous.py) and returns `sent` or the retry
verdict (`RetryPolicy.unsent`); `probe` calls Meta's health check for a number and gives the
breaker its verdict. Telemetry is one `SenderTelemetry` call per event (`dispatched`, `answered`,
`parked`, `resolved`, `probed`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.contracts import DeadLetterReason, ErrorClass, ErrorInfo, MessageOutcome
from pipeline.sender.ambiguous import StatusWatch
from pipeline.sender.retry import Park, Retry, RetryPolicy, Terminal, Verdict
from pipeline.sender.scheduler import Lane
from pipeline.sender.telemetry import SenderTelemetry
from pipeline.sender.work import Work
from pipeline.whatsapp import GraphApiError, MessageSender

SENT = Terminal(MessageOutcome.SENT)


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    wamid: str | None  # for a SENT verdict
    at: float  # monotonic time of the answer (or of the resolution)
    error: GraphApiError | None = None  # Meta's error, if it answered with one


class Attempts:
    def __init__(self, client: MessageSender, policy: RetryPolicy, watch: StatusWatch, telemetry: SenderTelemetry,
                 *, clock: Callable[[], float]) -> None:
        self._client = client
        self._policy = policy
        self._watch = watch
        self._telemetry = telemetry
        self._now = clock

    async def run(self, work: Work, lane: Lane, may_send: Callable[[], bool]) -> Answer | None:
        """Write the request when the window allows and `may_send()` holds, and judge the answer."""
        started = self._now()
        limiter = lane.limiter  # the scheduler reserved a slot; the window is checked again as it is written
        try:
            while True:
                # A connection first: the window's check is then the moment of writing, even for a
                # call that had to connect (the first calls of a run would otherwise leave late together).
                await self._client.ready(work.number)
                if not may_send():
                    limiter.release()
                    return None
                if (pause := limiter.send(self._now())) <= 0.0:
                    break
                await asyncio.sleep(pause)
        except BaseException:
            limiter.release()
            raise
        work.attempts += 1
        self._telemetry.dispatched(work, started - work.received)
        request_id = work.request.request_id
        self._watch.expect(request_id)  # a status may arrive before an ambiguous call gives up
        sent = None
        error: GraphApiError | None = None
        unexpected: BaseException | None = None
        try:
            with self._telemetry.in_trace(work):
                sent = await self._client.send_message(
                    work.request, phone_number_id=work.number, callback_data=work.callback_data
                )
        except GraphApiError as exc:
            error = exc
        except Exception as exc:
            unexpected = exc
        now = self._now()
        verdict: Verdict
        wamid = None
        if sent is not None:
            lane.breaker.record_success(now, work.recipient)
            verdict, wamid = SENT, sent.wamid
        elif error is not None:
            if error.ambiguous:
                work.ambiguous_attempts += 1
            verdict = self._policy.settle(work, error, now, limiter=lane.limiter, breaker=lane.breaker)
        else:
            what = f"{type(unexpected).__name__}: {unexpected}"
            work.last_error = ErrorInfo(error_class=ErrorClass.OTHER, message=what)
            verdict = Terminal(MessageOutcome.DEAD_LETTERED, work.last_error, DeadLetterReason.UNEXPECTED_ERROR)
        self._telemetry.answered(work, now - started, terminal=isinstance(verdict, Terminal), error=error,
                                 unexpected=unexpected)
        if not isinstance(verdict, Park):
            self._watch.forget(request_id)
        return Answer(verdict, wamid, now, error)

    async def resolve(self, work: Work, lane: Lane, parked: Answer) -> Answer:
        """A parked request: `sent` if a status for it comes within the window, else the retry verdict."""
        assert isinstance(parked.verdict, Park)
        self._telemetry.parked(work, parked.verdict.window)
        wamid = await self._watch.resolve(work.request.request_id, parked.verdict.window)
        now = self._now()
        self._telemetry.resolved(work, wamid, now - work.dispatched_at)
        if wamid is not None:
            return Answer(SENT, wamid, now, parked.error)
        judgement = self._policy.unsent(work, now, circuit=lane.breaker.state)
        judgement.apply_to(work)
        assert isinstance(judgement.verdict, Retry | Terminal)
        return Answer(judgement.verdict, None, now, parked.error)

    async def probe(self, lane: Lane) -> None:
        """The half-open probe: Meta's health call for the number (a GET; it sends nothing, to nobody)."""
        number, breaker = lane.number, lane.breaker
        started = self._now()
        failure: BaseException | None = None
        try:
            await self._client.check_health(number)
        except GraphApiError as exc:
            failure = exc
            breaker.probe_failed(self._now(), exc.error_class, exc.message)
        except Exception as exc:  # a bug in the client: never leave the number waiting for a verdict
            failure = exc
            breaker.probe_failed(self._now(), ErrorClass.OTHER, f"{type(exc).__name__}: {exc}")
        except BaseException:
            breaker.probe_abandoned()
            raise
        else:
            breaker.probe_succeeded(self._now())
        self._telemetry.probed(number, "ok" if failure is None else "failed", (self._now() - started) * 1000, failure)
