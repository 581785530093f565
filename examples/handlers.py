"""Handlers to start `trio-sqs run` from: copy this file into your project and edit.

    cd examples
    trio-sqs run handlers:handle --queue orders            # one message at a time, 10 at once
    trio-sqs run handlers:handle_batch --batch --queue orders

Before you run it: credentials and a region as for any AWS tool (`AWS_PROFILE`, or
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, and `AWS_REGION`), and a queue (`trio-sqs send
--create --queue orders hello` creates one and sends a message). Without AWS: start the in-memory
SQS (`python -m trio_sqs.testing --port 9324 --queue orders`) and add
`--endpoint-url http://127.0.0.1:9324` (any keys will do: `AWS_ACCESS_KEY_ID=x
AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1`).

The command stops gracefully on SIGTERM or SIGINT: running handlers get the grace period
(`--grace-period`, 10 s), what was received but not finished goes back to the queue.
"""

from __future__ import annotations

import json
import logging

import trio_sqs

log = logging.getLogger("handlers")


async def handle(message: trio_sqs.Message) -> None:
    """One message. Returning acknowledges (deletes) it; raising leaves it to come back after the
    failure backoff (a dead-letter queue catches those that keep failing)."""
    try:
        order = json.loads(message.body)
    except ValueError:
        raise trio_sqs.Retry(delay=60, reason="not JSON yet") from None
    # Logged with the message id (`--log-format json` adds it as a field); never log bodies
    # that may carry personal data.
    log.info("order %s handled", order.get("order_id") if isinstance(order, dict) else "?")


async def handle_batch(messages: list[trio_sqs.Message]) -> list[trio_sqs.Message]:
    """Up to 10 messages (`--batch`). Return the ones that failed: they come back after the
    failure backoff; the others are acknowledged."""
    failed = []
    for message in messages:
        try:
            json.loads(message.body)
        except ValueError:
            failed.append(message)
    return failed
