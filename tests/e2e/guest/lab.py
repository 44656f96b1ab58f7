"""Guest-side plumbing for the end-to-end suite: namespaces, processes, probes.

Runs INSIDE the VM only. Sets up what a data centre would provide -- a bridge, hosts
(network namespaces with a veth into the bridge), HTTP servers, a message broker -- and
observes the result (HTTP from the client, ARP, the neighbour table, ``/proc/net/ip_vs``).
It never configures LVS itself: real servers and directors are configured by the
project's command-line tools only (see ``runner.py``).

Observation inside a namespace uses a thread that has ``setns``-ed into it (network
namespaces are per thread): sockets it opens live in that namespace, and
``/proc/thread-self/net`` shows that namespace's tables. That is much cheaper than a
process per probe under software emulation.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.e2e.guest import pace

CLONE_NEWNET = 0x40000000
BRIDGE = "lvsbr0"
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(RuntimeError):
    """A fixture step failed (the message names the command and its output)."""


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name``."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsWorker:
    """One thread living in a network namespace; ``call`` runs a function there."""

    def __init__(self, ns: str):
        self.ns = ns
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"ns-{ns}",
                                        initializer=enter_netns, initargs=(ns,))

    def call(self, fn: Callable, *args, timeout: float | None = None, **kwargs):
        """Run ``fn`` in the namespace; ``timeout`` defaults to 30 s on an idle machine."""
        return self._pool.submit(fn, *args, **kwargs).result(
            timeout if timeout is not None else pace.scaled(30.0))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1,
              what: str = "condition"):
    """Poll ``predicate`` until truthy; return ``(value, seconds)`` or raise TimeoutError."""
    start = time.monotonic()
    while True:
        value = predicate()
        elapsed = time.monotonic() - start
        if value:
            return value, elapsed
        if elapsed > timeout:
            raise TimeoutError(f"{what}: not reached within {timeout:.1f} s")
        time.sleep(interval)


# ---------------------------------------------------------------- observation helpers

def http_get(address: str, port: int = 80, timeout: float = 1.0) -> str:
    """One HTTP/1.0 GET on a fresh connection; the body (the server's name)."""
    return http_exchange(address, port, timeout)[0]


#: Source ports for the lab's HTTP clients, each used once per run (below the kernel's
#: ephemeral range). A DR director sees only the client's half of a connection, so
#: IPVS keeps its entry in FIN_WAIT (2 min); a new connection from the same client
#: port within that time IS that entry -- net.ipv4.vs.conn_reuse_mode 1 reschedules
#: only from TIME_WAIT, which a DR director never sees: it goes to the same real
#: server and is not counted as a connection. The kernel's own port choice repeated
#: ports within a scenario (seen: 10 of 100 requests in d), which skewed spread and
#: counters by chance; fresh ports make every request a new IPVS connection.
_CLIENT_PORTS = itertools.cycle(range(20000, 32000))


def bind_fresh_port(sock: socket.socket) -> int:
    """Bind ``sock`` to the next unused client port of the run (thread-safe: the GIL
    makes ``next`` atomic)."""
    host = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
    for _ in range(1000):
        port = next(_CLIENT_PORTS)
        try:
            sock.bind((host, port))
            return port
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise OSError("no free client port in 20000-31999")


def http_exchange(address: str, port: int = 80, timeout: float = 1.0,
                  local: list | None = None, size: int = 0) -> tuple[str, int]:
    """One HTTP/1.0 GET on a fresh connection: ``(body, client port)``.

    The client port is also appended to ``local`` as soon as the connection is
    attempted, so a failed request still names its port when the kernel gave one.
    ``size``: the request's exact length in bytes, padded with an ``X-Pad`` header
    (0: as short as it gets; see :func:`http_request`).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        bind_fresh_port(sock)
        try:
            sock.connect((address, port))
        except socket.timeout:
            raise TimeoutError("connect timed out") from None
        finally:
            try:
                client_port = sock.getsockname()[1]
            except OSError:
                client_port = 0
            if local is not None:
                local.append(client_port)
        sock.sendall(http_request(address, size))
        chunks = []
        while True:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                raise TimeoutError(f"response timed out after {len(b''.join(chunks))} bytes") from None
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise OSError(f"bad HTTP response: {head[:60]!r}")
    return body.decode().strip(), client_port


def tcp_connects(address: str, port: int, timeout: float = 1.0) -> bool:
    """Does ``address:port`` accept a TCP connection (what keepalived's TCP_CHECK does)?"""
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def http_request(address: str, size: int = 0) -> bytes:
    """The bytes of an HTTP/1.0 GET for ``address``, ``size`` bytes long when given
    (an ``X-Pad`` header fills it up; a size below the bare request is an error)."""
    host = f"[{address}]" if ":" in address else address
    head, end = f"GET / HTTP/1.0\r\nHost: {host}\r\n", "\r\n"
    if not size:
        return (head + end).encode()
    pad = size - len(head) - len("X-Pad: \r\n") - len(end)
    if pad < 0:
        raise ValueError(f"a request for {address} is at least {size - pad} bytes, not {size}")
    return (head + "X-Pad: " + "a" * pad + "\r\n" + end).encode()


@dataclass
class Request:
    start: float
    end: float
    server: str | None
    error: str | None = None
    port: int = 0          #: the client's TCP port (0: the kernel gave none)


@dataclass
class RequestStream:
    """A client loop sending one request every ``interval`` s until stopped."""

    worker: NetnsWorker
    address: str
    interval: float = 0.05
    timeout: float = 0.5
    results: list = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        enter_netns(self.worker.ns)
        while not self._stop.is_set():
            start = time.monotonic()
            server, error, ports = None, None, []
            try:
                server, _ = http_exchange(self.address, timeout=self.timeout, local=ports)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.results.append(Request(start, time.monotonic(), server, error,
                                        ports[0] if ports else 0))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - start)))

    def __enter__(self) -> "RequestStream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.error]

    def answered(self, since: float = 0.0) -> int:
        """Answered requests that started at or after ``since`` (time.monotonic())."""
        return sum(1 for r in list(self.results) if r.server and r.start >= since)

    def wait_answered(self, count: int, since: float = 0.0, timeout: float = 10.0,
                      what: str = "answers") -> float:
        """Wait until ``count`` requests started at/after ``since`` were answered."""
        return wait_for(lambda: self.answered(since) >= count, pace.scaled(timeout), 0.02,
                        f"{count} {what}")[1]

    def longest_gap(self) -> tuple[float, int]:
        """Longest time between two successful answers that had failures between them.

        Returns ``(seconds, failed_requests_in_that_gap)``; ``(0.0, 0)`` without failures.
        """
        best = (0.0, 0)
        last_ok = None
        failed = 0
        for r in self.results:
            if r.error:
                failed += 1
                continue
            if failed and last_ok is not None:
                best = max(best, (r.end - last_ok, failed))
            last_ok, failed = r.end, 0
        return best


