"""The paho client as the daemon and smartbinctl configure it: protocol, credentials, TLS, and no Nagle."""

from __future__ import annotations

import socket
import ssl

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..config import MqttConfig


def build_client(m: MqttConfig, client_id: str, *, reconnect_on_failure: bool) -> paho.Client:
    """A paho 2.x client with the config's protocol, credentials and TLS (shared by the daemon and smartbinctl)."""
    protocol = paho.MQTTv5 if m.protocol == "5" else paho.MQTTv311
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         reconnect_on_failure=reconnect_on_failure)
    if m.username is not None:
        client.username_pw_set(m.username, m.password.get_secret_value() if m.password is not None else None)
    if m.tls.enabled:
        client.tls_set(
            ca_certs=str(m.tls.ca) if m.tls.ca else None,
            certfile=str(m.tls.cert) if m.tls.cert else None,
            keyfile=str(m.tls.key) if m.tls.key else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if m.tls.insecure:
            client.tls_insecure_set(True)
    return client


def set_nodelay(client: paho.Client) -> None:
    """Turn Nagle off on the broker socket.

    Why: a response published right after the request's PUBACK otherwise waits for the broker's delayed
    ACK (about 40 ms on Linux); the messages are small, so batching them buys nothing.
    """
    setsockopt = getattr(client.socket(), "setsockopt", None)  # paho types it as a bare SocketLike
    if setsockopt is None:
        return
    try:
        setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (a unix socket broker)
        pass
