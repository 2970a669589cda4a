"""`python -m authsvc`: the same as the `authsvc` command (workers use it)."""

import sys

from authsvc.cli import main

sys.exit(main())
