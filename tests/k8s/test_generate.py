"""pipeline.k8s.generate on a scratch repository: what it writes, what it calls stale, what it refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.k8s.generate import GENERATED, outputs, prometheus_rule, stale, write
from tests.deploy.promcheck import ROOT


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "deploy" / "prometheus" / "rules", tmp_path / "deploy" / "prometheus" / "rules")
    shutil.copytree(ROOT / "dashboards", tmp_path / "dashboards", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return tmp_path


def test_write_creates_every_output_then_nothing_is_stale(repo: Path) -> None:
    assert sorted(stale(repo)) == sorted(outputs(repo))
    assert sorted(write(repo, check=True)) == sorted(outputs(repo))
    assert not (repo / GENERATED).exists(), "--check never writes"
    write(repo)
    assert stale(repo) == []


def test_an_edited_rule_file_makes_the_prometheus_rule_stale(repo: Path) -> None:
    write(repo)
    rules = repo / "deploy" / "prometheus" / "rules" / "operations.yml"
    rules.write_text(rules.read_text().replace("for: 2m", "for: 3m", 1))
    assert stale(repo) == [GENERATED / "prometheusrule.yaml"]
    write(repo)
    (rule,) = yaml.safe_load_all((repo / GENERATED / "prometheusrule.yaml").read_text())
    down = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "DeliveryStageDown")
    assert down["for"] == "3m"


def test_a_group_defined_twice_is_refused_naming_both_files(repo: Path) -> None:
    rules = repo / "deploy" / "prometheus" / "rules"
    (rules / "zz-copy.yml").write_text((rules / "operations.yml").read_text())
    message = r"zz-copy.yml: rule group 'delivery-operations' is already defined in operations.yml"
    with pytest.raises(ValueError, match=message):
        prometheus_rule(rules)


def test_dashboards_round_trip_byte_for_byte(repo: Path) -> None:
    write(repo)
    maps = list(yaml.safe_load_all((repo / GENERATED / "dashboards.yaml").read_text()))
    for path in sorted((repo / "dashboards").glob("*.json")):
        (found,) = [m for m in maps if path.name in m["data"]]
        assert found["data"][path.name] == path.read_text()
        assert json.loads(found["data"][path.name])["uid"]
