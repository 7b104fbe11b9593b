"""``python -m adaptrain``: the same as the ``adaptrain`` command."""

import sys

from adaptrain.cli import main

if __name__ == "__main__":
    sys.exit(main())
