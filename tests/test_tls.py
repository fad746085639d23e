"""TLS with client certificates against a real mosquitto: certificates made at test time with the openssl CLI."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import Broker, DaemonProcess, Probe, free_port, wait_until, write_config

ROOT = "smartbin/testbin"
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is needed to make test certificates")


@dataclass(frozen=True)
class Pki:
    """A throw-away CA with a server certificate (127.0.0.1/localhost) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> Pki:
    """CA, server and client keys and certificates (EC P-256, valid one day)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=smartbin-test-ca",
             cwd=folder)
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "smartbin-testbin", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(ext)
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=folder)
    return Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt", folder / "client.key")


@dataclass
class TlsProbe(Probe):
    """The conftest probe, connecting over TLS (optionally with a client certificate)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tls-probe-{uuid.uuid4().hex[:8]}",
                                  protocol=self.protocol)
        self.client.on_message = self._on_message
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self._connected.set()
        self.client.tls_set(ca_certs=str(self.ca), certfile=str(self.cert) if self.cert else None,
                            keyfile=str(self.key) if self.key else None, cert_reqs=ssl.CERT_REQUIRED)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._connected.wait(5):
            raise RuntimeError("TLS probe could not connect")


@dataclass
class TlsBroker:
    """A mosquitto with a plain listener (unused here) and a TLS listener that requires client certificates."""

    broker: Broker
    tls_port: int
    pki: Pki


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    extra = "\n".join([f"listener {port} 127.0.0.1", f"cafile {pki.ca}", f"certfile {pki.server_cert}",
                       f"keyfile {pki.server_key}", "require_certificate true", ""])
    broker = Broker(tmp_path, extra_conf=extra)
    broker.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield TlsBroker(broker, port, pki)
    broker.stop()


@pytest.fixture
def tls_probe(tls_broker: TlsBroker) -> Iterator[TlsProbe]:
    pki = tls_broker.pki
    probe = TlsProbe(tls_broker.tls_port, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    yield probe
    probe.close()


def test_daemon_connects_over_tls_with_a_client_certificate(
        tmp_path: Path, tls_broker: TlsBroker, tls_probe: TlsProbe, daemon_factory: Callable[..., DaemonProcess]) -> None:
    pki = tls_broker.pki
    tls_probe.subscribe("smartbin/#")
    cfg = write_config(tmp_path / "c.yaml", tls_broker.tls_port, tmp_path / "s",
                       mqtt={"tls": {"enabled": True, "ca": str(pki.ca), "cert": str(pki.client_cert),
                                     "key": str(pki.client_key)}})
    daemon = daemon_factory(cfg)
    tls_probe.wait_for(f"{ROOT}/availability", lambda m: m.payload == b"online", timeout=20)
    late = TlsProbe(tls_broker.tls_port, ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    try:
        late.subscribe(f"{ROOT}/availability")
        retained = late.wait_for(f"{ROOT}/availability")
        assert retained.payload == b"online" and retained.retain
    finally:
        late.close()
    state = tls_probe.wait_for(f"{ROOT}/mqtt", lambda m: m.json()["status"] == "connected").json()
    assert state["tls"] is True, state
    # requests work over the TLS connection too
    assert tls_probe.request(ROOT, "ping")["data"]["pong"] is True
    assert daemon.proc.poll() is None


def test_daemon_without_a_client_certificate_is_refused(
        tmp_path: Path, tls_broker: TlsBroker, tls_probe: TlsProbe, daemon_factory: Callable[..., DaemonProcess]) -> None:
    tls_probe.subscribe("smartbin/#")
    cfg = write_config(tmp_path / "c.yaml", tls_broker.tls_port, tmp_path / "s",
                       mqtt={"tls": {"enabled": True, "ca": str(tls_broker.pki.ca)}})
    daemon = daemon_factory(cfg)
    broker_log = tls_broker.broker.log_path
    wait_until(lambda: "did not return a certificate" in broker_log.read_text(errors="replace"), timeout=20,
               what="mosquitto refusing the daemon for its missing client certificate")
    wait_until(lambda: "mqtt_connect_failed" in daemon.log() or "retrying in" in daemon.log(), timeout=20,
               what="the refused connection in the daemon log")
    time.sleep(1.0)
    assert not tls_probe.on(f"{ROOT}/availability"), "the daemon must not get in without a client certificate"
    assert daemon.proc.poll() is None, "a refused connection is retried, not fatal"
    daemon.stop()  # the state file is written on the way down
    state = json.loads((tmp_path / "s" / "state.json").read_text())["components"]["mqtt"]
    assert state["status"] != "connected" and state["connects"] == 0, state
    assert state["last_error"], state


def test_the_tls_listener_refuses_a_probe_without_a_client_certificate(tls_broker: TlsBroker) -> None:
    with pytest.raises((RuntimeError, ssl.SSLError, OSError)):
        probe = TlsProbe(tls_broker.tls_port, ca=tls_broker.pki.ca)
        probe.close()
