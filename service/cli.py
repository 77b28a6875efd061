"""The ``rbn-serve`` command line: ``serve`` (one flag per ``Settings`` field; flags win over
RBN_SERVE_* variables), ``validate <bundle-dir>...`` (one line per bundle; non-zero exit on a bad one),
``models DIR`` (write the bundles shipped in the package into DIR), ``ab-eval FOLDER`` (a client: drive a
running server's /ab with labelled images, ``service.tools.abeval``) and ``--version``.

Every subcommand is a ``Command``: a pydantic-settings model whose fields pydantic-settings turns into
the subcommand's flags and positional arguments (``CliSettingsSource``: kebab-case flags, ``--x/--no-x``
for booleans, each field's description and environment variable in ``--help``), and the function that
runs it. A new ``Settings`` field is a new ``serve`` flag with no change here; a new subcommand is a
model, a function and one entry in ``COMMANDS``.

The one piece of argparse left by hand is the root parser: pydantic-settings' own ``CliApp`` builds
subcommands as fields of a root model, which gives neither ``--version`` nor our exit codes, and its
parse errors end in a traceback. Here argparse owns the subcommand dispatch and ``--version``, every
usage error is one ``rbn-serve ...: error: ...`` line with exit 2, and an invalid value is one
``rbn-serve: invalid setting <field>: <why>`` line per field with exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    CliPositionalArg,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from service.core.config import ENV_PREFIX, Settings
from service.core.shipped import package_version, write_shipped_models

PROG = "rbn-serve"
USAGE_ERROR = 2  # argparse's exit code for a bad command line; also ours for an invalid setting


class Arguments(BaseSettings):
    """Base of a subcommand's arguments that are not settings: read from the command line only
    (``Settings`` also reads the environment; a ``TARGET`` variable must not fill ``models``'s folder)."""

    model_config = SettingsConfigDict(extra="forbid", use_attribute_docstrings=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the command line source is put in front of these by pydantic-settings


class ValidateArgs(Arguments):
    bundles: CliPositionalArg[list[Path]]
    """Bundle folders (``<repository>/<name>``)."""


class ModelsArgs(Arguments):
    target: CliPositionalArg[Path]
    """Folder to write the shipped bundles into (must not hold them already)."""


class AbEvalArgs(Arguments):
    folder: CliPositionalArg[Path]
    """Labelled images: one sub-folder per class (torchvision's ImageFolder; names matched to the model's
    labels ignoring case and punctuation), or a folder with a labels.json (the shipped samples)."""
    server: str = "http://127.0.0.1:8000"
    """Base URL of a running rbn-serve."""
    model: str | None = None
    """RBN model compared with its baseline (default: the server's primary model)."""
    corruptions: list[str] = []
    """Corruptions, comma-separated; 'none' is the clean images (default: none and every corruption)."""
    severities: list[int] = []
    """Severities 1..5, comma-separated (default: all)."""
    concurrency: int = Field(4, ge=1, le=64)
    """Requests in flight at once."""
    batch: int = Field(8, ge=1, le=64)
    """Images per request (of one class; at most the server's max_files)."""
    api_key: str | None = None
    """API key sent as 'Authorization: Bearer' (default: the RBN_SERVE_API_KEY environment variable)."""
    out: Path = Path("ab-eval")
    """Folder for ab-eval.csv, ab-eval.json and ab-eval.png."""
    timeout: float = Field(60.0, gt=0)
    """Seconds one request may take."""


def _serve(settings: Settings) -> int:
    from service.core import logs
    from service.http.server import serve

    logs.configure(settings.log_format, settings.log_level)
    if settings.grpc_port is None:
        return serve(settings)
    from functools import partial
    import logging

    from service.grpc.server import GrpcFrontEnd, GrpcStartError, check_port

    if settings.workers > 1:  # the workers bind it with SO_REUSEPORT: make sure nobody else holds it
        try:
            check_port(settings)
        except GrpcStartError as exc:
            logging.getLogger("service.grpc.server").critical("cannot start: %s", exc)
            return 1
    return serve(settings, partial(GrpcFrontEnd, reuse_port=settings.workers > 1))


def _validate(args: ValidateArgs) -> int:
    from service.tools.validate import validate_dirs

    return validate_dirs(args.bundles)


def _models(args: ModelsArgs) -> int:
    try:
        names = write_shipped_models(args.target)
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(names)} to {args.target}")
    return 0


def _ab_eval(args: AbEvalArgs) -> int:
    import os

    from service.tools.abeval import run

    key = args.api_key if args.api_key is not None else os.environ.get("RBN_SERVE_API_KEY")
    if key is not None and not key.strip():  # `--api-key "$KEY"` with KEY unset: say so, do not send no key
        print(f"{PROG} ab-eval: the API key is empty (--api-key or RBN_SERVE_API_KEY); give the key, or leave both "
              "unset for a server that requires none", file=sys.stderr)
        return USAGE_ERROR
    return run(args.folder, args.server, args.model, args.corruptions, args.severities, args.concurrency,
               args.batch, key, args.out, args.timeout)


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, the model of its arguments and what runs it."""

    name: str
    help: str
    arguments: type[BaseSettings]
    run: Callable[[Any], int]


COMMANDS = (
    Command("serve", "start the server (HTTP; gRPC too with --grpc-port)", Settings, _serve),
    Command("validate", "check bundle folders the way the server loads them", ValidateArgs, _validate),
    Command("models", "write the model bundles shipped in the package into a folder", ModelsArgs, _models),
    Command("ab-eval", "compare a server's RBN model with its baseline on a folder of labelled images (/ab)",
            AbEvalArgs, _ab_eval),
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``rbn-serve serve: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# `serve --help` in sections; a field not named here lands in "limits" (max_*, *_timeout_s, ...) or "server".
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "server": ("host", "port", "workers", "listen_backlog", "drain_delay_s", "graceful_timeout_s"),
    "models": ("model_repository", "primary_model", "providers", "intra_op_threads", "cuda_device", "max_batch_size",
               "max_queue_delay_ms", "instances", "batch_size_search", "default_top_k", "shadow_fraction", "shadow_max_pending",
               "cuda_conv_algo_search", "cuda_mem_limit_bytes", "cuda_arena_extend_strategy", "cuda_preload_dlls"),
    "limits": (),
    "security": ("api_key", "api_key_file", "docs"),
    "metrics and logs": ("metrics_require_key", "log_format", "log_level", "access_log"),
}
_LIMIT_WORDS = ("max_", "retry_after", "inline_", "decode_", "read_timeout", "keep_alive", "unready_")


def help_group(name: str) -> str:
    """The ``serve --help`` section of a ``Settings`` field."""
    for title, names in HELP_GROUPS.items():
        if name in names:
            return title
    return "limits" if name.startswith(_LIMIT_WORDS) or "_timeout" in name else "server"  # write_timeout_s, ...


def _metavar(name: str, annotation: Any) -> str | None:
    """A word for the value (PATH, SECONDS, N, ...) instead of the type's Python name (Path, float, int)."""
    text = str(annotation)
    if "list[" in text:
        return "N,..." if "int" in text else "NAME,..."
    if "Path" in text:
        return "FILE" if name.endswith("_file") else "DIR"
    if "SecretStr" in text or name.endswith("key"):
        return "KEY"
    for suffix, word in (("_ms", "MS"), ("_s", "SECONDS"), ("_bytes", "BYTES"), ("_pixels", "PIXELS"), ("timeout", "SECONDS"),
                         ("port", "PORT"), ("host", "HOST"), ("server", "URL"), ("model", "NAME"), ("fraction", "0..1")):
        if name.endswith(suffix):
            return word
    return "N" if "int" in text else "NUMBER" if "float" in text else "TEXT"


def _default_text(name: str, field: Any) -> str:
    """`` (default: ...)`` once, or nothing: none when the description says its default or there is none to show."""
    description = field.description or ""
    default = field.default
    if ("default:" in description.lower() or field.is_required() or field.default_factory is not None
            or default in (None, [], ())):
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    if name.endswith("_bytes") and isinstance(default, int) and default >= 1024:
        unit, size = next((u, default / f) for u, f in (("MiB", 2**20), ("KiB", 2**10)) if default >= f)
        return f" (default: {default} = {size:g} {unit})"
    return f" (default: {default})"


def _tidy_help(parser: argparse.ArgumentParser, model: type[BaseSettings], grouped: bool) -> None:
    """Each flag's help is its description and its default once; metavars are words, not Python types;
    with ``grouped``, the flags sit in the ``HELP_GROUPS`` sections."""
    fields = model.model_fields
    sections = {title: parser.add_argument_group(title) for title in HELP_GROUPS} if grouped else {}
    for action in list(parser._actions):
        field = fields.get(action.dest)
        if field is None:
            continue
        action.help = " ".join((field.description or "").split()).replace("%", "%%") + _default_text(action.dest, field)
        if action.nargs != 0 and action.option_strings and not str(action.metavar).startswith("{"):  # {a,b,c}: kept
            action.metavar = _metavar(action.dest, field.annotation)
        if grouped and action.option_strings:
            parser._optionals._group_actions.remove(action)
            sections[help_group(action.dest)]._group_actions.append(action)


@dataclass(frozen=True)
class Cli:
    """The root parser and, per subcommand, the pydantic-settings source that reads its arguments."""

    parser: argparse.ArgumentParser
    sources: dict[str, CliSettingsSource]

    def parse(self, argv: list[str] | None) -> tuple[Command, BaseSettings]:
        """argv -> the chosen command and its validated arguments (ValidationError on a bad value)."""
        namespace = self.parser.parse_args(argv)
        command = next(c for c in COMMANDS if c.name == namespace.command)
        source = self.sources[command.name](parsed_args=namespace)
        return command, command.arguments(_cli_settings_source=source)


def build_cli() -> Cli:
    """The ``rbn-serve`` parser: ``--version`` and one subparser per ``COMMANDS`` entry, whose flags and
    positional arguments pydantic-settings generates from the command's model."""
    parser = _Parser(prog=PROG, description="Serve RBN image classifiers through ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(c.name for c in COMMANDS) + "}")
    sources = {}
    for command in COMMANDS:
        reads_env = not issubclass(command.arguments, Arguments)  # only `serve`'s Settings read RBN_SERVE_* variables
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.help,
            usage=f"{PROG} {command.name} [options]" if reads_env else None,
            epilog=(f"Every flag is also an environment variable: --max-batch-size 8 is {ENV_PREFIX}MAX_BATCH_SIZE=8 "
                    f"({ENV_PREFIX} + the flag's name in capitals, '-' as '_'); a flag wins over its variable.")
            if reads_env else None)
        sources[command.name] = CliSettingsSource(
            command.arguments, root_parser=sub, cli_kebab_case=True, cli_implicit_flags=True,
            cli_show_env_vars=False, cli_hide_none_type=True, cli_exit_on_error=True,
        )
        _tidy_help(sub, command.arguments, grouped=reads_env)
    return Cli(parser, sources)


def main(argv: list[str] | None = None) -> int:
    cli = build_cli()
    try:
        command, arguments = cli.parse(argv)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"{PROG}: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return USAGE_ERROR
    except SettingsError as exc:  # a value pydantic-settings cannot parse before validation
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
        return USAGE_ERROR
    return command.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