def arp_probe(ifname: str, target: str, wait: float = 1.0, count: int = 3) -> set:
    """Broadcast ARP requests for ``target`` on ``ifname``; the set of MACs that answered.

    Uses a raw packet socket, so every reply is seen (the neighbour table keeps one).
    Call it from a thread inside the namespace (``NetnsWorker.call``).
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        sock.bind((ifname, 0x0806))
        mac = sock.getsockname()[4]
        src = _first_ipv4(ifname)
        frame = (b"\xff" * 6 + mac + struct.pack("!H", 0x0806)
                 + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton(src)
                 + b"\x00" * 6 + socket.inet_aton(target))
        answers = set()
        deadline = time.monotonic() + wait
        for _ in range(count):
            sock.send(frame)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(128)
            except socket.timeout:
                break
            if len(data) >= 42 and struct.unpack("!H", data[20:22])[0] == 2 \
                    and data[28:32] == socket.inet_aton(target):
                answers.add(data[22:28].hex(":"))
        return answers
    finally:
        sock.close()


def solicit(address: str) -> None:
    """Make the kernel resolve ``address``: one UDP datagram to the discard port.

    Call it from a thread inside the namespace; then wait for the neighbour entry to
    leave INCOMPLETE (an answer gives it a lladdr; no answer after the kernel's probes
    -- mcast_solicit x retrans_time, 3 x 1 s -- makes it FAILED).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(b"who-has", (address, 9))
        except OSError:
            pass  # unreachable: exactly what an unanswered ARP looks like


def _first_ipv4(ifname: str) -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[out.index("inet") + 1].split("/")[0]


