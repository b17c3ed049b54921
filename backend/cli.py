"""`python -m backend <method> ...`: every protocol method from a terminal, JSON out.

Subcommands are derived from the protocol's request models, so each method the backend grows is
a subcommand at once: scalar fields become flags (`--max-feature-nodes 500`), list fields take
several values, nested fields take JSON, and `--request FILE.json` supplies a whole request.
A few conveniences sit on top (`analyze --layer N | --all-layers`, `--track L:I`, `--text-file`).

Progress goes to stderr; the result is printed to stdout as the result model's JSON. A
`BackendError` prints its message to stderr as JSON and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from backend.errors import BackendError, NotFound, invalid_fields
from backend.protocol import methods
from backend.schemas import LayerFeature

T = TypeVar("T")

# method name -> (request model or None, help): the protocol's methods and docstrings.
METHODS: dict[str, tuple[type[BaseModel] | None, str]] = {
    name: (m.request, m.summary[:1].lower() + m.summary[1:]) for name, m in methods().items()
}
# Fields filled by conveniences rather than generic flags.
SPECIAL = {"analyze": {"layers", "track"}}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], skip: set[str]) -> None:
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        tp = _unwrap_optional(field.annotation)
        helptext = field.description or ""
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": helptext}
        origin = typing.get_origin(tp)
        if tp is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, **kwargs)
        elif tp in (int, float, str):
            parser.add_argument(_flag(name), type=tp, metavar=tp.__name__.upper(), **kwargs)
        elif origin is list and typing.get_args(tp) and typing.get_args(tp)[0] in (int, float, str):
            item = typing.get_args(tp)[0]
            parser.add_argument(_flag(name), type=item, nargs="*", metavar=item.__name__.upper(), **kwargs)
        elif origin is typing.Literal:
            parser.add_argument(_flag(name), choices=list(typing.get_args(tp)), **kwargs)
        else:
            kwargs["help"] = (helptext + " (JSON)").strip()
            parser.add_argument(_flag(name), type=json.loads, metavar="JSON", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", metavar="URL", help="use a remote backend at URL (FEATURESCOPE_REMOTE_URL)")
    sub = parser.add_subparsers(dest="method", required=True)
    for method, (model, helptext) in METHODS.items():
        p = sub.add_parser(method, help=helptext, description=helptext)
        if model is None:
            continue
        p.add_argument("--request", type=Path, metavar="FILE.json", help="the whole request as JSON")
        add_model_flags(p, model, SPECIAL.get(method, set()))
        if method == "analyze":
            group = p.add_mutually_exclusive_group()
            group.add_argument("--layer", type=int, action="append", metavar="N",
                               help="an SAE layer to read (repeatable); default: all layers")
            group.add_argument("--all-layers", action="store_true", help="read every layer of the SAE set")
            p.add_argument("--track", nargs="*", default=None, metavar="L:I",
                           help="features to follow on every token, as layer:index")
            p.add_argument("--text-file", type=Path, metavar="FILE", help="read the text from a file")
    return parser


def request_from_args(method: str, args: argparse.Namespace, backend: Any) -> BaseModel:
    model = METHODS[method][0]
    assert model is not None
    data: dict[str, Any] = {}
    if getattr(args, "request", None):
        data.update(json.loads(args.request.read_text()))
    for name in model.model_fields:
        if hasattr(args, name) and name not in SPECIAL.get(method, set()):
            data[name] = getattr(args, name)
    if method == "analyze":
        if args.text_file:
            data["text"] = args.text_file.read_text()
        if args.layer:
            data["layers"] = args.layer
        elif args.all_layers:
            data["layers"] = None
        if args.track is not None:
            data["track"] = [LayerFeature.parse(t).model_dump() for t in args.track]
        if "sae_set" not in data and "model" in data:
            models = backend.catalog().models
            info = next((m for m in models if m.id == data["model"]), None)
            if info is None:
                raise NotFound(f"Unknown model '{data['model']}'. Valid models: "
                               f"{', '.join(m.id for m in models)}.")
            if info.sae_sets:
                data["sae_set"] = info.sae_sets[0].id
    return model.model_validate(data)


class StderrProgress:
    """Progress lines on stderr: a bar when the fraction is known, the message always."""

    def __call__(self, fraction: float | None, message: str) -> None:
        bar = ""
        if fraction is not None:
            filled = int(round(fraction * 20))
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {fraction:4.0%} "
        print(f"{bar}{message}", file=sys.stderr, flush=True)


def run_guarded(work: Callable[[], T]) -> tuple[T | None, int]:
    """Run a CLI's work with stdout sent to stderr (libraries print while loading; stdout is kept for
    the answer). A `BackendError`, or a request that does not validate, prints
    `{"error": ..., "message": ...}` on stderr and gives exit status 2. Every CLI here uses this."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return work(), 0
    except BackendError as exc:
        print(json.dumps(exc.to_wire()), file=sys.stderr)
    except ValidationError as exc:  # the request's fields: which ones and why, never the input
        err = invalid_fields(list(exc.errors()), "See --help for the fields.")
        print(json.dumps(err.to_wire()), file=sys.stderr)
    except ValueError as exc:
        print(json.dumps({"error": "invalid_request", "message": str(exc)}), file=sys.stderr)
    return None, 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from backend.settings import get_settings

    settings = get_settings()
    if args.remote:
        settings = settings.model_copy(update={"backend": "remote", "remote_url": args.remote})
    result, status = run_guarded(lambda: _call(args, settings))
    if result is not None:
        print(result.model_dump_json(indent=2))
    return status


def _call(args: argparse.Namespace, settings: Any) -> BaseModel:
    from backend import get_backend

    backend = get_backend(settings)
    fn = getattr(backend, args.method)
    spec = methods()[args.method]
    if spec.request is None:
        return fn()
    req = request_from_args(args.method, args, backend)
    return fn(req, progress=StderrProgress()) if spec.long else fn(req)
