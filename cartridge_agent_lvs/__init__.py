"""LVS direct routing for cartridge-agent PaaS instances.

Two wings share this package:

* :mod:`cartridge_agent_lvs.realserver` -- runs inside the cartridge agent on every
  real server: binds the virtual IPs from the instance payload on a dummy (or loopback)
  interface and sets the ARP sysctls that LVS direct routing needs.
* :mod:`cartridge_agent_lvs.director` -- the standalone LVS extension on the load
  balancer: follows the cluster topology and keeps keepalived (VRRP + IPVS) in step.

Hook implementations use the :data:`hookimpl` marker defined here; the hook contract
lives in :mod:`cartridge_agent_lvs.hookspecs`.
"""

import pluggy

__version__ = "0.1.0"

#: Project name used for the pluggy markers and the plugin manager.
PROJECT_NAME = "cartridge_agent_lvs"

#: Marker for hook implementations (``@hookimpl def instance_started(...)``).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
