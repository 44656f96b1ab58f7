"""Tiny LvsConfig builders for the pure drain/guard tests."""

from __future__ import annotations

from cartridge_agent_lvs.director.model import LvsConfig, RealServer, VirtualServer

VIP = "192.0.2.10"


def lvs(*members: str, port: int = 80, weights: dict = None) -> LvsConfig:
    """An LvsConfig with one virtual server VIP:port and real servers at *members*."""
    weights = weights or {}
    rss = tuple(sorted(RealServer(ip, port, weights.get(ip, 1)) for ip in members))
    vss = (VirtualServer(VIP, port, "TCP", "svc", rss),) if rss else ()
    return LvsConfig(vss, (VIP,))


def weights(config: LvsConfig) -> dict:
    """{(vip, vport, ip): weight} of every real server of *config*."""
    return {(vs.vip, vs.port, rs.ip): rs.weight
            for vs in config.virtual_servers for rs in vs.real_servers}


def ips(n: int, net: str = "10.0.0.") -> list:
    return [f"{net}{i}" for i in range(1, n + 1)]
