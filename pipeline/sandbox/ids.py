"""Identifiers shaped like Meta's.

    outbound_wamid("16505551234")  # 'wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ...'

A wamid is base64 of a small protobuf-like record holding the user's wa_id and a random hex id
(decode the fixtures' ids to see it); outbound ids carry 0x11, inbound ones 0x12. Clients must treat
them as opaque, but a look-alike catches code that assumes a shorter or simpler id.
"""

from __future__ import annotations

import base64
import itertools
import os

_counter = itertools.count(1)
_OUTBOUND, _INBOUND = 0x11, 0x12


def _wamid(wa_id: str, direction: int) -> str:
    # A process-wide counter keeps ids unique; the random tail keeps two sandboxes' ids apart.
    hex_id = f"{next(_counter):08X}{os.urandom(6).hex().upper()}"
    raw = (
        b"\x1c\x18" + bytes([len(wa_id)]) + wa_id.encode()
        + b"\x15\x02\x00" + bytes([direction]) + b"\x18" + bytes([len(hex_id)]) + hex_id.encode() + b"\x00"
    )
    return "wamid." + base64.b64encode(raw).decode()


def outbound_wamid(wa_id: str) -> str:
    return _wamid(wa_id, _OUTBOUND)


def inbound_wamid(wa_id: str) -> str:
    return _wamid(wa_id, _INBOUND)


def media_id() -> str:
    # Meta's media ids are 15-16 digit numbers.
    return str(10**15 + next(_counter) * 7919 + int.from_bytes(os.urandom(3), "big") % 7919)


def conversation_id() -> str:
    return os.urandom(16).hex()
