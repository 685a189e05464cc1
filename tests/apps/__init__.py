"""Real framework apps (Flask, Django) that the functional tests serve with hardserve."""
