"""Benchmarks of hardserve against gunicorn and waitress; `make bench` runs them."""
