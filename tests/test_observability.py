"""The observability profile agrees with the code: the dashboard's queries name metrics the services
export, Prometheus scrapes the port the services serve on, every observability service has a health
check. No Docker engine needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import shared.metrics  # noqa: F401 - registers Baton's metrics
from shared.broker import _observers

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DASHBOARD = json.loads((ROOT / "observability" / "grafana" / "dashboards" / "baton.json").read_text())


def _exported() -> set[str]:
    _observers("test")  # FastStream's Prometheus middleware registers its metrics in the same registry
    names = set(REGISTRY._names_to_collectors)  # noqa: SLF001 - every sample name (_total, _bucket, ...)
    # read from Redis at scrape time (shared.metrics.StreamCollector, registered by the supervisor)
    return names | {"baton_stream_lag", "baton_stream_pending", "baton_stream_length", "baton_dlq_size",
                    "baton_runs_waiting"}


def test_the_dashboard_queries_only_metrics_the_services_export() -> None:
    exported = _exported()
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names = {w for w in re.findall(r"\b(?:baton|faststream)_[a-z_]+", expr)}
        assert names, expr
        missing = names - exported
        assert not missing, f"{expr}: no such metric {missing}"
    titles = " ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for topic in ("throughput", "duration", "lag", "dlq", "cost", "tokens"):
        assert topic in titles, topic


def test_prometheus_scrapes_every_baton_service_on_its_metrics_port() -> None:
    prometheus = yaml.safe_load((ROOT / "observability" / "prometheus.yml").read_text())
    (baton,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "baton"]
    (dns,) = baton["dns_sd_configs"]
    port = int(COMPOSE["x-baton-env"]["BATON_METRICS_PORT"])
    assert dns["port"] == port
    baton_services = {n for n, s in COMPOSE["services"].items() if s.get("image") == "baton:local"} - {"init"}
    assert set(dns["names"]) == baton_services


def test_observability_services_are_in_their_profile_with_health_checks() -> None:
    services = COMPOSE["services"]
    for name in ("jaeger", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["observability"], name
        assert services[name]["healthcheck"]["test"], name
    mounted = [v.split(":")[0] for v in services["grafana"]["volumes"]]
    for path in mounted:
        assert (ROOT / path).exists(), path
    assert (ROOT / "baton" / "jaeger.yaml").exists()
