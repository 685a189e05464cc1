from __future__ import annotations

import sys
from pathlib import Path

# The tests import their helpers as `tests.helpers`, from the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
