"""The ``trio-sqs`` command line: ``_main`` (parser, ``run``), ``_demo``, ``_settings`` (flags and
``TRIO_SQS_*`` variables), ``_logsetup``, ``_health`` (probes and metrics), ``_common`` (exit codes,
signals, error messages)."""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
