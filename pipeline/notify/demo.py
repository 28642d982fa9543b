"""A local receiver that prints the callbacks it gets: what `pipeline run` subscribes when none is set.

    receiver = DemoReceiver(settings.notify)       # 127.0.0.1:NOTIFY_DEMO_RECEIVER_PORT
    await receiver.start(); …; await receiver.stop()

It checks each call's signature with the demo secret (the verification docs/callbacks.md shows) and
prints one line per callback: time, type, event id, ids, and whether the signature held.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import orjson
from aiohttp import web

from pipeline.notify.settings import NotifySettings
from pipeline.notify.signing import HEADER, SignatureError, verify

DEMO_SECRET = "local-demo-callback-secret"  # noqa: S105 — public, for the local demo receiver only
DEMO_PATH = "/callbacks"


def demo_subscription(port: int) -> str:
    """NOTIFY_SUBSCRIPTIONS for `pipeline run`: every number's events to the demo receiver."""
    return orjson.dumps(
        [{"phone_number_id": "*", "url": f"http://127.0.0.1:{port}{DEMO_PATH}", "secret": DEMO_SECRET}]
    ).decode()


class DemoReceiver:
    def __init__(self, notify: NotifySettings) -> None:
        self._port = notify.demo_receiver_port
        self._runner: web.AppRunner | None = None
        self.received = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(DEMO_PATH, self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        print(f"notify demo receiver: printing callbacks POSTed to http://127.0.0.1:{self._port}{DEMO_PATH}",
              flush=True)

    async def _callback(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(DEMO_SECRET, body, request.headers.get(HEADER, ""))
            signed = "signed"
        except SignatureError as exc:
            signed = f"BAD SIGNATURE ({exc})"
        event = orjson.loads(body)
        self.received += 1
        at = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"callback {at} {event['type']:<17} {event['event_id']} request={event.get('request_id')} "
              f"wamid={(event.get('wamid') or '')[:24]} {signed}", file=sys.stdout, flush=True)
        return web.Response(status=204)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
