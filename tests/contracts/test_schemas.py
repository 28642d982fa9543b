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
    assert set(schema["required"]) == {"message"}
    assert schema["anyOf"] == [{"required": ["to"]}, {"required": ["recipient_user_id"]}]  # a phone or a BSUID
    assert schema["properties"]["message"]["discriminator"]["propertyName"] == "type"
    assert "TextContent" in schema["$defs"]
    assert schema["$defs"]["TextContent"]["properties"]["body"]["maxLength"] == 4096


def test_the_schema_takes_a_phone_or_a_bsuid_recipient_and_refuses_none() -> None:
    # jsonschema_rs: the validator schemathesis (a test dependency) already brings.
    import jsonschema_rs

    from pipeline.contracts import SendRequest

    validator = jsonschema_rs.validator_for(SendRequest.model_json_schema())
    text = {"type": "text", "text": {"body": "hi"}}
    assert validator.is_valid({"to": "+16505551234", "message": text})
    assert validator.is_valid({"recipient_user_id": "US.13491208655302741918", "message": text})
    assert validator.is_valid({"recipient_user_id": "US.ENT.11815799212886844830", "message": text})
    assert not validator.is_valid({"message": text})
    assert not validator.is_valid({"recipient_user_id": "us.1349", "message": text})
