"""The committed JSON Schemas match the contracts, so producers in other languages see the truth."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.contracts.schemas import CONTRACTS, export_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_committed_schemas_are_current() -> None:
    assert export_schemas(DOCS, check=True) == [], "run `pipeline schemas export` and commit docs/schemas/"


def test_schemas_describe_the_message_union(tmp_path: Path) -> None:
    assert sorted(export_schemas(tmp_path)) == sorted(f"{n}.schema.json" for n in CONTRACTS)
    schema = json.loads((tmp_path / "send-request.schema.json").read_text())
    assert set(schema["required"]) == {"to", "message"}
    assert schema["properties"]["message"]["discriminator"]["propertyName"] == "type"
    assert "TextContent" in schema["$defs"]
    assert schema["$defs"]["TextContent"]["properties"]["body"]["maxLength"] == 4096
