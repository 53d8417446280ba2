"""``python -m inertia``: the same as the ``inertia`` console script."""

import sys

from inertia.cli import main

if __name__ == "__main__":
    sys.exit(main())
