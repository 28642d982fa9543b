"""Kafka over TLS, mutual TLS and SASL (PLAIN, SCRAM-SHA-256/512) through every stage's client factory.

A real broker (pipeline/local/kafka.py) gets an `SSL` listener that requires a client certificate and a
`SASL_SSL` listener with SCRAM users created at format time; the certificates are made here.
"""

from __future__ import annotations

import ast
import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pipeline.api.publisher import Delivery, Publisher
from pipeline.config import Settings, SettingsError, load_settings
from pipeline.contracts import SendRequest
from pipeline.ingest.consumer import new_producer
from pipeline.ingest.restore import new_restore_consumer
from pipeline.kafka_client import check_tls
from pipeline.local.kafka import LocalKafka, free_port
from pipeline.observability import new_broker
from pipeline.sender.consumer import kafka_consumer
from pipeline.topics import TopicCatalog, create_topics
from tests.pki import Pki, make_pki

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USERS = {"SCRAM-SHA-256": ("scram256", "s3cret-256"), "SCRAM-SHA-512": ("scram512", "s3cret-512"),
         "PLAIN": ("plainuser", "plain-secret")}


@dataclass
class TlsBroker:
    broker: LocalKafka
    pki: Pki
    ssl_port: int
    sasl_port: int


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    directory = tmp_path_factory.mktemp("kafka-tls")
    pki, keystore = make_pki(directory)
    ssl_port, sasl_port = free_port(), free_port()
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    plain_user, plain_password = USERS["PLAIN"]
    broker = LocalKafka(
        data_dir=directory / "data",
        port=free_port(),
        extra_listeners={"SSL": ssl_port, "SASL_SSL": sasl_port},
        extra_config={
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(pki.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.sasl_ssl.plain.sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule"
            f' required user_{plain_user}="{plain_password}";',
        },
        scram_credentials=tuple(
            f"{mechanism}=[name={user},password={password}]"
            for mechanism, (user, password) in USERS.items() if mechanism != "PLAIN"
        ),
    )
    broker.start()
    try:
        broker.wait_ready(timeout=120)
        yield TlsBroker(broker, pki, ssl_port, sasl_port)
    finally:
        broker.stop()


def tls_settings(tls: TlsBroker, **kafka: Any) -> Settings:
    prefix = f"tls{uuid.uuid4().hex[:8]}."
    return load_settings(
        kafka={"topic_prefix": prefix, "partitions": 1, **kafka},
        sender={"group_id": f"sender-{prefix}"},
        ingest={"group_id": f"ingest-{prefix}"},
    )


async def round_trip_every_stage(settings: Settings) -> None:
    """Admin (topics), the API's publisher and the sender's consumer, the ingest's producer and consumers,
    and a FastStream broker (the consumer stages' framework), all on the given settings."""
    await create_topics(settings.kafka)
    catalog = TopicCatalog(settings.kafka)

    publisher = Publisher(settings, TracerProvider())
    await asyncio.wait_for(publisher.start(), 60)
    try:
        request = SendRequest.model_validate(
            {"phone_number_id": "106540352242922", "to": "+16505551234",
             "message": {"type": "text", "text": {"body": "tls"}}}
        )
        assert await publisher.publish([request]) == [Delivery.ACKNOWLEDGED]
    finally:
        await publisher.stop()
    consumer = kafka_consumer(settings)  # the sender's consumer, as its KafkaSource builds it
    consumer.subscribe([catalog.send_requests])
    await consumer.start()
    try:
        batch = await _fetch(consumer)
        assert request.request_id.encode() in batch[0].value
    finally:
        await consumer.stop()

    producer = new_producer(settings, linger_seconds=0)
    await producer.start()
    try:
        await producer.send_and_wait(catalog.webhooks_raw, b"raw-webhook", key=b"k")
    finally:
        await producer.stop()
    restore = new_restore_consumer(settings)
    await restore.start()
    try:
        assert await restore.topics()
    finally:
        await restore.stop()

    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    # The consumer stages' (ingest, store, notify) FastStream broker, from the one factory.
    broker = new_broker(settings.kafka, TracerProvider(), "tls-test")

    @broker.subscriber(catalog.webhooks_raw, group_id=f"fs-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest")
    async def on_record(body: bytes) -> None:
        if not received.done():
            received.set_result(body)

    async with broker:
        await broker.start()
        assert await asyncio.wait_for(received, 60) == b"raw-webhook"
        await broker.publish(b"via faststream", catalog.webhooks_raw)


async def _fetch(consumer: Any) -> list[Any]:
    for _ in range(60):
        batches = await consumer.getmany(timeout_ms=1000)
        records = [r for rs in batches.values() for r in rs]
        if records:
            return records
    raise AssertionError("nothing consumed within 60 s")


async def test_mutual_tls_with_pem_text(tls_broker: TlsBroker) -> None:
    settings = tls_settings(
        tls_broker, bootstrap_servers=f"127.0.0.1:{tls_broker.ssl_port}", security_protocol="SSL",
        ssl_ca=str(tls_broker.pki.ca), ssl_cert=tls_broker.pki.client_cert_pem, ssl_key=tls_broker.pki.client_key_pem,
    )
    check_tls(settings.kafka)
    await round_trip_every_stage(settings)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_sasl_over_tls(tls_broker: TlsBroker, mechanism: str) -> None:
    user, password = USERS[mechanism]
    settings = tls_settings(
        tls_broker, bootstrap_servers=f"127.0.0.1:{tls_broker.sasl_port}", security_protocol="SASL_SSL",
        ssl_ca=tls_broker.pki.ca.read_text(), sasl_mechanism=mechanism, sasl_username=user, sasl_password=password,
    )
    check_tls(settings.kafka)
    await round_trip_every_stage(settings)


def test_wrong_ca_fails_naming_the_variable(tls_broker: TlsBroker) -> None:
    settings = tls_settings(
        tls_broker, bootstrap_servers=f"127.0.0.1:{tls_broker.sasl_port}", security_protocol="SASL_SSL",
        ssl_ca=str(tls_broker.pki.wrong_ca), sasl_mechanism="SCRAM-SHA-256", sasl_username="x", sasl_password="y",
    )
    with pytest.raises(SettingsError) as info:
        check_tls(settings.kafka)
    (variable, why), = info.value.problems
    assert variable == "KAFKA_SSL_CA"
    assert "certificate verify failed" in why or "unable to get local issuer" in why
    assert "set KAFKA_SSL_CA" in why


def test_host_name_is_checked(tls_broker: TlsBroker) -> None:
    common = {"security_protocol": "SASL_SSL", "ssl_ca": str(tls_broker.pki.ca), "sasl_mechanism": "PLAIN",
              "sasl_username": "x", "sasl_password": "y", "bootstrap_servers": f"localhost:{tls_broker.sasl_port}"}
    with pytest.raises(SettingsError) as info:
        check_tls(tls_settings(tls_broker, **common).kafka)
    assert info.value.problems[0][0] == "KAFKA_BOOTSTRAP_SERVERS"
    check_tls(tls_settings(tls_broker, **common, ssl_check_hostname=False).kafka)


def test_missing_client_certificate_is_named(tls_broker: TlsBroker) -> None:
    settings = tls_settings(tls_broker, bootstrap_servers=f"127.0.0.1:{tls_broker.ssl_port}",
                            security_protocol="SSL", ssl_ca=str(tls_broker.pki.ca))
    with pytest.raises(SettingsError) as info:
        check_tls(settings.kafka)
    assert info.value.problems[0][0] == "KAFKA_SSL_CERT"


def test_tls_and_sasl_settings_are_checked_together() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(kafka={"security_protocol": "SASL_SSL"})
    assert [v for v, _ in info.value.problems] == ["KAFKA_SASL_MECHANISM"]
    with pytest.raises(SettingsError) as info:
        load_settings(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"})
    assert [v for v, _ in info.value.problems] == ["KAFKA_SASL_PASSWORD"]
    with pytest.raises(SettingsError) as info:
        load_settings(kafka={"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"})
    assert "SASL_SSL" in info.value.problems[0][1]  # SASL on a PLAINTEXT protocol would be ignored
    with pytest.raises(SettingsError) as info:
        load_settings(kafka={"security_protocol": "SSL", "ssl_cert": "-----BEGIN CERTIFICATE-----"})
    assert [v for v, _ in info.value.problems] == ["KAFKA_SSL_KEY"]
    with pytest.raises(SettingsError) as info:
        load_settings(kafka={"security_protocol": "SSL", "ssl_ca": "/no/such/ca.pem"})
    assert "no such file" in info.value.problems[0][1]


_KAFKA_CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "KafkaBroker"}


def test_every_kafka_client_of_the_pipeline_uses_the_one_factory() -> None:
    """So TLS and SASL reach every client a stage builds (one construction outside would be plaintext)."""
    offenders, seen = [], 0
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name == "asyncapi.py":  # describes the broker for the docs; never connects
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            called = getattr(node.func, "id", getattr(node.func, "attr", "")) if isinstance(node, ast.Call) else ""
            if isinstance(node, ast.Call) and called in _KAFKA_CLIENTS:
                seen += 1
                spread = [k.value for k in node.keywords if k.arg is None]
                names = {getattr(c.func, "attr", getattr(c.func, "id", "")) for c in spread if isinstance(c, ast.Call)}
                if not names & {"client_kwargs", "client_options", "broker_options"}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert seen >= 8  # the sender's, the API's and the ingest's clients were all looked at
    assert offenders == []
