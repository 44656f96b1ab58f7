"""The README's first command (``scripts/demo``): the whole system in a throwaway kernel VM.

Not part of the installed package: it boots a VM with QEMU, which a director or a real
server never needs. It lives in the repository beside the end-to-end suite and shares
that suite's lab -- the kernel fetch (``tests/e2e/kernel.py``), the VM boot
(``tests/e2e/vm.py``) and the guest plumbing (``tests/e2e/guest/lab.py``) -- by import.

* ``demo.host``   runs on this machine: boots the VM (or falls back), prints the story;
* ``demo.guest``  runs inside the VM: builds the lab, drives the project's commands and
  reports what it measured, one JSON event per line;
* ``demo.story``  turns those events into the text the user reads (pure functions).
"""
