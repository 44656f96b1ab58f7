"""``python -m demo``: see ``demo.host``."""

import sys

from demo.host import main

sys.exit(main())
