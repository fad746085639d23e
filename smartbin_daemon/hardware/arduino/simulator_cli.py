"""`python -m smartbin_daemon.hardware.arduino.simulator`: a simulated Arduino on a pty until Ctrl-C, with periodic faults."""

from __future__ import annotations

import argparse
import logging
import random
import signal
import threading
import time
from pathlib import Path

from .protocol import PROTOCOL_VERSION
from .simulator import SimulatedArduino

logger = logging.getLogger(__name__)


def _parse_faults(specs: list[str]) -> dict[str, float]:
    """`name=seconds` options of --fault into a dict; raises ValueError on anything else."""
    known = ("unplug-every", "garbage-every", "reboot-every", "ack-delay")
    faults: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--fault {spec!r}: expected one of {', '.join(k + '=N' for k in known)}")
        number = float(value)
        if number <= 0 and name != "ack-delay":
            raise ValueError(f"--fault {spec!r}: the period must be positive")
        faults[name] = number
    return faults


def main(argv: list[str] | None = None) -> int:
    """Run a simulator until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m smartbin_daemon.hardware.arduino.simulator",
                                     description="Simulated SmartBin Arduino (protocol v1) on a pseudo-terminal.")
    parser.add_argument("--link", type=Path, required=True, help="symlink to create, e.g. /tmp/sim-arduino")
    parser.add_argument("--compartments", type=int, default=3)
    parser.add_argument("--telemetry-interval", type=float, default=0.5)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--boot-delay", type=float, default=0.2)
    parser.add_argument("--proto", type=int, default=PROTOCOL_VERSION)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=N",
                        help="unplug-every=S, garbage-every=S, reboot-every=S, ack-delay=S (repeatable)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        faults = _parse_faults(args.fault)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sim = SimulatedArduino(args.link, compartments=args.compartments, telemetry_interval_s=args.telemetry_interval,
                           heartbeat_interval_s=args.heartbeat_interval, boot_delay_s=args.boot_delay,
                           proto=args.proto, seed=args.seed)
    rng = random.Random(args.seed)
    sim.start()
    if "ack-delay" in faults:
        sim.set_ack_delay(faults["ack-delay"])
    start = time.monotonic()
    due = {name: start + period for name, period in faults.items() if name.endswith("-every")}
    replug_at: float | None = None
    # SIGINT/SIGTERM only set an event: a KeyboardInterrupt raised at an arbitrary point (e.g. just after a
    # lock was taken) could leave the serving thread blocked and the process hanging at exit.
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"simulated arduino: {sim.link} -> {sim.path} (Ctrl-C to stop)", flush=True)
    try:
        while not stopping.wait(0.05):
            now = time.monotonic()
            if replug_at is not None and now >= replug_at:
                sim.replug()
                replug_at = None
                logger.info("fault: replugged on %s", sim.path)
            for name, when in due.items():
                if now < when:
                    continue
                due[name] = now + faults[name]
                if name == "unplug-every" and replug_at is None:
                    sim.unplug()
                    replug_at = now + min(1.0, faults[name] / 2)
                    logger.info("fault: unplugged")
                elif name == "garbage-every":
                    sim.inject_garbage(rng.randbytes(rng.randint(1, 200)))
                    logger.info("fault: injected garbage")
                elif name == "reboot-every":
                    sim.reboot()
                    logger.info("fault: rebooted")
    finally:
        sim.stop()
    return 0
