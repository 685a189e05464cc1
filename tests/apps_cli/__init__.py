"""Small WSGI apps that the command-line tests start in a `python -m hardserve` subprocess
(as tests.apps_cli.MODULE:APP, from the project root). Not test modules themselves."""
