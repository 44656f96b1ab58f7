"""Topology parsing and event application: immutable data, all-or-nothing."""

from __future__ import annotations

import copy
import json

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
