"""`python -m smartbin_daemon.ctl` runs smartbinctl."""

import sys

from .cli import main

sys.exit(main())
