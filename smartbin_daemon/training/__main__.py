"""``python -m smartbin_daemon.training``."""

from smartbin_daemon.training.cli import main

raise SystemExit(main())
