"""Kubernetes manifests that are generated from the repository's own sources of truth.

    pipeline k8s generate            # rewrite deploy/k8s/base/generated/*.yaml
    pipeline k8s generate --check    # exit 1 listing the stale files (a test runs the same check)

    from pipeline.k8s.generate import outputs, stale
    outputs(ROOT)                    # {relative path: YAML text} of every generated manifest
    stale(ROOT)                      # the relative paths whose committed text differs

The PrometheusRule comes from deploy/prometheus/rules/*.yml, the Grafana dashboard ConfigMaps from
dashboards/*.json and the Strimzi KafkaTopics from the topic catalog (`pipeline/topics.py`), so each
exists once. The hand-written manifests live beside them in deploy/k8s/ (docs/kubernetes.md).
"""
