"""aiokafka's routine coordinator-election message is a warning; a real error stays an error."""

from __future__ import annotations

import io
import json
import logging

from aiokafka.errors import GroupCoordinatorNotAvailableError

from pipeline.observability.logs import configure_logging


def test_coordinator_election_is_a_warning_and_other_errors_stay_errors() -> None:
    stream = io.StringIO()
    configure_logging("sender", "test", "INFO", stream=stream)
    log = logging.getLogger("aiokafka.consumer.group_coordinator")
    log.error("Group Coordinator Request failed: %s", GroupCoordinatorNotAvailableError())
    log.error("Group Coordinator Request failed: %s", "KafkaConnectionError: no route")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["warning", "error"]
