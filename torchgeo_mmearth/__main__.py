"""``python -m torchgeo_mmearth``: the ``torchgeo-mmearth`` command."""

import sys

from .main import main

if __name__ == '__main__':
    # Usage lines and the resume commands printed after Ctrl-C name the command
    # as users type it.
    sys.argv[0] = 'torchgeo-mmearth'
    sys.exit(main())
