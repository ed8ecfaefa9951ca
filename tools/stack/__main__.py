"""`python -m tools.stack`: runs N Tritons, inference services and gateways, supervised, until Ctrl-C/SIGTERM."""

import sys

from tools.stack.cli import main

if __name__ == "__main__":
    sys.exit(main())
