"""Topology parsing and event application: immutable data, all-or-nothing."""

from __future__ import annotations

import copy
import json
import os

import pytest

from cartridge_agent_lvs.director.topology import apply_event, parse_topology
from cartridge_agent_lvs.errors import TopologyError

from . import _stratos as st

DOC = st.topology({0: [1, 2]}, inactive={0: [3]})


def statuses(topology, service="svc0"):
    return {m.member_id: m.status for m in topology.members(service)}


def test_complete_event_and_bare_topology_give_the_same_model():
    assert parse_topology(DOC) == parse_topology(DOC["topology"])
    assert parse_topology(json.dumps(DOC)) == parse_topology(json.dumps(DOC).encode())


def test_member_fields():
    topo = parse_topology(DOC)
    m = topo.services["svc0"].clusters[st.cluster_id(0)].members[st.member_id(0, 1)]
    assert (m.status, m.address, m.lb_ip_type) == ("Active", st.member_ip(0, 1), "Private")
    assert m.ports[0].proxy == 80 and m.ports[0].value == 80
    assert statuses(topo)[st.member_id(0, 3)] == "Suspended"


def test_public_ip_type_selects_the_public_address():
    doc = copy.deepcopy(DOC)
    member = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][st.cluster_id(0)][
        "memberMap"][st.member_id(0, 1)]
    member["loadBalancingIPType"] = "Public"
    m = parse_topology(doc).members("svc0")[0]
    assert m.address == "203.0.113.2"


def test_model_is_immutable():
    topo = parse_topology(DOC)
    with pytest.raises((TypeError, AttributeError)):
        topo.services["svc9"] = None
    with pytest.raises(AttributeError):
        topo.members("svc0")[0].status = "Active"


@pytest.mark.parametrize("text", [
    json.dumps(DOC)[:-7],                   # truncated
    "",
    "null",
    "[1, 2]",
    '{"topology": {"serviceMap": []}}',
    '{"topology": {"initialized": true}}',
    '{"serviceMap": {"a": {"clusterIdClusterMap": {"c": {"memberMap": {"m": 7}}}}}}',
    '{"serviceMap": {"a": {"clusterIdClusterMap": {"c": {"clusterId": 5}}}}}',
    b"\xff\xfe",
    "[" * 100000,
])
def test_malformed_documents_raise_one_line(text):
    with pytest.raises(TopologyError) as err:
        parse_topology(text)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_member_lifecycle_events():
    topo = parse_topology(DOC)
    new = apply_event(topo, "MemberSuspendedEvent", st.member_event(0, 1))
    assert statuses(new)[st.member_id(0, 1)] == "Suspended"
    assert statuses(topo)[st.member_id(0, 1)] == "Active"          # the old one is untouched
    new = apply_event(new, "MemberActivatedEvent", st.member_event(0, 3))
    assert statuses(new)[st.member_id(0, 3)] == "Active"
    for event, status in (("MemberMaintenanceModeEvent", "In_Maintenance"),
                          ("MemberReadyToShutdownEvent", "ReadyToShutDown")):
        assert statuses(apply_event(new, event, st.member_event(0, 2)))[
            st.member_id(0, 2)] == status
    gone = apply_event(new, "MemberTerminatedEvent", json.dumps(st.member_event(0, 2)))
    assert st.member_id(0, 2) not in statuses(gone)


def test_member_activated_for_a_new_member_adds_it_with_its_ip():
    topo = parse_topology(DOC)
    new = apply_event(topo, "MemberActivatedEvent", st.member_event(0, 9))
    m = [m for m in new.members("svc0") if m.member_id == st.member_id(0, 9)][0]
    assert m.active and m.address == st.member_ip(0, 9)


def test_events_that_change_nothing_return_the_same_object():
    topo = parse_topology(DOC)
    assert apply_event(topo, "MemberActivatedEvent", st.member_event(0, 1)) is topo
    assert apply_event(topo, "ApplicationCreatedEvent", "not even json") is topo
    assert apply_event(topo, "MemberTerminatedEvent", st.member_event(0, 42)) is topo