def parse_ip_vs(text: str) -> dict:
    """``/proc/net/ip_vs`` -> ``{"TCP 10.99.0.100:80": {"10.99.0.21:80": {...}}}``.

    Each real server maps to ``{"method": "Route", "weight": 1, "active": 0, "inactive": 3}``.
    """
    services: dict = {}
    current = None
    for line in text.splitlines()[3:]:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "->":
            services[current][_hexaddr(parts[1])] = {
                "method": parts[2], "weight": int(parts[3]),
                "active": int(parts[4]), "inactive": int(parts[5])}
        else:
            current = f"{parts[0]} {_hexaddr(parts[1])}"
            services[current] = {}
    return services


def _hexaddr(text: str) -> str:
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        addr = ipaddress.IPv6Address(host[1:-1])
        return f"[{addr}]:{int(port, 16)}"
    return f"{ipaddress.IPv4Address(int(host, 16))}:{int(port, 16)}"


def read_ip_vs() -> dict:
    """The IPVS table of the calling thread's namespace (call through ``NetnsWorker``)."""
    with open("/proc/thread-self/net/ip_vs") as f:
        return parse_ip_vs(f.read())


def read_ip_vs_conns() -> int:
    """Total connections IPVS scheduled in the calling thread's namespace (``ip_vs_stats``).

    The kernel (6.1) folds its per-CPU counters into this file every 2 s (estimator).
    """
    return read_ip_vs_totals()["conns"]


IP_VS_TOTALS = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")


def parse_ip_vs_totals(text: str) -> dict:
    """``/proc/net/ip_vs_stats`` -> ``{"conns", "inpkts", "outpkts", "inbytes", "outbytes"}``
    (line 3, hexadecimal)."""
    return dict(zip(IP_VS_TOTALS, (int(x, 16) for x in text.splitlines()[2].split())))


def read_ip_vs_totals() -> dict:
    """The calling thread's namespace's IPVS totals (folded every 2 s)."""
    with open("/proc/thread-self/net/ip_vs_stats") as f:
        return parse_ip_vs_totals(f.read())


@dataclass(frozen=True)
class Conn:
    """One entry of the IPVS connection table (``/proc/net/ip_vs_conn_sync``)."""

    client: str          #: "10.99.0.2:40000"
    virtual: str         #: "10.99.0.100:80"
    dest: str            #: "10.99.0.21:80"
    state: str           #: "FIN_WAIT", ...
    origin: str          #: "LOCAL" (scheduled here) or "SYNC" (learnt from the MASTER)


def parse_ip_vs_conn_sync(text: str) -> list:
    """``/proc/net/ip_vs_conn_sync`` -> ``[Conn, ...]`` (IPv4 and IPv6 entries)."""
    conns = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 9:
            continue
        conns.append(Conn(_conn_addr(parts[1], parts[2]), _conn_addr(parts[3], parts[4]),
                          _conn_addr(parts[5], parts[6]), parts[7], parts[8].upper()))
    return conns


def _conn_addr(address: str, port: str) -> str:
    if ":" in address:
        return f"[{ipaddress.IPv6Address(address)}]:{int(port, 16)}"
    return f"{ipaddress.IPv4Address(int(address, 16))}:{int(port, 16)}"


def read_ip_vs_conn_table() -> list:
    """The IPVS connection table of the calling thread's namespace, with each entry's origin."""
    with open("/proc/thread-self/net/ip_vs_conn_sync") as f:
        return parse_ip_vs_conn_sync(f.read())


def read_sysctl(name: str) -> str:
    """A sysctl of the calling thread's namespace (net.* follows the thread)."""
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return f.read().strip()


# ---------------------------------------------------------------- the lab itself

@dataclass
class Host:
    name: str
    ipv4: str
    ipv6: str
    mac: str
    worker: NetnsWorker


