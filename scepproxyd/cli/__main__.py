"""``python -m scepproxyd.cli`` is ``scepproxyctl``."""

import sys

from scepproxyd.cli import main

if __name__ == "__main__":
    sys.exit(main())
