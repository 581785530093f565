"""What a type checker must say about ``open_consumer`` and ``run_consumer`` (their overloads):
checked by ``scripts/lint`` with ``mypy --strict --warn-unused-ignores``, as typeshed checks its
test cases. The right calls must pass; each wrong one carries the ignore of the error mypy must
report there, so if the overloads stopped catching a batch/single handler mix-up, that ignore
would be unused and lint would fail. Not imported by the tests (it has no test in it).
"""

from __future__ import annotations

import trio

import trio_sqs
from trio_sqs import Message


async def single(message: Message) -> None: ...


async def many(messages: list[Message]) -> list[Message]:
    return []


async def right(nursery: trio.Nursery) -> None:
    async with trio_sqs.open_consumer("q", single):
        pass
    async with trio_sqs.open_consumer("q", single, batch=False, concurrency=4):
        pass
    async with trio_sqs.open_consumer("q", many, batch=True):
        pass
    await trio_sqs.run_consumer("q", single)
    await trio_sqs.run_consumer("q", many, batch=True, wait_time=5)


async def wrong() -> None:
    # Without batch=True only the single-message overload applies: mypy names the argument.
    async with trio_sqs.open_consumer("q", many):  # type: ignore[arg-type]
        pass
    async with trio_sqs.open_consumer("q", many, batch=False):  # type: ignore[call-overload]
        pass
    async with trio_sqs.open_consumer("q", single, batch=True):  # type: ignore[call-overload]
        pass
    await trio_sqs.run_consumer("q", many)  # type: ignore[arg-type]
    await trio_sqs.run_consumer("q", single, batch=True)  # type: ignore[call-overload]
