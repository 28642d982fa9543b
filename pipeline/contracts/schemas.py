"""JSON Schemas of the contracts, for producers and consumers in other languages.

    pipeline schemas export          # writes docs/schemas/*.schema.json
    pipeline schemas export --check  # CI: fails when a contract changed but the files did not
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from pipeline.contracts.account import AccountEvent
from pipeline.contracts.messages import DeadLetter, InboundMessage, SendRequest, SendResult, StatusEvent

CONTRACTS: dict[str, type[BaseModel]] = {
    "send-request": SendRequest,
    "send-result": SendResult,
    "status-event": StatusEvent,
    "inbound-message": InboundMessage,
    "dead-letter": DeadLetter,
    "account-event": AccountEvent,
}


def render(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_schemas(directory: Path, check: bool = False) -> list[str]:
    """Write (or with `check`, compare) every schema; return the file names that were stale."""
    directory.mkdir(parents=True, exist_ok=True)
    stale = []
    for name, model in CONTRACTS.items():
        path = directory / f"{name}.schema.json"
        text = render(model)
        if not path.exists() or path.read_text() != text:
            stale.append(path.name)
            if not check:
                path.write_text(text)
    return stale
