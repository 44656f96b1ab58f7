"""The demo's words: each event the guest reports (``demo.guest``) -> lines for the user.

Pure functions, tested on the host (``tests/test_demo.py``). Written for someone who has
never used LVS: every step says what happened and the numbers that show it.
"""

from __future__ import annotations

from cartridge_agent_lvs.director.stats import parse_stamp

INTRO = """\
LVS (Linux Virtual Server), both halves of this project at work.
  A *director* owns a virtual IP (VIP) and hands every new connection to one of several
  *real servers*; they answer the client directly. Two directors share the VIP with VRRP:
  the MASTER serves, the BACKUP takes over if it dies. This project configures both sides:
  real servers with `cartridge-agent-lvs apply`, directors with `lvs-extension run`."""

#: said before the VM boots
VM_NOTE = ("Everything below runs in a throwaway kernel VM: nothing on this machine's own "
           "network changes.")

#: the columns of `lvs-extension stats` shown (the packet and byte columns are cut)
STATS_COLUMNS = 7


def counts(answers: dict) -> str:
    """``{"member-1": 10, "member-3": 10}`` -> ``member-1 10, member-3 10``."""
    return ", ".join(f"{name} {n}" for name, n in sorted(answers.items())) or "none"


def _names(names) -> str:
    return ", ".join(names) or "none"


