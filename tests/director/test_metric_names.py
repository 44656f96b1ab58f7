"""The exported metric names, where they are used: ``deploy/grafana-dashboard.json``
uses exactly the names the code exports (every expression names at least one
``lvs_extension_`` sample of a real scrape, and every label it groups, filters or
shows by is a label of those samples), and README.rst documents every family."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .test_metrics import lab, scrape, vrrp_ns  # noqa: F401
from ._service import fake_keepalived  # noqa: F401
from tests.realserver.conftest import netns  # noqa: F401

pytestmark = [pytest.mark.keepalived, pytest.mark.netns]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
#: labels Prometheus adds to every scraped series, and the histogram bucket label
TARGET_LABELS = {"instance", "job", "le"}


def expressions(doc: dict):
    """(expression, legend) of every panel target and the templating queries."""
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"], target.get("legendFormat", "")
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"], ""


def exported(lab) -> dict:
    """sample name -> its label names, from a scrape of a director with every family."""
    director, kernel, port, _ = lab

    class Feed:
        name, connected = "file", True
    director.metrics.watch_feed(Feed())
    labels = {}
    for name, pairs in scrape(port):
        labels.setdefault(name, set()).update(label for label, _ in pairs)
    return labels


def families(names) -> set:
    return {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in names}


def test_every_expression_names_exported_metrics_and_their_labels(lab):
    labels = exported(lab)
    doc = json.loads(DASHBOARD.read_text())
    seen = set()
    for expr, legend in expressions(doc):
        names = set(re.findall(r"\blvs_extension_[a-z0-9_]+", expr))
        assert names, f"no lvs_extension_ metric in {expr!r}"
        unknown = names - set(labels)
        assert not unknown, f"{expr!r} names metrics the code does not export: {unknown}"
        seen |= names
        known = set().union(*(labels[n] for n in names)) | TARGET_LABELS
        used = set(re.findall(r"\{\{(\w+)\}\}", legend))
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used |= {w.strip() for w in group.split(",")}
        for matchers in re.findall(r"\{([^{}]*)\}", expr):
            used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        used |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
        assert used <= known, f"{expr!r}: labels {used - known} are not exported"
    # the dashboard shows every family the code exports
    assert families(labels) - families(seen) == set()


def bgp_families() -> set:
    """The families only a director in mode bgp adds (its Announcer's)."""
    from prometheus_client import CollectorRegistry
    from cartridge_agent_lvs.director import settings as S
    from cartridge_agent_lvs.director.announce import Announcer
    from cartridge_agent_lvs.director.keepalived import Keepalived
    registry = CollectorRegistry()
    Announcer(S.load(dict(vip_map="web|192.0.2.10", mode="bgp", scheduler="mh",
                          bgp_local_as="65001", bgp_router_id="10.0.0.11",
                          bgp_peers="10.0.0.1 65000")),
              Keepalived("/nonexistent/keepalived.conf"), lambda: (), registry)
    return {family.name for family in registry.collect()}


def test_the_readme_documents_every_metric_family(lab):
    documented = {"lvs_extension_" + name for name in re.findall(
        r"^``([a-z_]+)``\s+(?:gauge|counter|histogram)\b", (ROOT / "README.rst").read_text(),
        re.MULTILINE)}
    bgp = bgp_families()
    assert bgp == {"lvs_extension_vip_announced"}
    exported_families = {re.sub(r"_total$", "", n) for n in families(exported(lab)) | bgp}
    assert exported_families == {re.sub(r"_total$", "", n) for n in documented}
