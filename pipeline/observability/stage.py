"""Which stage the running code belongs to, so one process can host several stages.

    bind_stage("sender")     # done by `setup()`, in the task that runs the stage
    current_stage()          # "sender" here and in every task created from here on

Production runs one stage per process, but tests (and a single-process `pipeline run`) start several;
log lines and spans must still name the right stage. asyncio copies context variables into each new
task, so binding once at the start of a stage's `serve()` covers its server, consumers and workers.
"""

from __future__ import annotations

from contextvars import ContextVar

_current: ContextVar[str | None] = ContextVar("pipeline_stage", default=None)
_last_bound: list[str] = []  # fallback for code running outside any stage's tasks


def bind_stage(stage: str) -> None:
    _current.set(stage)
    _last_bound[:] = [stage]


def current_stage() -> str | None:
    """The stage bound in this task's context, else the stage set up most recently in the process."""
    stage = _current.get()
    if stage is not None:
        return stage
    return _last_bound[0] if _last_bound else None
