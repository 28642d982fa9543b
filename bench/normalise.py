"""What the webhook bounds cost: `webhook.normalise` per body, and its depth and size checks alone.

    .venv/bin/python bench/normalise.py                 # 20,000 rounds of each body
    .venv/bin/python bench/normalise.py --rounds 50000

Pure CPU, one process, no broker: for Meta-shaped bodies (one status, a batch of three, one inbound
text, an account event, and a 100-status batch) it prints µs per body for the floor (`orjson.loads` alone), the whole
`normalise`, and the bounds that guard it (`check_depth` on the parsed body plus `oversize` on each
item), with the bounds' share of `normalise`. Baseline and measured run in the same process, in turn.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.ingest.bounds import ITEM_BYTES, SMALL_BODY_BYTES, check_depth, oversize
from pipeline.ingest.webhook import normalise

NOW = datetime(2026, 1, 1, tzinfo=UTC)
META = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
CONTACT = [{"wa_id": "16505551234", "user_id": "US.13491208655302741918"}]


def _status(i: int, kind: str) -> dict[str, Any]:
    return {"id": f"wamid.HBgLMTY1MDU1NTEyMzQVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTc{i}", "status": kind,
            "timestamp": "1764000000", "recipient_id": "16505551234", "recipient_user_id": CONTACT[0]["user_id"],
            "biz_opaque_callback_data": "req_01JD3Q8Z0M7W4K2B5N6P9R1S3T|00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                        "00f067aa0ba902b7-01|1764000000000",
            "pricing": {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"},
            "conversation": {"id": "8a1f3c0e5b7d9f21", "expiration_timestamp": "1764086400",
                             "origin": {"type": "utility"}}}


def _body(field: str, value: dict[str, Any]) -> bytes:
    return orjson.dumps({"object": "whatsapp_business_account",
                         "entry": [{"id": "102290129340398", "changes": [{"field": field, "value": value}]}]})


BODIES = {
    "1 status": _body("messages", {"messaging_product": "whatsapp", "metadata": META, "contacts": CONTACT,
                                   "statuses": [_status(0, "delivered")]}),
    "3 statuses": _body("messages", {"messaging_product": "whatsapp", "metadata": META, "contacts": CONTACT,
                                     "statuses": [_status(i, k) for i, k in enumerate(("sent", "delivered", "read"))]}),
    "100 statuses": _body("messages", {"messaging_product": "whatsapp", "metadata": META, "contacts": CONTACT,
                                       "statuses": [_status(i, "delivered") for i in range(100)]}),
    "1 inbound text": _body("messages", {
        "messaging_product": "whatsapp", "metadata": META,
        "contacts": [{"profile": {"name": "Ana"}, **CONTACT[0]}],
        "messages": [{"from": "16505551234", "from_user_id": CONTACT[0]["user_id"], "id": "wamid.in.1",
                      "timestamp": "1764000040", "type": "text", "text": {"body": "Where is my order?"}}]}),
    "1 template status": _body("message_template_status_update", {
        "event": "PAUSED", "message_template_id": 1689556908129832, "message_template_name": "order_update",
        "message_template_language": "en_US", "reason": "NONE"}),
}


def _bounds(body: bytes, data: Any) -> None:
    check_depth(data, body)
    for entry in data["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            if len(body) <= SMALL_BODY_BYTES:
                continue  # normalise does not measure the items of a small body either
            for key in ("statuses", "messages"):
                for item in value.get(key, ()):
                    oversize(item, ITEM_BYTES[key])
            if change["field"] != "messages":
                oversize(value, ITEM_BYTES["account"])


def _per_call_us(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'body':<18} {'loads µs':>9} {'normalise µs':>13} {'bounds µs':>10} {'bounds/normalise':>17}")
    for name, body in BODIES.items():
        floor = _per_call_us(lambda body=body: orjson.loads(body), args.rounds)
        whole = _per_call_us(lambda body=body: normalise(body, NOW), args.rounds)
        data = orjson.loads(body)  # the bounds run on the body normalise has parsed already
        bounds = _per_call_us(lambda body=body, data=data: _bounds(body, data), args.rounds)
        print(f"{name:<18} {floor:>9.1f} {whole:>13.1f} {bounds:>10.1f} {bounds / whole:>16.1%}")


if __name__ == "__main__":
    main()