def test_service_and_cluster_events():
    topo = parse_topology(DOC)
    svc = DOC["topology"]["serviceMap"]["svc0"]
    new = apply_event(topo, "ServiceCreatedEvent", {"serviceName": "svc5",
                                                   "portMap": svc["portMap"]})
    assert "svc5" in new.services and not new.services["svc5"].clusters
    cluster = copy.deepcopy(svc["clusterIdClusterMap"][st.cluster_id(0)])
    cluster.update(serviceName="svc5", clusterId="svc5.c1")
    new = apply_event(new, "ClusterCreatedEvent", {"cluster": cluster})
    assert len(new.members("svc5")) == 3
    new = apply_event(new, "ClusterRemovedEvent", {"serviceName": "svc5",
                                                   "clusterId": "svc5.c1"})
    assert new.members("svc5") == []
    new = apply_event(new, "ServiceRemovedEvent", {"serviceName": "svc5"})
    assert "svc5" not in new.services


@pytest.mark.parametrize("event, payload", [
    ("MemberActivatedEvent", {"serviceName": "nope", "clusterId": "c", "memberId": "m"}),
    ("MemberSuspendedEvent", {"serviceName": "svc0", "clusterId": "nope", "memberId": "m"}),
    ("MemberSuspendedEvent", {"serviceName": "svc0", "clusterId": st.cluster_id(0)}),
    ("MemberSuspendedEvent", '{"serviceName": "svc0", '),
    ("ClusterCreatedEvent", {"cluster": {"serviceName": "nope", "clusterId": "x"}}),
    ("ClusterRemovedEvent", {"serviceName": "svc0", "clusterId": "nope"}),
])
def test_bad_events_raise_and_apply_nothing(event, payload):
    topo = parse_topology(DOC)
    before = copy.deepcopy(statuses(topo))
    with pytest.raises(TopologyError):
        apply_event(topo, event, payload)
    assert statuses(topo) == before


def test_two_services_with_one_service_name_is_an_error_naming_it():
    doc = copy.deepcopy(DOC)
    services = doc["topology"]["serviceMap"]
    services["svc0-copy"] = copy.deepcopy(services["svc0"])        # serviceName "svc0"
    with pytest.raises(TopologyError, match=r"serviceName 'svc0' .*twice") as err:
        parse_topology(doc)
    assert "\n" not in str(err.value)


def test_a_number_too_long_for_python_names_its_field():
    text = json.dumps(DOC).replace('"value": 80', '"value": ' + "7" * 4400, 1)
    with pytest.raises(TopologyError) as err:
        parse_topology(text)
    assert str(err.value) == ("topology: topology.serviceMap.svc0.portMap['80'].value: "
                              "a number of 4400 digits (not a port, id or address)")
    # an event too
    event = json.dumps(st.member_event(0, 1)).replace('"svc0.member-1"', "1" * 5000)
    with pytest.raises(TopologyError, match=r"MemberActivatedEvent: memberId: a number of "
                       "5000 digits"):
        apply_event(parse_topology(DOC), "MemberActivatedEvent", event)


# -- issue 12: the cluster events Stratos 4.1.6 really publishes -----------------------

REPLAY = os.path.join(os.path.dirname(__file__), "samples", "stratos-4.1.6-replay.json")


def replay_steps():
    with open(REPLAY) as f:
        return json.load(f)["steps"]


def new_cluster(cluster_id="svc0.blog.domain", service="svc0"):
    """A Cluster as ApplicationClustersCreatedEvent carries it: memberMap empty."""
    cluster = copy.deepcopy(DOC["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][
        st.cluster_id(0)])
    cluster.update(clusterId=cluster_id, serviceName=service, appId="blog", memberMap={})
    return cluster


def test_application_clusters_created_adds_every_cluster_of_the_list():
    topo = parse_topology(DOC)
    new = apply_event(topo, "ApplicationClustersCreatedEvent", json.dumps(
        {"appId": "blog", "clusterList": [new_cluster(), new_cluster("svc0.blog2.domain")]}))
    assert set(new.services["svc0"].clusters) == {st.cluster_id(0), "svc0.blog.domain",
                                                  "svc0.blog2.domain"}
    assert not new.services["svc0"].clusters["svc0.blog.domain"].members
    # ... so that its members' events are no longer "unknown cluster"
    event = dict(st.member_event(0, 7), clusterId="svc0.blog.domain")
    new = apply_event(new, "MemberCreatedEvent", event)
    new = apply_event(new, "MemberActivatedEvent", event)
    m = new.services["svc0"].clusters["svc0.blog.domain"].members[st.member_id(0, 7)]
    assert m.active and m.address == st.member_ip(0, 7) and m.network_partition_id == "np1"
    with pytest.raises(TopologyError, match="unknown cluster 'svc0.blog.domain'"):
        apply_event(topo, "MemberActivatedEvent", event)      # what it was before


