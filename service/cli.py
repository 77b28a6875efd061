"""``rbn-serve serve`` (flags mirror the settings; flags win over RBN_SERVE_* variables) and
``rbn-serve validate <bundle-dir>...`` (one line per bundle; non-zero exit on a bad one),
``rbn-serve models DIR`` (write the bundles shipped in the package into DIR) and ``rbn-serve --version``."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic import ValidationError

from service.config import ENV_PREFIX, Settings
from service.shipped import package_version, write_shipped_models


def _flag_type(annotation):
    """The argparse type of a settings field (``int | None`` -> int, Literal -> choices)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
        return _flag_type(args[0])
    return annotation, None


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind, choices = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description or ''} [env {ENV_PREFIX}{name.upper()}, default {default}]"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind if kind in (int, float) else str, choices=choices,
                                default=None, metavar=name.upper() if not choices else None, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rbn-serve", description="Serve RBN image classifiers through ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP server")
    _add_setting_flags(serve)
    validate = commands.add_parser("validate", help="check bundle folders the way the server loads them")
    validate.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE_DIR")
    models = commands.add_parser("models", help="write the model bundles shipped in the package into a folder")
    models.add_argument("target", type=Path, metavar="DIR")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        from service.validate import validate_dirs

        return validate_dirs(args.bundles)
    if args.command == "models":
        try:
            names = write_shipped_models(args.target)
        except (FileNotFoundError, FileExistsError) as exc:
            print(f"rbn-serve: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {', '.join(names)} to {args.target}")
        return 0
    try:
        settings = _settings(args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            print(f"rbn-serve: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return 2
    from service import logs
    from service.server import serve

    logs.configure(settings.log_format, settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
