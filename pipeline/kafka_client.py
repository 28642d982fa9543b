"""Kafka connection options from `KAFKA_*`: the one factory behind every client of every stage.

    AIOKafkaProducer(**client_options(settings.kafka), acks="all")  # what settings.kafka.client_kwargs() returns
    KafkaBroker(**broker_options(settings.kafka))                   # FastStream: servers, client id, security
    check_tls(settings.kafka)                                        # at start: a bad CA is named, not a timeout
    broker.subscriber(topic, **group_timeouts(10.0))                 # session 10,000 ms, heartbeat 2,000 ms
    AIOKafkaProducer(..., max_batch_size=PRODUCER_BATCH_BYTES)       # a round trip's worth per partition

TLS: `KAFKA_SSL_CA` (else the system's CAs), optional `KAFKA_SSL_CERT` + `KAFKA_SSL_KEY` for mutual TLS,
each a file path or PEM text; host names are checked unless `KAFKA_SSL_CHECK_HOSTNAME=false`. SASL: PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512, over TLS with `SASL_SSL`. aiokafka and FastStream both take a
`ssl.SSLContext`, so one context (built once per distinct setting) serves both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
import tempfile
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from faststream.security import BaseSecurity

    from pipeline.config import KafkaSettings


# `max_batch_size` of the stages' producers. aiokafka keeps one produce request in flight per broker,
# holding at most one batch per partition, so the batch is the ceiling of what a partition takes per
# round trip: the 16 KB default holds ~30 records (a sender's outcomes, an API's requests), and the
# records arriving meanwhile queued behind it whenever the broker took more than a few milliseconds.
PRODUCER_BATCH_BYTES = 256 * 1024


def uses_tls(kafka: KafkaSettings) -> bool:
    return kafka.security_protocol in ("SSL", "SASL_SSL")


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of `kafka`'s settings, or None for PLAINTEXT / SASL_PLAINTEXT."""
    if not uses_tls(kafka):
        return None
    return _context(
        kafka.ssl_ca,
        kafka.ssl_cert,
        kafka.ssl_key.get_secret_value() if kafka.ssl_key else None,
        kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
        kafka.ssl_check_hostname,
    )


@functools.lru_cache(maxsize=8)
def _context(
    ca: str | None, cert: str | None, key: str | None, password: str | None, check_hostname: bool
) -> ssl.SSLContext:
    if ca is not None and _is_pem(ca):
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = check_hostname  # verification of the chain stays on either way
    if cert is not None and key is not None:
        with _as_file(cert) as cert_file, _as_file(key) as key_file:
            context.load_cert_chain(cert_file, key_file, password)
    return context


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN")


@contextlib.contextmanager
def _as_file(value: str) -> Iterator[str]:
    """`load_cert_chain` reads only files: PEM text goes to a private temporary file, removed at once."""
    if not _is_pem(value):
        yield value
        return
    fd, path = tempfile.mkstemp(suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        yield path
    finally:
        os.unlink(path)


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
        "client_id": kafka.client_id,
    }
    context = ssl_context(kafka)
    if context is not None:
        options["ssl_context"] = context
    if kafka.sasl_mechanism:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return options


def faststream_security(kafka: KafkaSettings) -> BaseSecurity | None:
    """FastStream's security object for the same settings (None for PLAINTEXT)."""
    from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512

    context = ssl_context(kafka)
    use_ssl = context is not None
    if kafka.sasl_mechanism is None:
        return BaseSecurity(ssl_context=context, use_ssl=True) if use_ssl else None
    sasl = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    security: BaseSecurity = sasl[kafka.sasl_mechanism](
        username=kafka.sasl_username or "", password=password, ssl_context=context, use_ssl=use_ssl
    )
    return security


class GroupTimeouts(TypedDict):
    session_timeout_ms: int
    heartbeat_interval_ms: int


def group_timeouts(session_timeout_seconds: float) -> GroupTimeouts:
    """A consumer group member's session timeout and heartbeat, in aiokafka's milliseconds.

    Heartbeats at a fifth of the session (at least every second apart), so a few lost ones do not
    cost the membership. The sender's consumer has its own, tighter rule (`sender/consumer.py`).
    """
    return GroupTimeouts(session_timeout_ms=round(session_timeout_seconds * 1000),
                         heartbeat_interval_ms=max(1000, round(session_timeout_seconds * 200)))


def broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for FastStream's `KafkaBroker`."""
    return {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security": faststream_security(kafka),
    }


def check_tls(kafka: KafkaSettings, timeout: float = 5.0) -> None:
    """Complete one TLS handshake with the first bootstrap server, so that a wrong CA, host name or client
    certificate is reported at start, naming the variable, instead of as endless reconnects.

    A broker that does not answer at all is left to the clients' own retries (it may be starting).
    """
    from pipeline.config import SettingsError

    context = ssl_context(kafka)
    if context is None:
        return
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        raw = socket.create_connection((host, int(port)), timeout=timeout)
    except OSError:
        return
    where = f"{host}:{port}"
    try:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            # With TLS 1.3 a broker refuses a missing client certificate only after the handshake, by an
            # alert: wait briefly for one (a healthy broker says nothing until asked).
            tls.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                tls.recv(1)
            return
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            raise SettingsError([("KAFKA_BOOTSTRAP_SERVERS", f"the certificate of {where} does not name {host!r} "
                                  f"({reason}); connect by a name the certificate holds")]) from None
        raise SettingsError([("KAFKA_SSL_CA", f"the certificate of the broker at {where} is not trusted "
                              f"({reason}); set KAFKA_SSL_CA to the CA that signed it (a path or PEM text)")]) from None
    except ssl.SSLError as exc:
        raise SettingsError([("KAFKA_SSL_CERT", f"the TLS handshake with {where} failed ({exc.reason or exc}); "
                              "if the broker requires a client certificate, set KAFKA_SSL_CERT and KAFKA_SSL_KEY; "
                              "if it does not speak TLS, set KAFKA_SECURITY_PROTOCOL=PLAINTEXT")]) from None
    except OSError:
        return
    finally:
        raw.close()


__all__ = ["broker_options", "check_tls", "client_options", "faststream_security", "ssl_context", "uses_tls"]


async def seek_to_first(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Put each partition's position at its first offset now, and return once it is there.

        consumer.assign(tps)
        await seek_to_first(consumer, tps)   # then getmany() reads each partition from its start

    Not `consumer.seek_to_beginning`: that reset is lazy, and when it follows a fresh `assign` the
    reset the assignment already sent (to the consumer's `auto_offset_reset`, "latest" by default)
    can answer it, leaving the consumer at the end of a full partition (aiokafka 0.14).
    """
    partitions = list(partitions)
    for tp, first in (await consumer.beginning_offsets(partitions)).items():
        consumer.seek(tp, first)
