"""The test suite's network guard, installed in every Python process the tests start (this folder is put first on
PYTHONPATH by tests/conftest.py, so Python imports this file at start-up) and in the test process itself.

Sockets may reach loopback only: a connect to, or a name lookup of, anything else is refused at once (an
OSError, as a machine without network gives) and recorded, in memory and in the file $SANASR_TEST_NETLOG, so that
a test can see that something tried, even where the library that tried catches the error and carries on
silently (huggingface_hub falls back to its cache, for one). Standard library only: it runs before anything.
"""

from __future__ import annotations

import ipaddress
import os
import socket

ATTEMPTS: list[str] = []
_LOG = os.environ.get("SANASR_TEST_NETLOG")


class NetworkRefused(ConnectionRefusedError):
    """A connection beyond loopback, refused by the test suite's guard."""


class LookupRefused(socket.gaierror):
    """A name lookup of anything but loopback, refused by the test suite's guard (as a resolver without network)."""


def is_local_host(host) -> bool:
    """Loopback names and addresses, and the unspecified address a server binds to; nothing else."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    name = str(host).strip("[]").split("%")[0].rstrip(".").lower()
    if name in ("", "localhost", "0.0.0.0", "::") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what: str, host, port) -> OSError:
    entry = f"{what} {host}:{port} (pid {os.getpid()})"
    ATTEMPTS.append(entry)
    if _LOG:
        try:
            with open(_LOG, "a", encoding="utf-8") as f:
                f.write(entry + "\n")
        except OSError:
            pass
    message = f"network access refused by the test suite's guard: {what} {host}:{port}"
    return LookupRefused(socket.EAI_NONAME, message) if what == "lookup" else NetworkRefused(111, message)


def install() -> None:
    if getattr(socket, "_sanasr_guard", False):
        return
    socket._sanasr_guard = True
    inet = (socket.AF_INET, socket.AF_INET6)
    connect, connect_ex, sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    getaddrinfo = socket.getaddrinfo

    def guarded_connect(self, address):
        if self.family in inet and not is_local_host(address[0]):
            raise _refuse("connect", address[0], address[1])
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if self.family in inet and not is_local_host(address[0]):
            raise _refuse("connect", address[0], address[1])
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        address = args[-1]
        if self.family in inet and isinstance(address, tuple) and not is_local_host(address[0]):
            raise _refuse("sendto", address[0], address[1])
        return sendto(self, data, *args)

    def guarded_getaddrinfo(host, port, *args, **kwargs):
        if not is_local_host(host):
            raise _refuse("lookup", host, port)
        return getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.socket.connect_ex = guarded_connect_ex
    socket.socket.sendto = guarded_sendto
    socket.getaddrinfo = guarded_getaddrinfo


if os.environ.get("SANASR_TEST_NETGUARD") == "1":
    install()
