"""``python -m packer_cli``: the same command line as ``packer``."""

import sys

from packer_cli.main import main

sys.exit(main())
