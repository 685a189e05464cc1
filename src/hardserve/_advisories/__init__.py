"""The security advisories shipped with hardserve, as OSV records (*.json).

Copies of security/advisories/HSEC-*.json, read by hardserve.advisories.bundled_advisories();
tests/unit/test_advisories.py keeps the copies equal to the originals. No advisory has been
published for hardserve yet.
"""
