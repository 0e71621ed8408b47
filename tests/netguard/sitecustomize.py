"""Python loads this at start-up in the servers the tests start (it is on their PYTHONPATH).

It records every attempt to look up or connect to a host outside this machine's loopback in the file named by
``PADT_NET_LOG``, so a test can assert that a server never reached the network. Nothing is blocked.
"""

import ipaddress
import os
import sys

_LOG = os.environ.get("PADT_NET_LOG")


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]")
    if host in ("", "localhost", "ip6-localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _hook(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) and address else None
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if not _is_local(host):
        with open(_LOG, "a") as log:
            log.write(f"{event} {host!r}\n")


if _LOG:
    sys.addaudithook(_hook)
