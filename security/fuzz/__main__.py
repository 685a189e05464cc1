"""`python -m security.fuzz`: see run.py and README.md."""

import sys

from security.fuzz.run import main

sys.exit(main())