def test_application_clusters_created_keeps_a_cluster_already_known():
    """As Stratos does: a known cluster (and its members) stays as it is."""
    topo = parse_topology(DOC)
    again = new_cluster(st.cluster_id(0))
    assert apply_event(topo, "ApplicationClustersCreatedEvent",
                       {"appId": "app", "clusterList": [again]}) is topo


@pytest.mark.parametrize("payload, message", [
    ({"appId": "blog", "clusterList": [new_cluster(), new_cluster("x.domain", "nosuch")]},
     r"clusterList\[1\]: unknown service 'nosuch' \(application 'blog'\); no cluster"),
    ({"appId": "blog", "clusterList": {"a": 1}}, "clusterList: expected a list"),
    ({"appId": "blog", "clusterList": [7]}, r"clusterList\[0\]: expected a JSON object"),
    ({"appId": "blog", "clusterList": [dict(new_cluster(), memberMap=[])]},
     "memberMap: expected a JSON object"),
])
def test_application_clusters_created_is_all_or_nothing(payload, message):
    topo = parse_topology(DOC)
    with pytest.raises(TopologyError, match=message) as err:
        apply_event(topo, "ApplicationClustersCreatedEvent", payload)
    assert "\n" not in str(err.value)
    assert set(topo.services["svc0"].clusters) == {st.cluster_id(0)}


def test_application_clusters_removed_names_the_service_serviceType():
    topo = apply_event(parse_topology(DOC), "ApplicationClustersCreatedEvent",
                       {"appId": "blog", "clusterList": [new_cluster()]})
    gone = apply_event(topo, "ApplicationClustersRemovedEvent", {"appId": "blog",
                       "clusterData": [{"serviceType": "svc0", "clusterId": "svc0.blog.domain",
                                        "minInstances": 1, "maxInstances": 1},
                                       {"serviceType": "svc0", "clusterId": "never.there"},
                                       {"serviceType": "nosuch", "clusterId": "x"}]})
    assert set(gone.services["svc0"].clusters) == {st.cluster_id(0)}
    # already removed: nothing changes
    assert apply_event(gone, "ApplicationClustersRemovedEvent", {"appId": "blog",
                       "clusterData": [{"serviceType": "svc0",
                                        "clusterId": "svc0.blog.domain"}]}) is gone
    with pytest.raises(TopologyError, match=r"clusterData\[0\].serviceType: expected a "
                       "string"):
        apply_event(topo, "ApplicationClustersRemovedEvent", {"appId": "blog", "clusterData": [
            {"serviceName": "svc0", "clusterId": "svc0.blog.domain"}]})


def test_network_partition_of_members():
    doc = copy.deepcopy(DOC)
    members = doc["topology"]["serviceMap"]["svc0"]["clusterIdClusterMap"][st.cluster_id(0)][
        "memberMap"]
    members[st.member_id(0, 2)]["networkPartitionId"] = None          # tolerated
    del members[st.member_id(0, 3)]["networkPartitionId"]
    topo = parse_topology(doc)
    assert {m.member_id: m.network_partition_id for m in topo.members("svc0")} == {
        st.member_id(0, 1): "np1", st.member_id(0, 2): "", st.member_id(0, 3): ""}
    moved = apply_event(topo, "MemberActivatedEvent",
                        dict(st.member_event(0, 3), networkPartitionId="np2"))
    assert {m.member_id: m.network_partition_id for m in moved.members("svc0")}[
        st.member_id(0, 3)] == "np2"


def test_the_stratos_416_replay_applies_without_an_error():
    """The sample the service test replays over a broker, folded purely."""
    steps = replay_steps()
    topo = None
    for step in steps:
        for message in step["messages"]:
            name = message["topic"].split("/")[-1]
            payload = json.dumps(message["payload"])
            topo = (parse_topology(payload) if name == "CompleteTopologyEvent"
                    else apply_event(topo, name, payload))
        if step["note"].startswith("... and activated"):
            assert {m.member_id for m in topo.members("php") if m.active} == {
                "shop.php.domain0a1b", "shop.php.domain0c2d", "blog.php.domain5e6f",
                "blog.php.domain7a8b"}
    assert set(topo.services["php"].clusters) == {"shop.php.domain"}
    assert set(topo.services["mysql"].clusters) == set()
