"""``loads`` for ReceiveMessage answers, the largest the hot path reads: orjson's when the
``speed`` extra installed it (11 us instead of 31 for an answer of 10 messages), else
``json.loads``.

Its one caller (``_message.receive_result_from_json``) treats a ``ValueError`` as "not for the fast
path" and leaves the answer to botocore, which decodes it as strict UTF-8 and reads it with the
standard library; both decoders here decode strict UTF-8 too (``json.loads`` is given the decoded
text: on bytes it would also take UTF-16, UTF-32 and a byte order mark). Where orjson refuses what
``json.loads`` takes (lone surrogate escapes, ``NaN``) the result is the same; orjson reads
arrays nested deeper than the standard library can (which raises ``RecursionError``), a
document no SQS answer is. Where both accept a document, they give equal values
except for numbers (orjson reads an integer past 64 bits as a float), and that caller takes no
number from the document: every value it uses must be a string, an object or an array, or it
declines (``tests/test_json.py``). ``TRIO_SQS_JSON=json`` forces the standard library (an escape
hatch, and how the benchmarks measure the install without the extra).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

__all__ = ["JSON_VARIABLE", "configure", "default_loads", "loads"]

JSON_VARIABLE = "TRIO_SQS_JSON"


def default_loads() -> tuple[str, Callable[[bytes], Any]]:
    """The decoder to use: ``$TRIO_SQS_JSON`` if set (``json`` or ``orjson``), else orjson when
    it is installed, else the standard library's."""
    forced = os.environ.get(JSON_VARIABLE, "").strip().lower()
    if forced not in ("", "json", "orjson"):
        raise ValueError(f"{JSON_VARIABLE} must be json or orjson, not {forced!r}")
    if forced != "json":
        try:
            import orjson
        except ImportError:
            if forced == "orjson":
                raise ValueError(
                    f"{JSON_VARIABLE}=orjson, but orjson is not installed: "
                    "pip install 'trio-sqs[speed]'"
                ) from None
        else:
            return "orjson", orjson.loads
    return "json", _standard_loads


def _standard_loads(body: bytes) -> Any:
    # Strict UTF-8, as botocore decodes: json.loads(bytes) would also take UTF-16 and UTF-32,
    # a byte order mark, and encoded surrogates.
    return json.loads(body.decode("utf-8"))


def _chosen() -> tuple[str, Callable[[bytes], Any]]:
    try:
        return default_loads()
    except ValueError:  # (open_client refuses it: configure)
        return "json", _standard_loads


LOADS_NAME, loads = _chosen()


def configure() -> None:
    """Choose the decoder again from ``$TRIO_SQS_JSON`` and what is installed (``open_client``
    calls this: the variable counts from the next client opened, and a typo in it is an error
    there, not ignored).

    Raises:
        ValueError: if the variable names no decoder this install has.
    """
    global LOADS_NAME, loads
    LOADS_NAME, loads = default_loads()
