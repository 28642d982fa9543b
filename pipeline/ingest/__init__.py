"""Status ingest: Meta's signed webhooks in, durable and deduplicated delivery events out.

    await serve(settings)        # `pipeline ingest`; runs until SIGTERM/SIGINT

    POST /webhooks/whatsapp ─▶ [webhooks.raw] ─▶ normaliser ─▶ [status.updates] ─▶ deduper ─▶ [status.events]
                                                     │                                  └─▶ [status.state]
                                                     └─▶ [inbound.messages], [dead-letters]

Modules: `receiver` (HTTP, signature, durable write), `webhook` (Meta's body → records),
`normaliser` and `deduper` (the consumers), `state` (the forward-only rule), `restore` (state after
a restart or rebalance), `consumer` (the at-least-once FastStream batch handler), `service` (wiring),
`asyncapi` (the document of the topics, from the broker `service` declares).
docs/ingest.md explains the design.
"""

from pipeline.ingest.service import Ingest, serve

__all__ = ["Ingest", "serve"]
