"""Optional encryption of message content at rest: AES-GCM from `cryptography`.

    sealer = Sealer(key_bytes)            # or Sealer(None): a no-op
    stored = sealer.seal("Your order shipped")    # "enc1:<base64 nonce+ciphertext>"
    sealer.open(stored)                            # "Your order shipped"

Texts and metadata are sealed before they reach the database and opened after they leave it, so the
database, its backups and its WAL hold only ciphertext. A fresh 96-bit nonce per value. With a key set,
full-text search has nothing to index: the search route refuses `q` (docs/store.md).
"""

from __future__ import annotations

import base64
import dataclasses
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.store.rows import Changes, ConversationItem, InboundRow, MessageView, OutboundRow

_PREFIX = "enc1:"


class Sealer:
    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key else None

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def seal(self, value: str | None) -> str | None:
        if value is None or self._aead is None:
            return value
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), None)
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, value: str | None) -> str | None:
        if value is None or not value.startswith(_PREFIX):
            return value  # stored before encryption was switched on
        if self._aead is None:
            return None  # sealed, and this process has no key: show nothing rather than ciphertext
        raw = base64.b64decode(value[len(_PREFIX):])
        return self._aead.decrypt(raw[:12], raw[12:], None).decode()

    def seal_changes(self, changes: Changes) -> Changes:
        if self._aead is None:
            return changes
        outbound: dict[str, OutboundRow] = {
            key: dataclasses.replace(row, text=self.seal(row.text), metadata=self.seal(row.metadata))
            for key, row in changes.outbound.items()
        }
        inbound: dict[str, InboundRow] = {
            key: dataclasses.replace(row, text=self.seal(row.text)) for key, row in changes.inbound.items()
        }
        return Changes(outbound=outbound, statuses=changes.statuses, inbound=inbound)

    def open_view(self, view: MessageView) -> MessageView:
        return dataclasses.replace(view, text=self.open(view.text), metadata=self.open(view.metadata))

    def open_item(self, item: ConversationItem) -> ConversationItem:
        return dataclasses.replace(item, text=self.open(item.text))
