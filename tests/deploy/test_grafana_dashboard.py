"""The monitoring files agree with the service: every dashboard query names a metric it exposes.

A renamed metric, a typo in PromQL or a datasource uid out of step with the provisioning turns
a panel into "No data" silently; these checks make that a failing test instead.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import helpers

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
DATASOURCES_YML = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_YML = DEPLOY / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"

#: metric names inside PromQL (label names and functions never start with the service's prefix)
METRIC = re.compile(r"\btagifai_[a-zA-Z0-9_:]*")
#: Grafana's interval macros, which Prometheus itself does not know
MACROS = re.compile(r"\$__(rate_interval|interval|range)\b")

#: the names a family of each type exposes samples under
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}


def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions() -> list[str]:
    exprs = [t["expr"] for path in dashboards() for p in panels(json.loads(path.read_text()))
             for t in p.get("targets", []) if t.get("expr")]
    assert exprs, "the dashboards query nothing"
    return exprs


@pytest.fixture
def exposed(client) -> set[str]:
    """Every sample name /metrics can expose, after one prediction and one 404."""
    r = client.post("/predict", json={"texts": [{"text": "Transfer learning with transformers."}]})
    assert r.status_code == 200
    assert client.get("/no-such-route").status_code == 404
    body = client.get("/metrics").get_data(as_text=True)
    names = set()
    for family in text_string_to_metric_families(body):
        names.update(sample.name for sample in family.samples)
        # a family with no samples yet (a labelled counter nobody has incremented) still counts
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_every_dashboard_metric_is_exposed(exposed):
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    missing = sorted(used - exposed)
    assert not missing, f"the dashboard queries metrics the service does not expose: {missing}"


def test_dashboard_covers_the_service_signals():
    """Rates, errors, latency quantiles and the model's own signals all have a panel."""
    text = "\n".join(expressions())
    for needle in (
        "tagifai_http_request_duration_seconds_count",
        'status=~"5.."',
        "histogram_quantile(0.99, sum by (le) (rate(tagifai_http_request_duration_seconds_bucket",
        "tagifai_predictions_total",
        "tagifai_low_confidence_predictions_total",
        "tagifai_batch_texts_bucket",
        "tagifai_batch_queue_wait_seconds_bucket",
        "tagifai_inference_seconds_bucket",
    ):
        assert needle in text, needle


def test_dashboard_json_is_well_formed():
    datasource_uid = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"][0]["uid"]
    for path in dashboards():
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource_uid, panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_provisioning_points_at_compose_services():
    datasource = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load(PROVIDERS_YML.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_prometheus_config_scrapes_the_service():
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # every replica of the compose service `tagifai`, each scraped on its own
    (sd,) = jobs["tagifai"]["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == (["tagifai"], "A", 8000)
    assert jobs["tagifai"].get("metrics_path", "/metrics") == "/metrics"


def test_promtool_accepts_the_config_and_the_queries(tmp_path):
    """``promtool check config``, and every dashboard query parsed as PromQL (through a rules file)."""
    promtool = helpers.require_binary("promtool")  # Debian's prometheus package ships it
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_YML)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": MACROS.sub("5m", expr)} for i, expr in enumerate(expressions())
    ]}]}
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
