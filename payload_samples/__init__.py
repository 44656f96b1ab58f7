"""Sample instance payloads (launch-params), shipped inside the package as
``cartridge_agent_lvs.payload_samples`` for ``cartridge-agent-lvs demo``."""
