"""``python -m imgclass <command>``: see :mod:`imgclass.cli`."""

import sys

from imgclass.cli import main

if __name__ == "__main__":
    sys.exit(main())
