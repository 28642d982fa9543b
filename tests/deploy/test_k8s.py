"""deploy/k8s: both overlays render, validate against the Kubernetes and CRD schemas, and mean what the stages do.

No cluster here, so the proof is offline: `kubectl kustomize` renders, kubernetes-validate checks every core
object strictly (unknown fields fail), the CRD models check the KEDA, Prometheus Operator and Strimzi
resources, and the semantic checks below compare the manifests with the settings and the code.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import KafkaSettings
from pipeline.k8s.generate import PRODUCTION_PARTITIONS, PRODUCTION_REPLICATION, dashboard_configmaps, stale
from pipeline.observability.http import ops_routes
from pipeline.topics import CATALOG, TopicCatalog, strimzi_topics, topic_config
from tests.deploy.k8scheck import (
    K8S,
    OVERLAYS,
    ROOT,
    STAGES,
    configmap_data,
    container,
    env_names,
    find,
    is_core,
    one,
    render,
    secret_refs,
    secret_variables,
    setting_variables,
    settings_from,
    workload_env,
    workloads,
)

# The oldest Kubernetes the manifests are for (preStop `sleep`, topology `matchLabelKeys`), and the newest
# schema kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
CRD_VALIDATOR = K8S / "crd-validation"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(overlay: str) -> list[dict[str, Any]]:
    return render(overlay)


# --- rendering and schemas -------------------------------------------------------------------------------


def test_both_overlays_render_every_stage(docs: list[dict[str, Any]], overlay: str) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in workloads(docs)}
    assert names == {(stage.kind, name) for name, stage in STAGES.items()}
    assert {d["metadata"].get("namespace") for d in docs} == {"delivery" if overlay == "prod" else "delivery-dev"}
    assert not find(docs, "Secret"), "secrets are referenced, never rendered"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_strictly_against_kubernetes_openapi(docs: list[dict[str, Any]], version: str) -> None:
    problems = []
    core = [d for d in docs if is_core(d)]
    assert len(core) >= 30
    for doc in core:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert problems == []


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = one(render("prod"), "Deployment", "delivery-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def _validate_crs(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert (CRD_VALIDATOR / "node_modules").is_dir(), "CRD models missing: `make setup` runs npm ci in " + str(
        CRD_VALIDATOR
    )
    result = subprocess.run(
        ["node", str(CRD_VALIDATOR / "validate.mjs")], input=json.dumps(resources), capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers: list[dict[str, Any]] = json.loads(result.stdout)
    assert len(answers) == len(resources)
    return answers


def test_custom_resources_validate_against_their_crds(docs: list[dict[str, Any]]) -> None:
    custom = [d for d in docs if not is_core(d)]
    assert {d["kind"] for d in custom} == {"ScaledObject", "ServiceMonitor", "PrometheusRule", "KafkaTopic"}
    answers = _validate_crs(custom)
    assert [a for a in answers if a["errors"]] == []


@functools.cache
def _answers_for_broken_resources() -> tuple[dict[str, Any], ...]:
    """One validator run (tsc takes seconds) over resources broken in known ways, and one left intact."""
    docs = render("prod")
    wrong_values = [
        one(docs, "ScaledObject", "delivery-sender"),
        one(docs, "ServiceMonitor", "delivery-api"),
        one(docs, "PrometheusRule", "delivery-rules"),
        one(docs, "KafkaTopic", "send-requests"),
    ]
    wrong_values[0]["spec"]["maxReplicaCount"] = "twelve"
    wrong_values[1]["spec"]["endpoints"] = [{"port": 8080}]  # a port *name* is a string
    wrong_values[2]["spec"]["groups"][0]["rules"][0]["for"] = 120
    wrong_values[3]["spec"]["partitions"] = "12"
    # A cluster would prune these without a word: the autoscaler would poll at its default, the topic
    # keep the broker's replication, Prometheus scrape at its global interval.
    unknown_fields = [
        one(docs, "ScaledObject", "delivery-ingest-consumers"),
        one(docs, "KafkaTopic", "send-results"),
        one(docs, "ServiceMonitor", "delivery-sender"),
    ]
    unknown_fields[0]["spec"]["pollingIntervall"] = 5
    unknown_fields[1]["spec"]["replicaz"] = 3
    unknown_fields[2]["spec"]["endpoints"][0]["intervall"] = "15s"
    intact = one(docs, "ScaledObject", "delivery-notify")
    unknown_kind = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "x"}}
    return tuple(_validate_crs([*wrong_values, *unknown_fields, intact, unknown_kind]))


def test_crd_validation_catches_wrong_values() -> None:
    answers = _answers_for_broken_resources()
    assert all(a["errors"] for a in answers[:4]), answers[:4]
    assert "maxReplicaCount" in answers[0]["errors"][0]
    assert "no CRD schema" in answers[8]["errors"][0]


def test_crd_validation_rejects_unknown_fields() -> None:
    answers = _answers_for_broken_resources()
    for answer, field in zip(answers[4:7], ("pollingIntervall", "replicaz", "intervall"), strict=True):
        assert any(field in error for error in answer["errors"]), answer
    assert answers[7]["errors"] == [], "an error is charged to the resource that has it"


# --- workloads -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STAGES))
def test_probes_hit_the_stage_ops_routes_on_its_port(name: str, docs: list[dict[str, Any]]) -> None:
    stage = STAGES[name]
    workload = one(docs, stage.kind, name)
    settings = settings_from(workload_env(docs, workload))
    c = container(workload)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    ops_paths = {route.path for route in ops_routes(lambda: True)}
    source = (ROOT / stage.serves_ops).read_text()
    # the shared ops routes, or the stage's own routes for those paths (the store's read API)
    assert "ops_routes" in source or "OpsServer" in source or all(f'"{p}"' in source for p in ops_paths), name
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        if kind in c:
            probe = c[kind]["httpGet"]
            assert probe["path"] in ops_paths
            assert ports[probe["port"]] == stage.port(settings), f"{name} {kind}: not the port the stage listens on"


def test_stages_that_connect_before_listening_have_a_startup_probe(docs: list[dict[str, Any]]) -> None:
    # The sender opens its ops port only after Kafka answered; the receiver waits for Kafka (up to the produce
    # timeout) before it listens. Without a startup probe a slow broker would get them killed by liveness.
    for name in ("delivery-sender", "delivery-ingest-receiver"):
        stage = STAGES[name]
        probe = container(one(docs, stage.kind, name))["startupProbe"]
        assert probe["httpGet"]["path"] == "/healthz"
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 60


@pytest.mark.parametrize("name", list(STAGES))
def test_termination_grace_outlasts_the_stage_shutdown(name: str, docs: list[dict[str, Any]]) -> None:
    stage = STAGES[name]
    workload = one(docs, stage.kind, name)
    settings = settings_from(workload_env(docs, workload))
    pre_stop = container(workload).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + stage.shutdown_grace(settings), f"{name}: {grace} s"
    if stage.http:
        assert pre_stop >= 5, "endpoints must drop the pod before the server stops accepting"


def test_every_container_is_unprivileged_with_resources(docs: list[dict[str, Any]]) -> None:
    dockerfile_user = re.findall(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)[-1]
    for workload in workloads(docs):
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            user = sc.get("runAsUser", pod["securityContext"].get("runAsUser"))
            assert user not in (None, 0), f"{c['name']} may run as root"
            assert str(user) == dockerfile_user
            assert sc["runAsNonRoot"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert set(c["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_sender_requests_what_the_benchmark_measured(docs: list[dict[str, Any]]) -> None:
    # BENCHMARKS.md, Sender: one replica at ~943 sent/s used this share of a core.
    figure = r"^\| sender CPU per message \| \d+ µs \(([\d.]+) of a core\)"
    measured = re.search(figure, (ROOT / "BENCHMARKS.md").read_text(), re.M)
    assert measured, "BENCHMARKS.md lost the sender's CPU figure"
    resources = container(one(docs, "StatefulSet", "delivery-sender"))["resources"]
    assert _cores(resources["requests"]["cpu"]) >= float(measured.group(1))
    assert _cores(resources["limits"]["cpu"]) == 1, "one event loop uses one core"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_environment_variable_is_a_real_setting(name: str, docs: list[dict[str, Any]]) -> None:
    workload = one(docs, STAGES[name].kind, name)
    unknown = env_names(docs, workload) - set(setting_variables())
    assert sorted(unknown) == [], f"{name}: not variables of the settings tree: {sorted(unknown)}"


def test_secrets_come_only_from_secret_references(docs: list[dict[str, Any]]) -> None:
    secrets = secret_variables()
    assert {"API_KEYS", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_APP_SECRET", "KAFKA_SASL_PASSWORD"} <= secrets
    for workload in workloads(docs):
        literal = env_names(docs, workload) - set(secret_refs(workload))
        assert not literal & secrets, f"{workload['metadata']['name']}: secret set literally: {literal & secrets}"
        assert set(secret_refs(workload)) <= secrets, "only secret settings come from the Secret"
    receiver = one(docs, "Deployment", "delivery-ingest-receiver")
    consumers = one(docs, "StatefulSet", "delivery-ingest-consumers")
    assert {"WHATSAPP_APP_SECRET", "WHATSAPP_WEBHOOK_TOKEN"} <= set(secret_refs(receiver))
    assert not {"WHATSAPP_APP_SECRET", "WHATSAPP_WEBHOOK_TOKEN"} & set(secret_refs(consumers)), "least privilege"


def test_every_secret_key_is_documented(docs: list[dict[str, Any]]) -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    documented = dict(re.findall(r"^\| `([a-z0-9-]+)` \| `([A-Z0-9_]+)` \|", text, re.M))
    used = {key: var for workload in workloads(docs) for var, key in secret_refs(workload).items()}
    assert used, "no secret references at all"
    for key, var in used.items():
        assert documented.get(key) == var, f"Secret key {key} ({var}) is not in docs/kubernetes.md#secrets"


# --- scaling ---------------------------------------------------------------------------------------------


def _scaler_of(docs: list[dict[str, Any]], name: str) -> list[str]:
    kinds = []
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == name:
            kinds.append("hpa")
    for so in find(docs, "ScaledObject"):
        if so["spec"]["scaleTargetRef"]["name"] == name:
            kinds.append("keda")
    return kinds


def test_http_stages_scale_on_cpu_and_consumers_on_lag_never_both(docs: list[dict[str, Any]]) -> None:
    for name, stage in STAGES.items():
        assert _scaler_of(docs, name) == (["hpa"] if stage.http else ["keda"]), name
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    for so in find(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]
        assert target["kind"] == STAGES[target["name"]].kind


@pytest.mark.parametrize("name", [name for name in STAGES if not STAGES[name].http])
def test_scaled_objects_watch_the_groups_and_topics_the_stage_uses(name: str, docs: list[dict[str, Any]]) -> None:
    stage = STAGES[name]
    workload = one(docs, stage.kind, name)
    env = workload_env(docs, workload)
    settings = settings_from(env)
    so = one(docs, "ScaledObject", name)
    triggers = so["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    watched = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers}
    assert watched == stage.consumes(settings)
    for t in triggers:
        assert t["metadata"]["bootstrapServers"] == settings.kafka.bootstrap_servers
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in find(docs, "KafkaTopic")}
    assert so["spec"]["maxReplicaCount"] <= min(partitions[topic] for _, topic in watched), "idle replicas"


def test_topic_sizes_are_the_profile_of_each_overlay(docs: list[dict[str, Any]]) -> None:
    settings = settings_from(configmap_data(docs, next(
        d["metadata"]["name"] for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("delivery-settings")
    )))
    topics = find(docs, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics} == {TopicCatalog(settings.kafka).name(s.name) for s in CATALOG}
    for topic in topics:
        assert topic["spec"]["partitions"] == settings.kafka.partitions
        assert topic["spec"]["replicas"] == settings.kafka.replication_factor


def test_dev_is_one_replica_of_everything() -> None:
    docs = render("dev")
    assert {w["spec"]["replicas"] for w in workloads(docs)} == {1}
    hpas = find(docs, "HorizontalPodAutoscaler")
    assert {(h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) for h in hpas} == {(1, 1)}
    scaled = find(docs, "ScaledObject")
    assert {(s["spec"]["minReplicaCount"], s["spec"]["maxReplicaCount"]) for s in scaled} == {(1, 1)}


def test_prod_spreads_every_workload_over_zones_and_nodes() -> None:
    for workload in workloads(render("prod")):
        assert workload["spec"]["replicas"] >= 2
        spread = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for c in spread:
            assert all(labels.get(k) == v for k, v in c["labelSelector"]["matchLabels"].items())
            assert c["matchLabelKeys"] == ["app.kubernetes.io/name"]


def _lag_table() -> dict[tuple[str, str], tuple[float, float, int]]:
    text = (ROOT / "docs" / "scaling.md").read_text()
    rows = re.findall(
        r"^\| `([\w.-]+)` \| `([\w.-]+)` \| [^|]+ \| ([\d,]+) \| (\d+) \| ([\d,]+) \|$", text, re.M
    )
    return {
        (group, topic): (float(rate.replace(",", "")), float(drain), int(threshold.replace(",", "")))
        for group, topic, rate, drain, threshold in rows
    }


def test_lag_thresholds_are_the_documented_derivation(docs: list[dict[str, Any]]) -> None:
    table = _lag_table()
    assert table, "docs/scaling.md has no lag threshold table"
    for so in find(docs, "ScaledObject"):
        for trigger in so["spec"]["triggers"]:
            key = (trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"])
            assert key in table, f"{key} is not derived in docs/scaling.md"
            rate, drain, threshold = table[key]
            assert threshold == math.floor(rate * drain / 100) * 100, f"{key}: the table's own arithmetic"
            assert int(trigger["metadata"]["lagThreshold"]) == threshold, key


def test_sender_transactional_ids_belong_to_partitions_not_replicas(docs: list[dict[str, Any]]) -> None:
    sender = one(docs, "StatefulSet", "delivery-sender")
    env = {v["name"]: v for v in container(sender)["env"]}
    # One transactional producer per input partition (docs/sender.md, Fencing): no per-pod id to set.
    assert "SENDER_TRANSACTIONAL_ID" not in env
    assert "SENDER_TRANSACTIONAL_ID" not in workload_env(docs, sender)
    assert sender["spec"]["podManagementPolicy"] == "Parallel"
    service = one(docs, "Service", sender["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert workload_env(docs, sender)["SENDER_EXACTLY_ONCE_OUTCOMES"] == "true"
    (trigger,) = one(docs, "ScaledObject", "delivery-sender")["spec"]["triggers"]
    # A hot number's partition is served by one replica whatever its lag: more replicas would sit idle.
    assert trigger["metadata"]["limitToPartitionsWithLag"] == "true"


# --- availability, isolation, monitoring ------------------------------------------------------------------


def test_every_stage_has_a_disruption_budget_and_a_service_monitor(docs: list[dict[str, Any]]) -> None:
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        pdb = one(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["maxUnavailable"] == 1
        monitor = one(docs, "ServiceMonitor", name)
        service = one(docs, "Service", name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert service["spec"]["selector"].items() <= labels.items()
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        # the job label the rules and dashboards expect (`up{job=~"delivery-.*"}`, compose's job names)
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]].startswith("delivery-")


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")


def _egress_kind(peer: dict[str, Any], ports: list[dict[str, Any]]) -> str:
    numbers = {p["port"] for p in ports}
    namespace = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
    if namespace == "kube-system" and numbers == {53}:
        return "dns"
    if namespace == "kafka" and peer["podSelector"]["matchLabels"].get("strimzi.io/kind") == "Kafka":
        return "kafka"
    if namespace == "database" and numbers == {5432}:
        return "database"
    if "ipBlock" in peer and numbers == {443}:
        assert set(PRIVATE) <= set(peer["ipBlock"]["except"]), "public HTTPS must exclude the private ranges"
        return "public-https"
    if "podSelector" in peer and "namespaceSelector" not in peer:
        return "in-namespace:" + peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
    raise AssertionError(f"egress to something unexpected: {peer} {ports}")


def test_network_policies_isolate_the_stages(docs: list[dict[str, Any]]) -> None:
    policies = find(docs, "NetworkPolicy")
    deny = one(docs, "NetworkPolicy", "delivery-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    public: set[str] = set()
    egress: dict[str, set[str]] = {}
    for workload in workloads(docs):
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        egress[name] = set()
        for policy in policies:
            if not _selects(policy, labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from"):
                    public.add(name)
                for peer in rule.get("from", []):
                    assert "ipBlock" not in peer, f"{policy['metadata']['name']}: ingress from addresses"
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to"), f"{policy['metadata']['name']}: egress to any address"
                assert rule.get("ports"), f"{policy['metadata']['name']}: egress to any port"
                egress[name] |= {_egress_kind(peer, rule["ports"]) for peer in rule["to"]}
    assert public == {"delivery-api", "delivery-ingest-receiver"}
    for name, kinds in egress.items():
        assert {"dns", "kafka"} <= kinds, name
    assert "public-https" in egress["delivery-sender"]  # the Graph API
    assert egress["delivery-store"] == {"dns", "kafka", "database"}
    assert egress["delivery-ingest-receiver"] == egress["delivery-ingest-consumers"] == {"dns", "kafka"}
    assert egress["delivery-api"] == {"dns", "kafka", "in-namespace:delivery-store"}


def test_generated_manifests_are_current() -> None:
    assert stale(ROOT) == [], "run `pipeline k8s generate`"
    result = CliRunner().invoke(app, ["k8s", "generate", "--check", "--root", str(ROOT)])
    assert result.exit_code == 0, result.output


def test_prometheus_rule_holds_exactly_the_rule_files(docs: list[dict[str, Any]]) -> None:
    files = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
    groups = [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]
    (rule,) = find(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == groups
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {"DeliveryStageDown", "DeliveryCircuitOpenTooLong"} <= alerts


def test_dashboards_are_configmaps_for_the_grafana_sidecar(docs: list[dict[str, Any]]) -> None:
    files = sorted((ROOT / "dashboards").glob("*.json"))
    assert files
    maps = [d for d in find(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert {name: text for m in maps for name, text in m["data"].items()} == {p.name: p.read_text() for p in files}
    for m in maps:
        (text,) = m["data"].values()
        assert json.loads(text)["uid"]
    datasource = yaml.safe_load(configmap_data(docs, "grafana-datasource-delivery")["delivery-datasource.yaml"])
    uids = {d["uid"] for d in datasource["datasources"]}
    assert uids == {"delivery-prometheus"}
    assert all('"uid": "delivery-prometheus"' in p.read_text() for p in files if "datasource" in p.read_text())
    assert len(dashboard_configmaps(ROOT / "dashboards")) == len(files)


# --- topics ----------------------------------------------------------------------------------------------


def test_topics_export_prints_the_catalog_as_strimzi_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_PARTITIONS", "6")
    monkeypatch.setenv("KAFKA_REPLICATION_FACTOR", "2")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "acme.")
    result = CliRunner().invoke(app, ["topics", "export", "--format", "strimzi", "--cluster", "edge"])
    assert result.exit_code == 0, result.output
    exported = list(yaml.safe_load_all(result.output))
    assert len(exported) == len(CATALOG)
    by_topic = {t["spec"]["topicName"]: t for t in exported}
    requests = by_topic["acme.send.requests"]
    assert requests["metadata"] == {"name": "acme-send-requests", "labels": {"strimzi.io/cluster": "edge"}}
    assert requests["spec"]["partitions"] == 6
    assert requests["spec"]["replicas"] == 2
    state = by_topic["acme.status.state"]["spec"]["config"]
    assert state["cleanup.policy"] == "compact"
    assert by_topic["acme.webhooks.raw"]["spec"]["config"]["max.message.bytes"] == str(4 * 1024 * 1024)
    for spec in CATALOG:
        assert by_topic[f"acme.{spec.name.value}"]["spec"]["config"] == topic_config(spec)
    bad = CliRunner().invoke(app, ["topics", "export", "--format", "helm"])
    assert bad.exit_code == 2
    assert "--format must be strimzi" in bad.output


def test_committed_topics_are_the_production_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_ENV", "production")
    monkeypatch.delenv("KAFKA_PARTITIONS", raising=False)
    monkeypatch.delenv("KAFKA_REPLICATION_FACTOR", raising=False)
    production = KafkaSettings()
    assert (production.partitions, production.replication_factor) == (PRODUCTION_PARTITIONS, PRODUCTION_REPLICATION)
    committed = list(yaml.safe_load_all((K8S / "base" / "generated" / "kafkatopics.yaml").read_text()))
    assert committed == strimzi_topics(
        KafkaSettings(topic_prefix="", partitions=production.partitions,
                      replication_factor=production.replication_factor),
        "delivery",
    )
