"""``python -m taid_vlm ...`` runs the same command line as the ``taid-vlm`` entry point."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
