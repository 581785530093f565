"""``python -m trio_sqs``: the ``trio-sqs`` command."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
