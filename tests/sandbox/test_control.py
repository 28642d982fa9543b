"""Control endpoints, /metrics, start-up from settings, and the sandbox's independence from the client."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import load_settings
from pipeline.sandbox import serve
from pipeline.sandbox.testing import SandboxControlError
from tests.sandbox.conftest import NUMBER, Graph, text_body


async def test_config_changes_are_validated_and_name_the_field(graph: Graph) -> None:
    control = graph.sandbox.control
    with pytest.raises(SandboxControlError, match="rate_per_second") as bad:
        await control.configure(rate_per_second=-1)
    assert bad.value.status == 400
    with pytest.raises(SandboxControlError, match="no_such_knob: not a sandbox setting"):
        await control.configure(no_such_knob=1)
    with pytest.raises(SandboxControlError, match="port: fixed at start-up"):
        await control.configure(port=1)
    with pytest.raises(SandboxControlError, match="throughput_http_status"):
        await control.configure(throughput_http_status=418)
    with pytest.raises(SandboxControlError, match="mode"):
        await control.outage("meteor")
    config = await control.configure(rate_per_second=7)
    assert config["rate_per_second"] == 7


async def test_config_never_shows_secrets(graph: Graph) -> None:
    config = await graph.sandbox.control.config()
    text = str(config)
    assert graph.sandbox.access_token not in text
    assert graph.sandbox.app_secret not in text
    assert config["access_token"] == "**********"


async def test_reset_forgets_history_outages_media_and_config(graph: Graph) -> None:
    control = graph.sandbox.control
    await control.set_rate(1)
    await graph.send(text_body())
    await control.outage("error")
    await control.reset()
    assert (await control.config())["rate_per_second"] == graph.sandbox.settings.rate_per_second
    assert await control.sends() == []
    stats = await control.stats()
    assert (stats["received"], stats["numbers"], stats["outages"]) == ({}, {}, {})
    assert (await graph.send(text_body()))[0] == 200


async def test_scenarios_endpoint_lists_the_table(graph: Graph) -> None:
    async with graph.http.get(f"{graph.sandbox.base_url}/_sandbox/scenarios") as r:
        table = await r.json()
    assert {"suffix": "9999", "name": "undeliverable"}.items() <= table[0].items()
    assert len(table) >= 10


async def test_metrics_count_outcomes_without_recipients(graph: Graph) -> None:
    await graph.sandbox.control.set_rate(2)
    for i in range(3):
        await graph.send(text_body(to=f"165055511{i}"))
    await graph.send(text_body(to="16505559000"))
    async with graph.http.get(f"{graph.sandbox.base_url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("sandbox_requests_total", (("endpoint", "messages"), ("outcome", "accepted")))] == 2
    assert samples[("sandbox_requests_total", (("endpoint", "messages"), ("outcome", "throttled")))] == 1
    assert samples[("sandbox_requests_total", (("endpoint", "messages"), ("outcome", "transient")))] == 1
    assert samples[("sandbox_error_codes_total", (("code", "130429"),))] == 1
    assert samples[("sandbox_window_max_per_second", (("phone_number_id", NUMBER),))] == 2
    assert "16505551" not in text
    assert all(name.startswith("sandbox_") for name, _ in samples)


async def test_serve_listens_on_the_configured_port_until_cancelled(http: aiohttp.ClientSession) -> None:
    from pipeline.local.kafka import free_port

    port = free_port()
    settings = load_settings(sandbox={"port": port, "latency_median_seconds": 0})
    task = asyncio.create_task(serve(settings))
    try:
        for _ in range(100):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("serve() never listened")
        async with http.post(f"http://127.0.0.1:{port}/v23.0/{NUMBER}/messages", json=text_body(),
                             headers={"Authorization": "Bearer sandbox-token"}) as r:
            assert r.status == 200
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


def test_the_sandbox_never_imports_the_client_or_the_contracts() -> None:
    # An independent implementation of Meta's side: a shared misreading must not be able to hide.
    code = (
        "import sys, pipeline.sandbox, pipeline.sandbox.testing; "
        "bad = [m for m in sys.modules if m.startswith(('pipeline.whatsapp', 'pipeline.contracts'))]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_docs_list_every_test_number_and_setting() -> None:
    from pathlib import Path

    from pipeline.sandbox.scenarios import SCENARIOS
    from pipeline.sandbox.settings import SandboxSettings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sandbox.md").read_text()
    for scenario in SCENARIOS:
        assert f"| `{scenario.suffix}` | {scenario.name} |" in doc
    for name in SandboxSettings.model_fields:
        env = f"SANDBOX_{name.upper()}"
        # Grouped rows abbreviate a shared prefix: `SANDBOX_LATENCY_MEDIAN_SECONDS`, `_SIGMA`, `_MAX_SECONDS`.
        short = {f"`_{name.upper()}`", f"`_{name.upper().split('_', 1)[-1]}`"}
        assert env in doc or any(s in doc for s in short), env
