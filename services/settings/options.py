"""How a setting is declared and read: value parsers, `setting()` (a dataclass field that carries
its parser and help), the command line, the environment, and the README's configuration table.
The settings themselves are declared once, in services/settings/__init__.py."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from services.admission import parse_networks
from services.errors import ConfigError


def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def number(lo: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if value < lo:
            raise ValueError(f"must be >= {lo}, got {value}")
        return value

    return parse


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def csv_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def cidrs(raw: str) -> tuple[str, ...]:
    specs = csv_list(raw)
    parse_networks(specs)  # raises ValueError naming the bad entry
    return specs


def host_ports(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:7000`)."""
    out = []
    for part in csv_list(raw):
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {part!r}")
        out.append((host, int(port)))
    if not out:
        raise ValueError("expected at least one host:port")
    return tuple(out)


def http_url(raw: str) -> str:
    """An http:// or https:// URL with a host (the backend's hooks)."""
    value = raw.strip()
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value


def text(raw: str) -> str:
    return raw.strip()


def choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


@dataclass(frozen=True)
class Option:
    name: str  # attribute on Settings
    env: str
    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    is_switch: bool = False  # flag takes no value (--dev); its env var still takes true/false
    aliases: tuple[str, ...] = ()  # older environment names, read when `env` is unset


def setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    env: str | None = None,
    is_switch: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A Settings field: its default, parser and help, written once. The environment variable is
    the field's name in upper case and the flag `--name-with-dashes`, unless `env` says otherwise."""
    meta = {"parse": parse, "help": help, "env": env, "is_switch": is_switch, "aliases": aliases}
    return field(default=default, metadata=meta)


def options_of(cls: type) -> tuple[Option, ...]:
    return tuple(
        Option(
            name=f.name,
            env=f.metadata["env"] or f.name.upper(),
            flag="--" + f.name.replace("_", "-"),
            parse=f.metadata["parse"],
            default=f.default,
            help=f.metadata["help"],
            is_switch=f.metadata["is_switch"],
            aliases=f.metadata["aliases"],
        )
        for f in dataclasses.fields(cls)
        if "parse" in f.metadata
    )


def _is_switch(opt: Option) -> bool:
    return opt.is_switch or opt.parse is boolean


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def program(run_as: str) -> str:
    """The command as the user typed it, for `--help` and errors: an installed script's name
    (`realtime-gateway`), else `run_as` (`server.py`, `python -m services.auth`)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and not name.endswith(".py") and name != "-c" else run_as


def _build_parser(options: Sequence[Option]) -> _Parser:
    parser = _Parser(prog=program("server.py"), description="Realtime Gateway: WebSocket gateway for chat.")
    for opt in options:
        if _is_switch(opt):
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{opt.help} [env {opt.env}]",
            )
        else:
            parser.add_argument(
                opt.flag,
                dest=opt.name,
                default=None,
                metavar=opt.env,
                help=f"{opt.help} [env {opt.env}, default {opt.default}]",
            )
    return parser


def read_values(
    options: Sequence[Option], argv: Sequence[str] | None, environ: Mapping[str, str] | None
) -> dict[str, Any]:
    """Flags over environment; only what was given, each value parsed (errors as ConfigError)."""
    env = os.environ if environ is None else environ
    args = vars(_build_parser(options).parse_args(list(argv) if argv is not None else None))
    values: dict[str, Any] = {}
    for opt in options:
        raw = args.get(opt.name)
        source = opt.flag
        if raw is None:
            source = next((name for name in (opt.env, *opt.aliases) if env.get(name) is not None), opt.env)
            raw = env.get(source)
            if raw is not None and raw.strip() == "" and opt.default is None:
                raw = None  # an empty env var means "unset" for optional strings
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[opt.name] = raw
            continue
        try:
            values[opt.name] = opt.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}: {exc}") from None
    return values


def markdown_table(options: Sequence[Option]) -> str:
    """The README's configuration table (tests/test_docs.py checks the README holds it)."""
    rows = ["| env | flag | default | meaning |", "|---|---|---|---|"]
    for opt in options:
        flag = f"{opt.flag} / --no-{opt.flag[2:]}" if _is_switch(opt) else opt.flag
        default = opt.default
        if default is None or default == ():
            shown = "unset"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, tuple):
            shown = ",".join(default)
        else:
            shown = str(default)
        env = f"`{opt.env}`" + "".join(f" (alias `{a}`)" for a in opt.aliases)
        rows.append(f"| {env} | `{flag}` | {shown} | {opt.help} |")
    return "\n".join(rows)
