"""``python -m procmem.cli``: the ``procmem`` command."""

from procmem.cli import main

main()