def stats_conns(text: str) -> dict:
    """``lvs-extension stats`` (its table) -> ``{"10.0.1.11:80": connections, ...}``."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["->"] and len(parts) >= STATS_COLUMNS:
            found[parts[1]] = int(parts[6])
    return found


def stats_snapshots(text: str) -> list:
    """The output of ``lvs-extension stats --interval`` -> ``[(epoch seconds, table), ...]``
    for each snapshot known complete (one that a later one follows: the last may still be
    being written). Lines before the first snapshot (the log's command line) are skipped."""
    found, at, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("--- "):
            if at is not None:
                found.append((at, "\n".join(lines)))
            at, lines = parse_stamp(line[4:].strip()), []
        elif at is not None:
            lines.append(line)
    return found


def _stats_table(output: list) -> list:
    """`lvs-extension stats` lines cut to their first columns (address ... Conns)."""
    rows = []
    for line in output:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "Prot":
            rows.append(f"{'':5} {'virtual server / -> real server':30} {'weight':>6} "
                        f"{'active':>6} {'inact':>6} {'conns':>6}")
        elif parts[0] == "->" and len(parts) >= STATS_COLUMNS:
            rows.append(f"{'':5} {'  -> ' + parts[1]:30} {parts[3]:>6} {parts[4]:>6} {parts[5]:>6} {parts[6]:>6}")
        elif len(parts) >= 4 and parts[0] in ("TCP", "UDP", "SCTP"):
            rows.append(f"{parts[0]:5} {parts[1] + ' ' + parts[2]:30} {'':>6} {'':>6} {'':>6} {parts[3]:>6}")
        else:
            rows.append(line)
    return rows


def lines(event: dict) -> list:
    """What the user reads for one guest event (may be nothing)."""
    kind = event.get("kind")
    e = event
    if kind == "guest":
        return [f"The VM is up (userspace at {e['uptime']:.1f} s of guest uptime, {e['cpus']} CPUs)."]
    if kind == "lab":
        ms = ", ".join(f"{n} {ip} ({state})" for n, (ip, state) in sorted(e["members"].items()))
        ds = ", ".join(f"{n} {ip}" for n, ip in sorted(e["directors"].items()))
        return ["Building the lab: one virtual switch, and on it",
                f"  a client {e['client']};",
                f"  two directors, {ds}, each running lvs-extension run: it follows {e['topology']}",
                "    (service tomcat -> VIP " + e["vip"] + "), writes keepalived.conf and reloads "
                "keepalived, which runs VRRP and IPVS;",
                f"  three real servers, the tomcat members of that topology: {ms}, each set up by",
                f"    cartridge-agent-lvs apply --payload {e['payload']}, with a small web server",
                "    that answers with its own name.",
                "  The five commands start side by side: each is a Python start, 20-30 s under emulation."]
    if kind == "realserver":
        sysctls = " ".join(f"{k}={v}" for k, v in sorted(e["sysctls"].items()))
        kind_of = "the dummy link" if e.get("dummy") else "the link (NOT a dummy)"
        bound = f"the VIP bound as /32 on {kind_of} lvs0" if e["vip_bound"] else "the VIP NOT bound"
        return [f"  {e['name']} set up by cartridge-agent-lvs apply after {e['seconds']:.0f} s: {bound}, "
                f"{sysctls} (it accepts packets for the VIP but never answers ARP for it)"]
    if kind == "director":
        return [f"  {e['name']}: lvs-extension wrote keepalived.conf after {e['seconds']:.0f} s "
                f"({e['virtual_servers']} virtual server, {e['real_servers']} real servers); "
                f"keepalived started as {e['role']}"]
    if kind == "serving":
        waiting = [n for n, s in sorted(e["states"].items()) if s != "Active"]
        out = [f"Ready after {e['seconds']:.0f} s: {e['master']} (MASTER) holds the VIP {e['vip']}; "
               f"IPVS sends its port 80 to {_names(e['served'])}."]
        if waiting:
            out.append(f"  ({_names(waiting)}: '{e['states'][waiting[0]]}' in the topology, "
                       "so no traffic yet)")
        return out
    if kind == "spread":
        head = ["", "1. Requests are spread over the real servers"] if "since" not in e else []
        return head + [f"   {e['requests']} requests from the client to http://VIP/: {counts(e['answers'])}"
                       + (" (round robin)" if "since" in e else "")]
    if kind == "joined":
        return [f"   Stratos marks {e['member']} Active (the topology file changes): both directors "
                f"send it traffic {e['seconds']:.1f} s later."]
    if kind == "drained":
        removed = ", ".join(f"{s:.1f} s on {d}" for d, s in sorted(e["removed_seconds"].items()))
        return ["", "2. A member leaves the topology and is drained",
                f"   {e['member']} removed from the topology: weight 0 on dir1 after "
                f"{e['weight0_seconds']:.1f} s (no new connections; open ones may finish)",
                f"   {sum(e['during'].values())} requests during the drain: {counts(e['during'])}",
                f"   {e['member']} gone from IPVS after {removed} (drain_seconds {e['drain_seconds']})",
                f"   {sum(e['after'].values())} requests: {counts(e['after'])}"]
    if kind == "failover":
        return ["", "3. The MASTER director dies; the BACKUP takes over",
                "   the client sends a request every 0.1 s; dir1's cable is pulled and its keepalived "
                "killed",
                f"   dir2 holds the VIP {e['takeover_seconds']:.1f} s later (VRRP: 3 missed "
                f"advertisements of {e['advert_int']} s, then the BACKUP announces itself)",
                f"   gap seen by the client: {e['gap_seconds']:.1f} s without an answer, "
                f"{e['failed']} of {e['requests']} requests failed; the first answer through dir2 came "
                f"{e['first_answer_seconds']:.1f} s after the crash",
                f"   answers since the crash: {counts(e['answers_after'])}"]
    if kind == "stats":
        agree = e["conns"] == e["client_answers"]
        verdict = ("exactly the answers the client got since the crash" if agree else
                   f"the client got {counts(e['client_answers'])}")
        return (["", f"4. `lvs-extension stats` on {e['director']}: the kernel's counters, per real server",
                 f"   (it has been reading them every {e['interval']:g} s since step 1; this is the first "
                 "reading after the traffic)"]
                + [f"   {row}" for row in _stats_table(e["output"])]
                + [f"   {e['director']} counted {counts(e['conns'])} connections: {verdict}"])
    if kind == "teardown":
        left = e["problems"] + [f"namespace {n} left" for n in e["namespaces_left"]]
        return ["", f"5. Torn down in {e['seconds']:.1f} s: processes stopped, namespaces and the "
                "switch deleted" + (f"; problems: {'; '.join(left)}" if left else "")]
    if kind == "failed":
        return ["", f"FAILED while {STEP_WORDS.get(e['step'], e['step'])}: {e['error']}"]
    return []


STEP_WORDS = {"start": "building the lab and starting the real servers and directors",
              "spread": "spreading requests", "drain": "draining a member",
              "failover": "failing over", "stats": "reading the counters"}


def fallback_intro(reason: str) -> list:
    """The one line saying why no VM, and what is shown instead."""
    return [f"No kernel VM on this machine: {reason}.",
            "Showing instead: the real-server half in a network namespace, then a director dry run "
            "(render and check of the shipped sample topology)."]
