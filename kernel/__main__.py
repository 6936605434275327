"""``python -m kerna``: the same command line as the ``kerna`` console script."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
