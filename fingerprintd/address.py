"""Client addresses as the MTAs and filters write them -> packed bytes (pure, imports nothing of ours).

Every path that takes an address as text (the API, the drop-ins, the
reputation's feedback) reads it here, so they all agree on what one is.
"""

from __future__ import annotations

import ipaddress
import socket


class AddressError(ValueError):
    """An address that cannot be parsed."""


def normalize_ip(text: str) -> bytes:
    """Packed address from text: IPv4, IPv6, IPv4-mapped IPv6 and Postfix's `IPv6:` prefix.

    An IPv4-mapped address (``::ffff:192.0.2.1``) is its IPv4 address, since
    that is what the SYN carried.
    """
    try:
        return socket.inet_pton(socket.AF_INET, text)  # the common case, without ipaddress's cost
    except OSError:
        pass
    t = text.strip()
    if t[:5].lower() == "ipv6:":
        t = t[5:]
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        raise AddressError(f"not an IP address: {text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed
