"""``python -m packer``: the same command line as ``packer``."""

import sys

from packer.cli import main

sys.exit(main())
