"""``python -m lrscan``: the same as the ``lrscan`` command."""

from lrscan.cli import main

main()
