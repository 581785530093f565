"""Command-line settings: one flag and one ``TRIO_SQS_*`` environment variable per option.

Every :class:`ConsumerOptions` field becomes a setting, derived from its type and described by its
``doc`` metadata, so a new field needs no edit here (a field of a new type fails loudly at import). A
flag wins over its variable; an empty variable counts as unset.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .._config import ConsumerOptions
from .._exceptions import ConfigurationError

__all__ = [
    "CONSUMER_SETTINGS",
    "ENV_PREFIX",
    "LOG_SETTINGS",
    "QUEUE_SETTING",
    "RUN_SETTINGS",
    "CommandError",
    "Setting",
    "add_setting",
    "check_environment",
    "make_options",
    "resolve",
]

ENV_PREFIX = "TRIO_SQS_"


class CommandError(Exception):
    """An error reported as one line on stderr, with its exit code."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


@dataclass(frozen=True)
class Setting:
    dest: str
    convert: Callable[[str], object]
    help: str
    metavar: str | None = None
    flag_only: bool = False
    # A flag that may be given several times (and a comma-separated variable): a list.
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _consumer_settings() -> list[Setting]:
    """One setting per ConsumerOptions field, derived from its type (a new field needs no edit
    here unless its type is new, which fails loudly at import)."""
    hints = typing.get_type_hints(ConsumerOptions)
    settings = []
    for field in dataclasses.fields(ConsumerOptions):
        tp = hints[field.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            (tp,) = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        convert: Callable[[str], object]
        if tp is int:
            convert, metavar = _parse_int, "N"
        elif tp is float:
            convert, metavar = _parse_float, "SECONDS"
        elif typing.get_origin(tp) is Literal:
            choices = [str(c) for c in typing.get_args(tp)]
            convert, metavar = _choice(choices), "{" + ",".join(choices) + "}"
        elif tp == tuple[str, ...]:
            convert, metavar = _parse_names, "NAME,..."
        else:  # pragma: no cover - a new option type needs a converter
            raise TypeError(f"no command-line conversion for option {field.name}: {tp!r}")
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        # The field's own description (its metadata), as plain text for argparse.
        doc = field.metadata["doc"].replace("``", "").replace("%", "%%")
        # A description that already says what the default is (often a derived one) keeps it.
        said = "default" in doc.lower()
        help_text = doc + ("" if shown is None or said else f" (default: {shown})")
        settings.append(Setting(field.name, convert, help_text, metavar))
    return settings


CONSUMER_SETTINGS = _consumer_settings()
LOG_SETTINGS = [
    Setting("log_level", _choice(["DEBUG", "INFO", "WARNING", "ERROR"]), "Log level.", "LEVEL"),
    Setting("log_format", _choice(["text", "json"]), "text, or json: one object per line.", "FMT"),
]


def _parse_queue(text: str) -> str:
    """One queue (the queue tools'): ``run`` takes a list (``--queue`` repeated or
    comma-separated), the tools one, and a comma is in no queue name or URL."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"expected a queue name or URL, got {text!r}")
    if "," in name:
        raise argparse.ArgumentTypeError(
            f"expected one queue (a name or URL: the queue tools take one), got {text!r}"
        )
    return name


QUEUE_SETTING = Setting("queue", _parse_queue, "Queue name or URL (required).", "NAME_OR_URL")
RUN_SETTINGS = [
    Setting(
        "queue",
        str,
        "Queue name or URL (required). Repeat it (or separate with commas) to consume several "
        "queues in one process, with the same handler and options, one shared client and one "
        "shutdown.",
        "NAME_OR_URL",
        repeat=True,
    ),
    Setting("batch", _parse_bool, "The handler takes a list of messages."),
    Setting(
        "region", str, "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the config file)."
    ),
    Setting(
        "endpoint_url", str, "Endpoint (default: AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL).", "URL"
    ),
    Setting("profile", str, "AWS profile (default: AWS_PROFILE)."),
    Setting("metrics_port", _parse_int, "Serve /metrics, /healthz, /readyz on PORT.", "PORT"),
    Setting("metrics_host", str, "Address to listen on (default: 0.0.0.0).", "HOST"),
    Setting(
        "liveness_window",
        _parse_float,
        "/healthz fails after this long without a successful poll (default: 60; must exceed "
        "wait_time).",
        "SECONDS",
    ),
]


def add_setting(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, setting: Setting
) -> None:
    """Add the flag of ``setting``; its help names the variable."""
    env = "" if setting.flag_only else f" [env {setting.env}]"
    if setting.repeat:
        parser.add_argument(
            setting.flag,
            type=setting.convert,
            action="append",
            metavar=setting.metavar,
            help=setting.help + env,
        )
    elif setting.convert is _parse_bool:
        parser.add_argument(
            setting.flag, action="store_true", default=None, help=setting.help + env
        )
    else:
        parser.add_argument(
            setting.flag, type=setting.convert, metavar=setting.metavar, help=setting.help + env
        )


def resolve(
    args: argparse.Namespace, settings: Sequence[Setting], environ: Mapping[str, str]
) -> dict[str, Any]:
    """The value of each setting given by a flag or, failing that, by its variable."""
    values: dict[str, Any] = {}
    for setting in settings:
        value = getattr(args, setting.dest, None)
        raw = environ.get(setting.env, "")
        if value is None and raw.strip() and not setting.flag_only:
            try:
                if setting.repeat:
                    value = [setting.convert(part) for part in raw.split(",")]
                else:
                    value = setting.convert(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                raise CommandError(f"{setting.env}: {exc}") from None
        if setting.repeat and value is not None:
            # Each flag may itself be a comma-separated list; blanks are dropped.
            value = [p.strip() for v in value for p in str(v).split(",") if p.strip()] or None
        if value is not None:
            values[setting.dest] = value
    return values


def check_environment(environ: Mapping[str, str], known: Iterable[str]) -> None:
    """Refuse a ``TRIO_SQS_*`` variable that no setting of the command line reads (a typo would
    otherwise be ignored silently), naming the closest known one."""
    names = sorted(set(known))
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in names:
            # Compared without the prefix, which every name shares.
            suffixes = [n.removeprefix(ENV_PREFIX) for n in names]
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1)
            hint = f"did you mean {ENV_PREFIX}{close[0]}?" if close else "see 'trio-sqs run --help'"
            raise CommandError(f"unknown variable {name} ({hint})")


def make_options(values: Mapping[str, Any]) -> ConsumerOptions:
    kwargs = {s.dest: values[s.dest] for s in CONSUMER_SETTINGS if s.dest in values}
    try:
        return ConsumerOptions(**kwargs)
    except ConfigurationError as exc:
        raise CommandError(f"invalid option: {exc.message}") from None
