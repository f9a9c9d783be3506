"""The WebSocket hub plus the ``sync`` control message (``kaiser sync``: fetch now
in pull mode, docs/gitops.md). Moves data, decides nothing.

``sync`` is a control message like ``emergency_stop``: it needs a key, it goes to
the server's ``on_control``, and a refusal is an ``error`` event. Everything else
is engine.adapters.ws.Hub's. (When ``sync`` joins ``ws.CONTROL_TYPES`` this
module can go.)
"""

from __future__ import annotations

import json

from engine.adapters import ws

#: control messages beyond ws.CONTROL_TYPES
EXTRA_CONTROL = frozenset({"sync"})


class SyncHub(ws.Hub):
    """engine.adapters.ws.Hub that also carries :data:`EXTRA_CONTROL` messages."""

    async def _on_message(self, client: ws.Client, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            msg = None  # the hub answers it
        if isinstance(msg, dict) and msg.get("type") in EXTRA_CONTROL and msg["type"] not in ws.CONTROL_TYPES:
            await self._control(client, msg)
            return
        await super()._on_message(client, raw)
