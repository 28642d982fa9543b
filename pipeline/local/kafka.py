"""A real single-node Apache Kafka (KRaft) broker for development and tests, run from Maven jars.

    jars = fetch_jars()                                  # mvn, once; cached in .cache/kafka/
    broker = LocalKafka(data_dir, port=9092)
    broker.start(); broker.wait_ready()                  # formats storage on first start
    broker.stop()

No library starts Kafka from jars without Docker (testcontainers needs an engine), so this is written
by hand: it is the broker's documented start-up sequence (format storage, then `kafka.Kafka`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.local.process import die_with_parent

PROJECT_ROOT = Path(os.environ.get("PIPELINE_HOME", Path(__file__).resolve().parents[2]))
POM = PROJECT_ROOT / "deploy" / "kafka" / "pom.xml"
CACHE = PROJECT_ROOT / ".cache"
READY_LINE = "Kafka Server started"

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = FILE
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


class KafkaError(RuntimeError):
    pass


def fetch_jars(pom: Path = POM, cache: Path = CACHE) -> Path:
    """Resolve the broker's jars with the machine's `mvn`; a second call with the same pom is free."""
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    jars = cache / "kafka" / digest
    if (jars / ".complete").exists():
        return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (`mvn`) is needed to fetch the Kafka broker jars; install it (apt-get install maven)")
    staging = jars.with_name(f"{digest}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    result = subprocess.run(  # noqa: S603 — fixed argument list, no shell
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KafkaError(f"mvn could not resolve the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    (staging / ".complete").write_text(digest)
    shutil.rmtree(jars, ignore_errors=True)
    staging.rename(jars)
    return jars


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and one this process has not handed out before.

    The kernel may give a just-closed port to the next `bind(0)`, so two calls
    in a row (a broker's two listeners) could otherwise get the same port.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class LocalKafka:
    """One broker+controller node listening on 127.0.0.1, its state under `data_dir`."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 0
    heap: str = "512m"
    jars: Path | None = None
    extra_listeners: dict[str, int] = field(default_factory=dict)
    """More listeners on 127.0.0.1, name -> port; the name is also the protocol (SSL, SASL_SSL, SASL_PLAINTEXT)."""
    extra_config: dict[str, str] = field(default_factory=dict)
    """More `server.properties` entries: keystores, SASL mechanisms and their JAAS configurations."""
    tied_to_parent: bool = False
    """The JVM gets SIGTERM when the starting process dies (`pipeline run`; not `pipeline kafka start`)."""
    scram_credentials: tuple[str, ...] = ()
    """`kafka-storage format --add-scram` entries, e.g. `SCRAM-SHA-256=[name=alice,password=secret]`."""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.controller_port:
            self.controller_port = self.port + 1 if self.port == 9092 else free_port()

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        extra = "".join(f",{name}://127.0.0.1:{port}" for name, port in self.extra_listeners.items())
        protocols = "".join(f",{name}:{name}" for name in self.extra_listeners)
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port}{extra},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}{extra}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT{protocols}",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"log.dirs={logs}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "num.partitions=3",
                    *(f"{key}={value}" for key, value in self.extra_config.items()),
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        return props

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaError("Java 17+ (`java`) is needed to run the Kafka broker")
        jars = self.jars or fetch_jars()
        return [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # faster start-up; the broker is not CPU-bound in tests
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{jars}/*",
            *args,
        ]

    def start(self) -> None:
        """Format storage if needed and start the JVM (returns at once; see `wait_ready`)."""
        if self.running():
            raise KafkaError(f"a broker already runs from {self.data_dir} (pid {self.pid_file.read_text()})")
        props = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = _cluster_id()
            result = subprocess.run(  # noqa: S603
                self._java(
                    "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props), "--standalone",
                    *(arg for entry in self.scram_credentials for arg in ("--add-scram", entry)),
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise KafkaError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        self.log_file.write_text("")
        with (self.data_dir / "broker.out").open("wb") as out:
            self._process = subprocess.Popen(  # noqa: S603
                self._java("kafka.Kafka", str(props)),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to us; we stop the broker in order
                preexec_fn=die_with_parent if self.tied_to_parent else None,
            )
        self.pid_file.write_text(str(self._process.pid))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise KafkaError(f"the broker exited with {self._process.returncode}; see {self.data_dir}/broker.out")
            if READY_LINE in self.log_file.read_text(errors="replace") and _accepts(self.port):
                return
            time.sleep(0.2)
        raise KafkaError(f"the broker did not become ready within {timeout:.0f}s; see {self.log_file}")

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return _is_kafka(pid)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the broker to shut down cleanly; kill it if it does not within `timeout`."""
        pid = self.pid()
        if pid is None or not self.running():
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            if self._process is not None:
                self._process.poll()  # reap, so the pid stops existing
            time.sleep(0.1)
        if self.running():
            os.kill(pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait()
        self.pid_file.unlink(missing_ok=True)


def _cluster_id() -> str:
    # KRaft wants a 22-character base64 UUID; this is what `kafka-storage random-uuid` prints.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _is_kafka(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # not Linux: trust the pid file
    return b"kafka.Kafka" in cmdline and b"defunct" not in cmdline
