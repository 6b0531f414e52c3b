"""``python -m sandlot`` is the ``sandlot`` command line (see ``sandlot.cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
