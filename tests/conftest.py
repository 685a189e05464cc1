from __future__ import annotations

import os
import sys
from pathlib import Path

# The tests import their helpers as `tests.helpers`, from the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# hardserve started as root refuses to serve unless told to (--user or --allow-root). The test
# machines run as root (containers), so every server the tests start may run as root; the
# refusal itself is tested with this variable removed (tests/functional/test_master.py).
ALLOW_ROOT = {"HARDSERVE_ALLOW_ROOT": "1"} if os.geteuid() == 0 else {}
os.environ.update(ALLOW_ROOT)
