"""`pipeline notify` at start, and what `pipeline run` gives it: refusal of unsafe URLs, the demo receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import aiohttp
import pytest

from pipeline.config import load_settings
from pipeline.local.kafka import free_port
from pipeline.local.stack import settings_env, with_demo_receiver
from pipeline.notify.demo import DEMO_PATH, DEMO_SECRET, DemoReceiver
from pipeline.notify.settings import NotifySettings
from pipeline.notify.signing import signature_header

SECRET = "0123456789abcdef-secret"


def test_production_refuses_unsafe_subscriptions_at_start_naming_entry_and_rule() -> None:
    subscriptions = [
        {"phone_number_id": "*", "url": "http://169.254.169.254/", "secret": SECRET},
        {"phone_number_id": "106540352242922", "url": "https://10.0.0.1/", "secret": SECRET},
        {"phone_number_id": "*", "url": "https://localhost/hook", "secret": SECRET},
    ]
    env = {**os.environ, "PIPELINE_ENV": "production", "NOTIFY_SUBSCRIPTIONS": json.dumps(subscriptions),
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "NOTIFY_PORT": str(free_port())}
    run = subprocess.run([sys.executable, "-m", "pipeline", "notify"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 2, run.stderr
    assert "invalid configuration (3 problem(s))" in run.stderr
    assert "NOTIFY_SUBSCRIPTIONS entry 1 (*->169.254.169.254): 169.254.169.254 is a cloud metadata" in run.stderr
    assert "entry 2 (106540352242922->10.0.0.1): 10.0.0.1 is a private address" in run.stderr
    assert "entry 3 (*->localhost): 127.0.0.1 is a loopback address" in run.stderr
    assert SECRET not in run.stderr + run.stdout


def test_pipeline_run_subscribes_every_number_to_the_demo_receiver_only_when_none_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = with_demo_receiver(load_settings(notify={"demo_receiver_port": 19104}))
    [subscription] = settings.notify.subscription_list()
    assert (subscription.phone_number_id, subscription.url) == ("*", f"http://127.0.0.1:19104{DEMO_PATH}")
    assert settings.notify.demo_receiver
    env = settings_env(settings)
    assert json.loads(env["NOTIFY_SUBSCRIPTIONS"])[0]["url"] == subscription.url  # reaches the child process
    assert env["NOTIFY_DEMO_RECEIVER"] == "true"
    own = load_settings(notify={"subscriptions": json.dumps([{"phone_number_id": "*", "url": "https://x.example/h",
                                                              "secret": SECRET}])})
    assert with_demo_receiver(own) == own
    monkeypatch.setenv("PIPELINE_ENV", "production")
    monkeypatch.setenv("API_KEYS", '{"production-key-1": "*"}')
    production = load_settings()
    assert with_demo_receiver(production).notify.subscription_list() == ()


async def test_the_demo_receiver_prints_each_callback_and_checks_its_signature(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    receiver = DemoReceiver(NotifySettings(demo_receiver_port=port))
    await receiver.start()
    body = json.dumps({"event_id": "evt_1", "type": "status.read", "request_id": "req_1", "wamid": "wamid.X"}).encode()
    try:
        async with aiohttp.ClientSession() as session:
            for header in (signature_header(DEMO_SECRET, body), signature_header("another-secret-0123", body)):
                async with session.post(f"http://127.0.0.1:{port}{DEMO_PATH}", data=body,
                                        headers={"X-Delivery-Signature": header}) as response:
                    assert response.status == 204
    finally:
        await receiver.stop()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("callback ")]
    assert len(lines) == 2
    assert "status.read" in lines[0]
    assert "evt_1" in lines[0]
    assert lines[0].endswith(" signed")
    assert "BAD SIGNATURE" in lines[1]
