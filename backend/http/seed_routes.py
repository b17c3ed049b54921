"""The routes of the services Featurescope replaces, with their field names, mapped onto the protocol.

Seed 000 (GPU service on RunPod): `GET /models`, `POST /features/topk`, `POST /compare`.
Seed 003 (graph server): `POST /generate-graph`, `POST /steer`.

Each route is data: which protocol method it calls, which seed fields carry which of ours, and
how the seed answered. `model_id` may be a catalog id (`gpt2-small`) or a hub name
(`google/gemma-2-2b`), resolved by `catalog.find_model`. A missing set is resolved by the backend as
on `/api`: `/steer` steers the model's transcoders (`ModelEntry.feature_set(None)`) and
`/generate-graph` uses its first transcoder set; `/features/topk` reads the first SAE set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from backend.catalog import find_model
from backend.errors import InvalidRequest, NotFound
from backend.schemas import (
    AnalyzeRequest,
    CatalogResult,
    CompareRequest,
    GraphRequest,
    ModelInfo,
    SteerRequest,
)
from backend.schemas.service import UploadReceipt, seed_request_model


@dataclass(frozen=True)
class SeedRoute:
    path: str
    method: str  # the protocol method it calls
    summary: str
    request: type[BaseModel] | None  # the seed's request shape (None: GET without a body)
    protocol_request: type[BaseModel] | None = None
    convert: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # our field -> its value from the seed's
    set_field: str | None = None  # our field filled with the model's first SAE set when absent
    example: dict[str, Any] | None = None
    # How the seed answered, given (result, upload receipt or None); None: the result model itself.
    respond: Callable[[BaseModel, UploadReceipt | None], Any] | None = None


TopKRequest = seed_request_model(
    "TopKRequest",
    AnalyzeRequest,
    aliases={"model": "model_id", "include_explanations": "include_descriptions", "layers": "layer"},
    optional={"sae_set"},
    replace={
        "layers": (int | None, Field(None, ge=0, description="One SAE layer; None: every layer of the set."))
    },
    doc="Seed 000's /features/topk request: top-k SAE features per token.",
)
SeedSteerRequest = seed_request_model(
    "SeedSteerRequest",
    SteerRequest,
    aliases={"model": "model_id"},
    optional={"sae_set"},
    doc="Seed 003's /steer request: default vs steered generation.",
)
GenerateGraphRequest = seed_request_model(
    "GenerateGraphRequest",
    GraphRequest,
    aliases={"model": "model_id"},
    optional={"transcoder_set"},
    doc="Seed 003's /generate-graph request: an attribution graph, returned or uploaded to signed_url.",
)


def _graph_answer(result: BaseModel, receipt: UploadReceipt | None) -> Any:
    return receipt if receipt is not None else result.graph  # type: ignore[attr-defined]


SEED_ROUTES: tuple[SeedRoute, ...] = (
    SeedRoute("/models", "catalog", "Models with their SAE and transcoder sets (seed 000)", None),
    SeedRoute(
        "/features/topk",
        "analyze",
        "Top-k SAE features per token (seed 000)",
        TopKRequest,
        AnalyzeRequest,
        convert={"layers": lambda v: None if v is None else [v]},
        set_field="sae_set",
        example={
            "model_id": "gpt2-small",
            "text": "The plasma reached high temperature",
            "layer": None,
            "k": 10,
            "include_descriptions": True,
        },
    ),
    SeedRoute(
        "/compare",
        "compare",
        "Several models on the same domain sentences (seed 000)",
        CompareRequest,
        CompareRequest,
        example={
            "models": ["gemma-2-2b", "llama-3.1-8b"],
            "sentences": ["The tokamak achieved H-mode"],
            "domain_terms": ["tokamak", "plasma", "confinement"],
        },
    ),
    SeedRoute(
        "/generate-graph",
        "attribute",
        "Attribution graph JSON, or its upload to signed_url (seed 003)",
        GenerateGraphRequest,
        GraphRequest,
        example={
            "prompt": "1 2 ",
            "model_id": "google/gemma-2-2b",
            "batch_size": 48,
            "max_n_logits": 10,
            "desired_logit_prob": 0.95,
            "node_threshold": 0.8,
            "edge_threshold": 0.85,
            "slug_identifier": "count-1-2",
            "max_feature_nodes": 5000,
        },
        respond=_graph_answer,
    ),
    SeedRoute(
        "/steer",
        "steer",
        "Default vs steered generation with top logits (seed 003)",
        SeedSteerRequest,
        SteerRequest,
        example={
            "model_id": "google/gemma-2-2b",
            "prompt": "Fait: Michael Jordan joue au",
            "features": [
                {"layer": 20, "index": 1454, "token_active_position": 6, "steer_position": 6, "ablate": True},
                {"layer": 20, "index": 341, "token_active_position": 7, "steer_position": 7, "delta": 350},
                {
                    "layer": 20,
                    "index": 341,
                    "token_active_position": 7,
                    "steer_generated_tokens": True,
                    "delta": 350,
                },
            ],
            "n_tokens": 10,
            "top_k": 3,
            "temperature": 0,
            "freq_penalty": 0,
            "freeze_attention": False,
        },
    ),
)


def resolve_model(model_id: str, catalog: CatalogResult) -> ModelInfo:
    """The catalog model a seed's `model_id` names (`catalog.find_model`: ids, hub names)."""
    found = find_model(model_id, catalog.models)
    if found is None:
        raise NotFound(
            f"Unknown model '{model_id}'. Valid models: {', '.join(m.id for m in catalog.models)}.",
            model=model_id,
        )
    return found


def _first_set(info: ModelInfo, set_field: str) -> str:
    """The model's first SAE set (seed 000's /features/topk names none; an analysis needs one)."""
    sets = [s.id for s in info.sae_sets]
    if not sets:
        raise NotFound(f"Model '{info.id}' has no SAE set in the catalog; choose another model.", model=info.id)
    return sets[0]


def to_protocol(route: SeedRoute, seed_req: BaseModel, catalog: CatalogResult) -> BaseModel:
    """The protocol request a seed request stands for."""
    assert route.protocol_request is not None
    data: dict[str, Any] = {}
    for name, value in seed_req.model_dump().items():  # our names: the seed's are aliases
        data[name] = route.convert[name](value) if name in route.convert else value
    info = resolve_model(data["model"], catalog) if isinstance(data.get("model"), str) else None
    if info is not None:
        data["model"] = info.id
        if route.set_field and data.get(route.set_field) is None:
            data[route.set_field] = _first_set(info, route.set_field)
    try:
        return route.protocol_request.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(f"The request does not fit {route.path}: {exc.errors()[0]['msg']}.") from None