class Lab:
    """Namespaces on one bridge, processes, and their cleanup (always, in reverse)."""

    def __init__(self, workdir: Path, prefix: str = "e2e"):
        self.workdir = workdir
        self.logdir = workdir / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.hosts: dict[str, Host] = {}
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._bridges: list[str] = []

    # -- commands
    def sh(self, *argv: str, ns: str | None = None, check: bool = True, timeout: float | None = None,
           env: dict | None = None, log: str | None = None,
           pace_label: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` (inside namespace ``ns`` if given); append its output to ``log``.

        ``timeout`` defaults to 60 s on an idle machine (scaled by the pace factor). A
        project command passes ``pace_label``: its wall time calibrates the pace.
        """
        full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
        started = time.monotonic()
        proc = subprocess.run(full, capture_output=True, text=True,
                              timeout=timeout if timeout is not None else pace.scaled(60.0),
                              env={**os.environ, **(env or {})})
        seconds = time.monotonic() - started
        if pace_label and proc.returncode == 0:
            pace.observe(pace_label, seconds)
        if log:
            with open(self.logdir / log, "a") as f:
                f.write(f"$ {' '.join(full)}\n{proc.stdout}{proc.stderr}"
                        f"[exit {proc.returncode}, {seconds:.2f} s]\n")
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(full)} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def start(self, label: str, argv: list, ns: str | None = None, env: dict | None = None) -> subprocess.Popen:
        """Start a long-running process; its output goes to ``logs/<label>.log``."""
        full = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in argv]
        log = open(self.logdir / f"{label}.log", "a")
        log.write(f"$ {' '.join(full)}\n")
        log.flush()
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        log.close()
        self._procs.append((label, proc))
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        """Signal a process group and wait; SIGKILL if it does not go."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        return proc.returncode

    # -- topology
    def create_bridge(self, name: str = BRIDGE) -> None:
        """A bridge: one L2 segment (``lvsbr0`` is the directors' LAN)."""
        self.sh("ip", "link", "add", name, "type", "bridge")
        self._bridges.append(name)
        self.sh("ip", "link", "set", name, "up")

    def add_host(self, name: str, ipv4: str, ipv6: str, bridge: str = BRIDGE) -> Host:
        """A namespace with ``eth0`` (IPv4 /24 and IPv6 /64, no DAD) on ``bridge``."""
        ns = f"{self.prefix}-{name}"
        self.sh("ip", "netns", "add", ns)
        self.hosts[name] = None  # cleaned up even if the rest fails
        mac = self.add_leg(name, bridge, "eth0", ipv4, ipv6, ns=ns)
        host = Host(name, ipv4, ipv6, mac, NetnsWorker(ns))
        self.hosts[name] = host
        return host

    def add_leg(self, name: str, bridge: str, ifname: str, ipv4: str, ipv6: str,
                ns: str | None = None) -> str:
        """Plug host ``name`` into ``bridge`` with a veth named ``ifname`` in its
        namespace (IPv4 /24 and IPv6 /64, no DAD); its MAC address."""
        ns = ns or self.ns(name)
        peer = (f"v-{name}" if ifname == "eth0" else f"v-{name}.{ifname}")[:15]
        self.sh("ip", "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", ns)
        self.sh("ip", "link", "set", peer, "master", bridge, "up")
        script = (
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"
            f" net.ipv6.conf.{ifname}.accept_dad=0"
            f" && ip link set lo up && ip link set {ifname} up"
            f" && ip addr add {ipv4}/24 dev {ifname} && ip addr add {ipv6}/64 dev {ifname} nodad"
            f" && cat /sys/class/net/{ifname}/address")
        return self.sh("sh", "-c", script, ns=ns).stdout.strip()

    def add_router(self, name: str, legs: dict) -> Host:
        """A router: host ``name`` with one leg per bridge (``{bridge: (ipv4, ipv6)}``,
        the first becomes ``eth0``, the next ``eth1``...) and IPv4 forwarding on."""
        (first, (ipv4, ipv6)), *others = legs.items()
        host = self.add_host(name, ipv4, ipv6, bridge=first)
        for i, (bridge, (a4, a6)) in enumerate(others, 1):
            self.add_leg(name, bridge, f"eth{i}", a4, a6)
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.ns(name))
        return host

    def link(self, name: str, ifname: str) -> dict:
        """``ip -j -s -d addr show dev IFNAME`` in host ``name``'s namespace: flags,
        operstate, ``addr_info``, ``stats64`` (rx/tx packets)..."""
        out = self.sh("ip", "-j", "-s", "-d", "addr", "show", "dev", ifname, ns=self.ns(name)).stdout
        return json.loads(out)[0]

    def ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def cleanup(self) -> list[str]:
        """Stop every process, delete every namespace and the bridge. Returns problems."""
        problems = []
        for label, proc in reversed(self._procs):
            try:
                self.stop(proc, signal.SIGTERM, timeout=5)
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                problems.append(f"stop {label}: {exc}")
        for name, host in list(self.hosts.items()):
            if host:
                host.worker.close()
            proc = self.sh("ip", "netns", "del", self.ns(name), check=False)
            if proc.returncode:
                problems.append(f"netns del {name}: {proc.stderr.strip()}")
        self.hosts.clear()
        while self._bridges:
            self.sh("ip", "link", "del", self._bridges.pop(), check=False)
        return problems
