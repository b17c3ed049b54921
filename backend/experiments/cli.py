"""`python -m backend.experiments run --config configs/default.yaml [flags]`

The config file (YAML) and the flags take seed 002's names; a flag overrides the file:

    --model gpt2-small --sae-release gpt2-small-res-jb --hook resid_pre --layers 0-11 --alpha 2.0
    --alpha-sweep 0,0.5,1,2,4 --corpus wikitext2 --max_passages 200 --max_len 256
    --feature_source csv --features-csv data/neuronpedia_features.csv --seed 1234

`--corpus` is `wikitext2` (through `datasets`, online), `demo` (the demo pack's corpus) or a text
file with one passage per line. `--feature_source csv` reads `layer, feature_id, label,
label_confidence` (Neuronpedia's template); `auto` picks live features by `--live-percentile`.
Outputs go to `--output-dir` (see outputs.py). The run checkpoints after every batch in
`<output-dir>/.checkpoint`; running the same command again resumes (`--no-resume` starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from backend.cli import run_guarded
from backend.errors import InvalidRequest, NotFound

# config key -> (flags, type, help)
OPTIONS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "model": (("--model", "--model-name", "--model_name"), str, "catalog model id (gpt2-small, demo, ...)"),
    "sae_release": (("--sae-release", "--sae_release"), str, "SAELens release, e.g. gpt2-small-res-jb"),
    "sae_set": (
        ("--sae-set", "--sae_set"),
        str,
        "catalog SAE set or transcoder set id (instead of a release)",
    ),
    "hook": (("--hook",), str, "hook the SAEs read, e.g. resid_pre (checked against the set)"),
    "layers": (("--layers",), str, "e.g. 0-11 or 2,5,8 (default: every layer of the set)"),
    "alpha": (("--alpha",), float, "headline alpha (default 2.0)"),
    "alpha_sweep": (("--alpha-sweep", "--alpha_sweep"), str, "comma-separated alphas (default 0,0.5,1,2,4)"),
    "corpus": (("--corpus",), str, "wikitext2, demo, or a text file (one passage per line)"),
    "max_passages": (("--max-passages", "--max_passages"), int, "passages to use (default 200)"),
    "max_len": (("--max-len", "--max_len"), int, "tokens per passage (default 256)"),
    "min_len": (("--min-len", "--min_len"), int, "skip shorter passages (default 8)"),
    "feature_source": (("--feature-source", "--feature_source"), str, "csv or auto"),
    "features_csv": (
        ("--features-csv", "--features_csv"),
        str,
        "CSV with layer, feature_id, label, label_confidence",
    ),
    "top_k": (("--top-k", "--top_k", "--features-per-layer"), int, "features per layer (default 5)"),
    "min_conf": (("--min-conf", "--min_conf"), float, "csv: minimum label_confidence"),
    "live_percentile": (
        ("--live-percentile", "--live_percentile"),
        float,
        "auto: firing-rate percentile (90)",
    ),
    "calibration_passages": (("--calibration-passages",), int, "auto: passages to measure firing rates on"),
    "batch_size": (("--batch-size", "--batch_size"), int, "passages per forward (default 16; halves on OOM)"),
    "seed": (("--seed",), int, "seed for the automatic choice (default 1234)"),
    "num_snippet_examples": (("--snippets",), int, "example snippets per feature (default 5)"),
    "output_dir": (("--output-dir", "--output_dir", "--out"), str, "where outputs go"),
}
DEFAULT_OUTPUT = "outputs/experiments"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend.experiments", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run an intervention experiment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", type=Path, help="YAML config (keys as the long flags, with underscores)")
    for key, (flags, tp, helptext) in OPTIONS.items():
        run.add_argument(*flags, dest=key, type=tp, default=None, help=helptext)
    run.add_argument("--no-resume", action="store_true", help="ignore a checkpoint and start over")
    return parser


def parse_layers(spec: Any) -> list[int] | None:
    if spec is None or spec == "" or spec == "all":
        return None
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list):
        return [int(x) for x in spec]
    out: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def parse_floats(spec: Any) -> list[float] | None:
    if spec is None:
        return None
    if isinstance(spec, (int, float)):
        return [float(spec)]
    if isinstance(spec, list):
        return [float(x) for x in spec]
    return [float(x) for x in str(spec).replace(" ", "").split(",") if x]


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        try:
            config = yaml.safe_load(args.config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InvalidRequest(f"Could not read {args.config}: {exc}") from exc
        if "model_name" in config:
            config.setdefault("model", config.pop("model_name"))
        unknown = sorted(set(config) - set(OPTIONS))
        if unknown:
            raise InvalidRequest(
                f"{args.config} has unknown keys {unknown}; valid keys: {', '.join(OPTIONS)}."
            )
    for key in OPTIONS:
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    return config


def _set_id(backend, model: str, config: dict[str, Any]) -> str:
    from backend.local.feature_sets import resolve_model

    entry = resolve_model(backend, model)
    if config.get("sae_set"):
        return str(config["sae_set"])
    release = config.get("sae_release")
    if not release:
        if entry.sae_sets:
            return next(iter(entry.sae_sets))
        raise InvalidRequest(f"{entry.display_name} has no SAE set; pass --sae-set with a transcoder set.")
    for s in entry.sae_sets.values():
        if release in (s.release, s.id):
            return s.id
    for t in entry.transcoder_sets.values():
        if release in (t.circuit_tracer, t.id):
            return t.id
    known = [s.release or s.id for s in entry.sae_sets.values()] + list(entry.transcoder_sets)
    raise NotFound(
        f"{entry.display_name} has no SAE release '{release}' in the catalog; it has "
        f"{', '.join(known) or 'none'}."
    )


def to_request(config: dict[str, Any], backend) -> Any:
    from backend.experiments.corpus import read_lines
    from backend.experiments.features import read_features_csv
    from backend.schemas import ExperimentRequest

    model = config.get("model", "gpt2-small")
    data: dict[str, Any] = {"model": model, "sae_set": _set_id(backend, model, config)}
    if config.get("hook"):
        data["hook"] = config["hook"]
    data["layers"] = parse_layers(config.get("layers"))
    if config.get("alpha") is not None:
        data["alpha"] = float(config["alpha"])
    alphas = parse_floats(config.get("alpha_sweep"))
    if alphas:
        data["alphas"] = alphas
    elif config.get("alpha") is not None:
        data["alphas"] = [float(config["alpha"])]
    corpus = str(config.get("corpus", "wikitext2"))
    if corpus in ("wikitext2", "wikitext", "demo"):
        data["corpus"] = "demo" if corpus == "demo" else "wikitext2"
    else:
        data["corpus"], data["texts"] = "texts", read_lines(Path(corpus))
    source = str(config.get("feature_source", "auto"))
    if source in ("csv", "list"):
        if not config.get("features_csv"):
            raise InvalidRequest(
                "feature_source csv needs --features-csv PATH (layer, feature_id, label, label_confidence)."
            )
        data["feature_source"] = "list"
        data["features"] = [f.model_dump() for f in read_features_csv(Path(config["features_csv"]))]
    elif source == "auto":
        data["feature_source"] = "auto"
    else:
        raise InvalidRequest(f"feature_source is csv or auto, not '{source}'.")
    renames = {"top_k": "features_per_layer", "num_snippet_examples": "n_snippets"}
    for key in (
        "max_passages",
        "max_len",
        "min_len",
        "top_k",
        "min_conf",
        "live_percentile",
        "calibration_passages",
        "batch_size",
        "seed",
        "num_snippet_examples",
    ):
        if config.get(key) is not None:
            data[renames.get(key, key)] = config[key]
    return ExperimentRequest.model_validate(data)


class _LoadProgress:
    """Loading messages on stderr; passages have their own progress bar."""

    def __call__(self, fraction: float | None, message: str) -> None:
        if not message.startswith("Passages"):
            print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done, status = run_guarded(lambda: _run(args))
    if done is not None:
        written, out = done
        print(f"Wrote {len(written)} files to {out}; the report is {out / 'report.md'}")
    return status


def _run(args: argparse.Namespace) -> tuple[list[Path], Path]:
    from backend.experiments.outputs import write_all
    from backend.experiments.runner import execute
    from backend.experiments.state import State
    from backend.local.runtime import Runtime

    config = load_config(args)
    backend = Runtime()
    req = to_request(config, backend)
    out = Path(config.get("output_dir") or DEFAULT_OUTPUT)
    checkpoint = out / ".checkpoint"
    if args.no_resume:
        State.clear(checkpoint)
    result, plan = execute(backend, req, _LoadProgress(), checkpoint_dir=checkpoint, bar=True)
    settings = {k: v for k, v in req.model_dump(exclude={"texts", "features"}).items()}
    settings["corpus_source"] = config.get("corpus", "wikitext2")
    passages = [(p.index, len(p.ids), p.text) for p in plan.passages]
    return write_all(result, settings, passages, out), out
