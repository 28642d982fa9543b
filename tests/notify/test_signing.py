"""Signatures: the stage's signer, its verifier, and the Python snippet receivers copy from docs/callbacks.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.notify.signing import SignatureError, signature_header, verify

DOC = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"
SECRET = "whsec_test_0123456789abcdef"
BODY = b'{"event_id":"evt_1","type":"status.read"}'


def doc_snippet(language: str, first_line: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    matching = [b for b in blocks if b.startswith(first_line)]
    assert matching, f"docs/callbacks.md has no {language} block starting with {first_line!r}"
    return matching[0]


@pytest.fixture(scope="module")
def verify_callback() -> Callable[..., bool]:
    namespace: dict[str, object] = {}
    exec(compile(doc_snippet("python", "# verify_callback.py"), "docs/callbacks.md", "exec"), namespace)
    function = namespace["verify_callback"]
    assert callable(function)
    return function  # type: ignore[return-value]


def test_the_documented_snippet_accepts_what_the_stage_signs(verify_callback: Callable[..., bool]) -> None:
    assert verify_callback(SECRET, BODY, signature_header(SECRET, BODY))


def test_the_documented_snippet_rejects_a_tampered_body(verify_callback: Callable[..., bool]) -> None:
    header = signature_header(SECRET, BODY)
    assert not verify_callback(SECRET, BODY.replace(b"read", b"sent"), header)
    assert not verify_callback("another-secret-0123456789", BODY, header)


def test_the_documented_snippet_rejects_an_old_timestamp(verify_callback: Callable[..., bool]) -> None:
    old = signature_header(SECRET, BODY, timestamp=int(time.time()) - 301)
    assert not verify_callback(SECRET, BODY, old)
    assert verify_callback(SECRET, BODY, old, tolerance_seconds=600)
    assert not verify_callback(SECRET, BODY, "v1=deadbeef")  # no timestamp at all


def test_the_header_format() -> None:
    header = signature_header(SECRET, BODY, timestamp=1764763200)
    assert re.fullmatch(r"t=1764763200,v1=[0-9a-f]{64}", header)
    # HMAC-SHA256(secret, "<t>.<body>"), independently computed.
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"1764763200." + BODY, hashlib.sha256).hexdigest()
    assert header.endswith(expected)


def test_the_stages_verifier_names_what_failed() -> None:
    header = signature_header(SECRET, BODY)
    assert verify(SECRET, BODY, header) > 0
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, BODY + b" ", header)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(SECRET, BODY, signature_header(SECRET, BODY, timestamp=1))
    with pytest.raises(SignatureError, match="no timestamp"):
        verify(SECRET, BODY, "v1=00")


def test_the_documented_node_snippet_accepts_and_rejects_the_same(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is required (make system-deps installs Debian's nodejs)"
    (tmp_path / "verifyCallback.js").write_text(doc_snippet("javascript", "// verifyCallback.js"))
    fresh = signature_header(SECRET, BODY)
    old = signature_header(SECRET, BODY, timestamp=int(time.time()) - 301)
    cases = [(BODY, fresh), (BODY.replace(b"read", b"sent"), fresh), (BODY, old), (BODY, "v1=00")]
    driver = "const { verifyCallback } = require('./verifyCallback.js');\n" + "".join(
        f"console.log(verifyCallback({json.dumps(SECRET)}, Buffer.from({json.dumps(body.decode())}), "
        f"{json.dumps(header)}));\n"
        for body, header in cases
    )
    (tmp_path / "driver.js").write_text(driver)
    run = subprocess.run([node, "driver.js"], cwd=tmp_path, capture_output=True, text=True, timeout=30, check=True)
    assert run.stdout.split() == ["true", "false", "false", "false"]
