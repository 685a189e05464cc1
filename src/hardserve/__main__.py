"""`python -m hardserve`: the same command as the `hardserve` script."""

from hardserve.cli import main

main()
