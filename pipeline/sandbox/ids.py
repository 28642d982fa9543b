"""Identifiers shaped like Meta's.

    outbound_wamid("16505551234")  # 'wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ...'
    bsuid("102290129340398", "16505551234")  # 'US.08314159265358979323': the user's id for this business

A wamid is base64 of a small protobuf-like record holding the user's wa_id and a random hex id
(decode the fixtures' ids to see it); outbound ids carry 0x11, inbound ones 0x12. Clients must treat
them as opaque, but a look-alike catches code that assumes a shorter or simpler id.
"""

from __future__ import annotations

import base64
import hashlib
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


# Country calling code -> ISO 3166 alpha-2, for the BSUID prefix; a short table is enough for tests
# (Meta's BSUIDs start with the user's country: `US.13491208655302741918`).
_COUNTRIES = (("1", "US"), ("44", "GB"), ("55", "BR"), ("351", "PT"), ("91", "IN"), ("972", "IL"), ("49", "DE"))


def bsuid(waba_id: str, wa_id: str) -> str:
    """The business-scoped user id of `wa_id` for this business: stable, and different per business."""
    country = next((iso for code, iso in sorted(_COUNTRIES, key=lambda c: -len(c[0])) if wa_id.startswith(code)), "US")
    digest = int.from_bytes(hashlib.sha256(f"{waba_id}:{wa_id}".encode()).digest()[:9], "big")
    return f"{country}.{digest % 10**20:020d}"


def media_id() -> str:
    # Meta's media ids are 15-16 digit numbers.
    return str(10**15 + next(_counter) * 7919 + int.from_bytes(os.urandom(3), "big") % 7919)
