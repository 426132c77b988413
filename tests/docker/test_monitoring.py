"""The Prometheus + Grafana provisioning under docker/: Prometheus scrapes the Triton services' metrics port, Grafana's
data source is the one the dashboard names, and every dashboard query reads a tapestry series that the stages
record (tapestry.serving.metrics.FAMILIES) for the selected tenants. No Docker engine needed."""
import json
import re
from pathlib import Path

import yaml

from tapestry.serving.metrics import FAMILIES, HISTOGRAM

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_prometheus_scrapes_the_metrics_port_of_the_triton_services():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    services = _compose()["services"]
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in services and "triton" in host, target
        published = [p for p in services[host].get("ports", []) + services["triton"]["ports"] if str(port) in p]
        assert published and all(p.startswith("127.0.0.1:") for p in published), f"{target}: not loopback-only"
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
        assert services[name]["profiles"] == ["monitoring"]


def test_grafana_provisions_the_data_source_and_the_dashboard_it_names():
    ds = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "tapestry.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in _compose()["services"]["grafana"]["volumes"] if ":" in v}
    local = mounts[provider["providers"][0]["options"]["path"]]
    dashboards = list((REPO / local).glob("*.json"))
    assert dashboards == [DOCKER / "grafana" / "dashboards" / "tapestry.json"]
    dash = json.loads(dashboards[0].read_text())
    uids = {p["datasource"]["uid"] for p in dash["panels"]} | {
        t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


def test_every_panel_reads_recorded_series_per_selected_tenant():
    dash = json.loads((DOCKER / "grafana" / "dashboards" / "tapestry.json").read_text())
    (tenant,) = dash["templating"]["list"]
    assert tenant["name"] == "tenant" and "tapestry_" in tenant["query"]["query"]
    names = set()
    for family, spec in FAMILIES.items():
        names |= {family + s for s in ("_bucket", "_sum", "_count")} if spec.kind == HISTOGRAM else {family}
    read = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            series = re.findall(r"\b(tapestry_[a-z_]+)\{([^}]*)\}", target["expr"])
            assert series, panel["title"]
            for name, selector in series:
                assert name in names, f"{panel['title']}: {name} is not a recorded series"
                assert 'tenant=~"$tenant"' in selector, f"{panel['title']}: {name} not filtered by tenant"
                read.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert read == set(FAMILIES), f"families without a panel: {set(FAMILIES) - read}"
