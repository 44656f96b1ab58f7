"""The Stratos agent plugin (shim + Yapsy descriptor), shipped inside the package as
``cartridge_agent_lvs.pca_plugin`` for ``cartridge-agent-lvs install-pca``."""
