"""`python -m tests.clients.prepare`: install the real clients ahead of their tests (best effort, logged).

`install.sh --test` starts it in the background before pytest; the client tests run last and wait on the same locks,
so their installs overlap the rest of the suite. A failure here is only reported: the test then tries again and
fails (under CI) or skips with the reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from . import homeassistant as hass
from .installs import install_node_red


def main() -> int:
    """Install each client, one line per result."""
    steps: list[tuple[str, Callable[[], object]]] = [
        ("Node-RED", install_node_red),
        ("Home Assistant", lambda: hass.install(hass.pick_pin())),
    ]
    for name, step in steps:
        started = time.monotonic()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - reported; the test retries and says why
            print(f"prepare: {name} not installed ({type(exc).__name__}: {exc})", flush=True)
        else:
            print(f"prepare: {name} ready in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
