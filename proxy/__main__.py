"""`python -m proxy` is the `rerank-proxy` command."""

import sys

from .cli import main

sys.exit(main())
