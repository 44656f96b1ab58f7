"""The real-server wing: binds the VIPs from the payload for LVS direct routing.

``netlink`` (links and addresses, pyroute2), ``sysctl`` (``/proc/sys`` in a
namespace), ``state`` (what was changed, for exact undo), ``binder`` (apply/remove
with validation first and rollback), ``status`` (inspection and verdict), ``plugin``
(the hook implementations), ``cli`` (``cartridge-agent-lvs``).
"""
