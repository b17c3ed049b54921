"""The contract: LocalBackend and RemoteBackend (over HTTP to `python -m backend.http.service` on
127.0.0.1, started by the `remote_service` fixture) give identical results and identical errors.

Each protocol method has one small fixture below (`@contract("name")`) listing its cases; adding a
method's cases is one more. A method the backend has not built yet raises NotImplementedYet on both
sides, and its cases start comparing real results the moment it lands.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from backend.errors import BackendError, LimitExceeded, NotFound, NotImplementedYet
from backend.http.remote import RemoteBackend
from backend.http.wire import protocol_methods
from backend.request_limits import CHECKS, check_request
from backend.schemas import (
    AnalyzeRequest,
    CompareRequest,
    CompareResult,
    EstimateRequest,
    ExperimentFeature,
    ExperimentRequest,
    ExplanationEdit,
    FeatureRef,
    FeatureRequest,
    GraphRequest,
    LayerFeature,
    MemoryEstimate,
    SearchRequest,
    SteerFeature,
    SteerRequest,
    SteerSweepRequest,
    UnloadRequest,
)
from backend.schemas.steer import FeatureTarget
from backend.settings import Limits


@dataclass(frozen=True)
class Case:
    request: BaseModel | None
    expect: type[BackendError] | None = None  # None: a result
    id: str = ""


CONTRACT: dict[str, Callable[[], list[Case]]] = {}


def contract(method: str):
    def register(fn: Callable[[], list[Case]]) -> Callable[[], list[Case]]:
        CONTRACT[method] = fn
        return fn

    return register


@contract("info")
def info_cases() -> list[Case]:
    return [Case(None, id="info")]


@contract("catalog")
def catalog_cases() -> list[Case]:
    return [Case(None, id="catalog")]


@contract("estimate")
def estimate_cases() -> list[Case]:
    return [
        Case(
            EstimateRequest(model="gpt2-small", seq_len=256, sae_set="res-jb", sae_layers=[4, 8]), id="gpt2"
        ),
        Case(EstimateRequest(model="llama-3.1-8b", seq_len=4096, dtype="bfloat16"), id="llama"),
        Case(EstimateRequest(model="nope"), NotFound, id="unknown-model"),
    ]


@contract("unload")
def unload_cases() -> list[Case]:
    return [Case(UnloadRequest(model="qwen3-4b"), NotFound, id="not-loaded")]


TEXT = "The tokamak <b>achieved</b> H-mode & more."


@contract("analyze")
def analyze_cases() -> list[Case]:
    return [
        Case(
            AnalyzeRequest(
                model="demo",
                sae_set="res",
                text=TEXT,
                layers=[1],
                k=5,
                track=[LayerFeature(layer=1, index=3), LayerFeature(layer=0, index=7)],
            ),
            id="demo-l1",
        ),
        Case(
            AnalyzeRequest(model="demo", sae_set="res", text=TEXT, k=3, include_explanations=False),
            id="demo-all",
        ),
        Case(AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT, layers=[4, 8], k=4), id="gpt2"),
        Case(AnalyzeRequest(model="gpt2-small", sae_set="topk-l8", text=TEXT * 3, k=8), id="topk-windows"),
        Case(
            AnalyzeRequest(model="demo", sae_set="res", text=TEXT, k=1000), LimitExceeded, id="k-over-limit"
        ),
        Case(
            AnalyzeRequest(model="demo", sae_set="res", text="token " * 1100), LimitExceeded, id="tokens-over"
        ),
        Case(
            AnalyzeRequest(model="demo", sae_set="res", text=TEXT, layers=[40]), NotFound, id="no-such-layer"
        ),
        Case(AnalyzeRequest(model="nope", sae_set="res", text=TEXT), NotFound, id="unknown-model"),
    ]


@contract("feature")
def feature_cases() -> list[Case]:
    return [
        Case(
            FeatureRequest(feature=FeatureRef(model="demo", sae_set="res", layer=1, index=3), n_examples=5),
            id="demo-1-3",
        )
    ]


@contract("search")
def search_cases() -> list[Case]:
    return [Case(SearchRequest(model="demo", sae_set="res", mode="text", text=TEXT, k=5), id="text")]


@contract("save_explanation")
def save_explanation_cases() -> list[Case]:
    ref = FeatureRef(model="demo", sae_set="res", layer=0, index=5)
    return [
        # An empty text removes the user's explanation: the same state whichever side runs first.
        Case(ExplanationEdit(feature=ref, text=""), id="clear"),
        Case(ExplanationEdit(feature=ref.model_copy(update={"index": 10**6}), text="x"), NotFound, id="no-such"),
    ]


@contract("steer")
def steer_cases() -> list[Case]:
    return [
        Case(
            SteerRequest(
                model="demo",
                sae_set="res",
                prompt="The cat sat on the",
                n_tokens=4,
                top_k=3,
                features=[SteerFeature(layer=1, index=3, delta=4.0, steer_all_prompt_positions=True)],
            ),
            id="demo-delta",
        )
    ]


@contract("sweep")
def sweep_cases() -> list[Case]:
    target = FeatureTarget(layer=1, index=3, steer_all_prompt_positions=True)
    return [
        Case(SteerSweepRequest(model="demo", sae_set="res", prompt="The cat sat on the", n_tokens=3,
                               feature=target, alphas=[0.0, 2.0]), id="demo-two-alphas"),
        Case(SteerSweepRequest(model="demo", sae_set="res", prompt="The cat", feature=target,
                               alphas=[float(a) for a in range(100)]), LimitExceeded, id="too-many-alphas"),
    ]


@contract("experiment")
def experiment_cases() -> list[Case]:
    return [
        Case(ExperimentRequest(model="demo", sae_set="res", layers=[1], alphas=[0.0, 2.0], corpus="texts",
                               texts=["The cat sat on the mat and looked at the dog for a while.",
                                      "A function returns a value when it is called with an argument."],
                               feature_source="list", features=[ExperimentFeature(layer=1, index=3)],
                               max_passages=2, batch_size=2), id="demo-two-passages"),
    ]


@contract("attribute")
def attribute_cases() -> list[Case]:
    return [
        Case(
            GraphRequest(
                prompt="1 2 3", model="demo", transcoder_set="demo", batch_size=8, max_feature_nodes=64
            ),
            id="demo",
        )
    ]


@contract("compare")
def compare_cases() -> list[Case]:
    return [
        Case(
            CompareRequest(
                models=["demo", "gpt2-small"],
                sentences=["The tokamak achieved H-mode."],
                domain_terms=["tokamak", "H-mode"],
            ),
            id="demo-gpt2",
        )
    ]


# Figures that change from moment to moment or from process to process, not between backends.
VOLATILE = {
    "elapsed_ms",
    "loaded",
    "memory_in_use_gb",
    "used_gb",
    "free_gb",
    "torch_reserved_gb",
    "available_gb",
    "backend",
    "remote_url",
    # Per-process history: what this process's graph cache holds and how its estimates calibrated.
    "cached",
    "timings_ms",
    "estimate",
}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def normalise(outcome: BaseModel | BackendError) -> Any:
    if isinstance(outcome, BackendError):
        return type(outcome).__name__, outcome.kind, outcome.message, outcome.details
    data = _strip(outcome.model_dump(mode="json"))
    if isinstance(outcome, MemoryEstimate):  # its notes quote the free memory of the moment
        data["notes"] = [re.sub(r"\d+(\.\d+)?", "#", note) for note in data["notes"]]
    if isinstance(outcome, CompareResult):  # its notes say which models this process loaded or unloaded
        data.pop("notes")
    return type(outcome).__name__, data


def outcome(backend: Any, method: str, req: BaseModel | None) -> BaseModel | BackendError:
    fn = getattr(backend, method)
    try:
        return fn() if req is None else fn(req)
    except BackendError as exc:
        return exc


ALL_CASES = [(method, case) for method, make in CONTRACT.items() for case in make()]


@pytest.fixture(scope="module")
def remote(remote_service) -> RemoteBackend:
    client = RemoteBackend(remote_service.url, remote_service.key, backoff_s=0)
    yield client
    client.close()


def test_every_protocol_method_has_contract_cases():
    assert set(CONTRACT) == set(protocol_methods()), "add a @contract fixture for each new protocol method"


@pytest.mark.parametrize(("method", "case"), ALL_CASES, ids=[f"{m}-{c.id}" for m, c in ALL_CASES])
def test_local_and_remote_agree(method: str, case: Case, backend, remote):
    local = outcome(backend, method, case.request)
    over_http = outcome(remote, method, case.request)
    if not isinstance(local, NotImplementedYet):
        if case.expect is None:
            assert not isinstance(local, BackendError), f"{method} failed locally: {local}"
        else:
            assert isinstance(local, case.expect), f"expected {case.expect.__name__}, got {local!r}"
    assert normalise(over_http) == normalise(local)


def test_remote_info_says_remote_and_where(remote, remote_service):
    info = remote.info()
    assert info.backend == "remote" and info.remote_url == remote_service.url
    health = remote.health()
    assert health.status == "ok" and health.auth and health.backend == "local"


def test_two_concurrent_clients_each_get_their_solo_result(backend, remote_service):
    """One client steers (or, while steering is not built, analyses with GPT-2) while another
    analyses with the demo model; both run four times at once through one service."""
    steer = SteerRequest(
        model="demo",
        sae_set="res",
        prompt="The cat sat on the",
        n_tokens=4,
        top_k=3,
        features=[SteerFeature(layer=1, index=3, delta=4.0, steer_all_prompt_positions=True)],
    )
    first: tuple[str, BaseModel] = ("steer", steer)
    if isinstance(outcome(backend, "steer", steer), NotImplementedYet):
        first = (
            "analyze",
            AnalyzeRequest(model="gpt2-small", sae_set="res-jb", text=TEXT * 4, layers=[2, 9], k=6),
        )
    second = (
        "analyze",
        AnalyzeRequest(
            model="demo", sae_set="res", text=TEXT[::-1] * 3, k=4, track=[LayerFeature(layer=0, index=5)]
        ),
    )
    jobs = [first, second]
    solo = [normalise(outcome(backend, m, r)) for m, r in jobs]
    assert all(s[0] != "NotImplementedYet" and not isinstance(s[1], str) for s in solo)
    clients = [RemoteBackend(remote_service.url, remote_service.key, backoff_s=0) for _ in jobs]
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> list[Any]:
        method, req = jobs[i]
        barrier.wait()
        return [normalise(outcome(clients[i], method, req)) for _ in range(4)]

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, range(len(jobs))))
    for client in clients:
        client.close()
    for i, runs in enumerate(results):
        for got in runs:
            assert got == solo[i], f"client {i} ({jobs[i][0]}) got a different result when run concurrently"


# ---------------------------------------------------------------------------------------- the limits table
def _over_by_one() -> list[tuple[str, str, str, BaseModel, int]]:
    """For every limit of the table, a request over it by one and within every other limit:
    (method, limit, field, request, the value the refusal must name). The values are worked out
    here from the default `Limits`, which both the in-process backend and the service run with."""
    lim = Limits()
    ref = FeatureRef(model="demo", sae_set="res", layer=0, index=5)
    target = FeatureTarget(layer=1, index=3, steer_all_prompt_positions=True)
    chars = "x" * (lim.max_text_chars + 1)

    def items(n: int, make: Callable[[int], Any]) -> list[Any]:
        return [make(i) for i in range(n)]

    steer = SteerRequest(model="demo", sae_set="res", prompt="The cat", n_tokens=2)
    sweep = SteerSweepRequest(model="demo", sae_set="res", prompt="The cat", n_tokens=2, feature=target)
    experiment = ExperimentRequest(model="demo", sae_set="res", layers=[1], corpus="texts", texts=["a b c"],
                                   feature_source="list", features=[ExperimentFeature(layer=1, index=3)],
                                   max_passages=1)
    graph = GraphRequest(prompt="1 2", model="demo", transcoder_set="demo", batch_size=8, max_feature_nodes=8,
                         max_n_logits=2)
    compare = CompareRequest(models=["demo"], sentences=["The cat sat."], domain_terms=["cat"], k=2,
                             top_guesses=2)
    analyze = AnalyzeRequest(model="demo", sae_set="res", text="The cat", k=2)
    search = SearchRequest(model="demo", sae_set="res", text="The cat", k=2)

    def with_(req: BaseModel, **update: Any) -> BaseModel:
        return type(req).model_validate({**req.model_dump(), **update})

    n_terms = lim.max_compare_terms + 1
    return [
        ("analyze", "max_k", "k", with_(analyze, k=lim.max_k + 1), lim.max_k + 1),
        ("analyze", "max_tracked_features", "track",
         with_(analyze, track=items(lim.max_tracked_features + 1, lambda i: {"layer": 1, "index": i})),
         lim.max_tracked_features + 1),
        ("analyze", "max_text_chars", "text", with_(analyze, text=chars), len(chars)),
        ("search", "max_k", "k", with_(search, k=lim.max_k + 1), lim.max_k + 1),
        ("search", "max_text_chars", "text", with_(search, text=chars), len(chars)),
        ("search", "max_text_chars", "query", with_(search, mode="explanation", text=None, query=chars), len(chars)),
        ("feature", "max_examples", "n_examples",
         FeatureRequest(feature=ref, n_examples=lim.max_examples + 1 - 5 * 3, n_quantiles=5, examples_per_quantile=3),
         lim.max_examples + 1),
        ("feature", "max_quantiles", "n_quantiles",
         FeatureRequest(feature=ref, n_examples=0, n_quantiles=lim.max_quantiles + 1, examples_per_quantile=0),
         lim.max_quantiles + 1),
        ("feature", "max_context_tokens", "context_tokens",
         FeatureRequest(feature=ref, context_tokens=lim.max_context_tokens + 1), lim.max_context_tokens + 1),
        ("feature", "max_k", "n_logits", FeatureRequest(feature=ref, n_logits=lim.max_k + 1), lim.max_k + 1),
        ("save_explanation", "max_explanation_chars", "text",
         ExplanationEdit(feature=ref, text=" " + "y" * (lim.max_explanation_chars + 1) + " "),
         lim.max_explanation_chars + 1),
        ("steer", "max_text_chars", "prompt", with_(steer, prompt=chars), len(chars)),
        ("steer", "max_new_tokens", "n_tokens", with_(steer, n_tokens=lim.max_new_tokens + 1), lim.max_new_tokens + 1),
        ("steer", "max_steer_features", "features",
         with_(steer, features=items(lim.max_steer_features + 1, lambda i: {"layer": 1, "index": i, "delta": 1.0,
                                                                  "steer_all_prompt_positions": True})),
         lim.max_steer_features + 1),
        ("steer", "max_k", "top_k", with_(steer, top_k=lim.max_k + 1), lim.max_k + 1),
        ("sweep", "max_text_chars", "prompt", with_(sweep, prompt=chars), len(chars)),
        ("sweep", "max_new_tokens", "n_tokens", with_(sweep, n_tokens=lim.max_new_tokens + 1), lim.max_new_tokens + 1),
        ("sweep", "max_sweep_alphas", "alphas",
         with_(sweep, alphas=[float(a) for a in range(lim.max_sweep_alphas + 1)]), lim.max_sweep_alphas + 1),
        ("experiment", "max_experiment_passages", "max_passages",
         with_(experiment, max_passages=lim.max_experiment_passages + 1), lim.max_experiment_passages + 1),
        ("experiment", "max_prompt_tokens", "max_len", with_(experiment, max_len=lim.max_prompt_tokens + 1),
         lim.max_prompt_tokens + 1),
        ("experiment", "max_text_chars", "texts",
         with_(experiment, texts=["z" * lim.max_text_chars] * 10 + ["z"]), 10 * lim.max_text_chars + 1),
        ("attribute", "max_text_chars", "prompt", with_(graph, prompt=chars), len(chars)),
        ("attribute", "max_feature_nodes", "max_feature_nodes",
         with_(graph, max_feature_nodes=lim.max_feature_nodes + 1), lim.max_feature_nodes + 1),
        ("attribute", "max_batch_size", "batch_size", with_(graph, batch_size=lim.max_batch_size + 1),
         lim.max_batch_size + 1),
        ("attribute", "max_graph_logits", "max_n_logits", with_(graph, max_n_logits=lim.max_graph_logits + 1),
         lim.max_graph_logits + 1),
        ("compare", "max_compare_models", "models",
         with_(compare, models=["demo"] + [f"m{i}" for i in range(lim.max_compare_models)]),
         lim.max_compare_models + 1),
        ("compare", "max_compare_sentences", "sentences",
         with_(compare, sentences=["The cat."] * (lim.max_compare_sentences + 1)), lim.max_compare_sentences + 1),
        ("compare", "max_compare_terms", "domain_terms",
         with_(compare, domain_terms=[f"t{i}" for i in range(n_terms)] + ["T0"]), n_terms),  # T0 = t0
        ("compare", "max_compare_term_chars", "domain_terms",
         with_(compare, domain_terms=["w" * (lim.max_compare_term_chars + 1)]), lim.max_compare_term_chars + 1),
        ("compare", "max_text_chars", "sentences",
         with_(compare, sentences=["s" * (lim.max_text_chars // 2), "s" * (lim.max_text_chars // 2 + 1)]),
         lim.max_text_chars + 1),
        ("compare", "max_k", "k", with_(compare, k=lim.max_k + 1), lim.max_k + 1),
        ("compare", "max_k", "top_guesses", with_(compare, top_guesses=lim.max_k + 1), lim.max_k + 1),
    ]


OVER = _over_by_one()


def test_every_limit_of_the_table_has_an_over_by_one_case():
    covered = {(type(req), limit, field) for _, limit, field, req, _ in OVER}
    table = {(kind, c.limit, c.field) for kind, checks in CHECKS.items() for c in checks}
    assert covered == table, "add an over-by-one case for each new entry of request_limits.CHECKS"


def test_info_publishes_the_whole_limits_table(backend):
    published = backend.info().limits
    assert set(published) == set(Limits.model_fields)
    assert all(published[name] == float(getattr(backend.limits, name)) for name in published)


@pytest.mark.parametrize(("method", "limit", "field", "req", "value"), OVER,
                         ids=[f"{m}-{f}-{lim}" for m, lim, f, _, _ in OVER])
def test_each_limit_refuses_alike_in_process_and_over_http(method, limit, field, req, value, backend, remote):
    local = outcome(backend, method, req)
    assert isinstance(local, LimitExceeded), f"{method} {field}: expected LimitExceeded, got {local!r}"
    bound = getattr(backend.limits, limit)
    assert local.details["value"] == value and value == local.details["limit"] + 1
    assert local.details["limit"] in (bound, 10 * bound)
    assert f"FEATURESCOPE_{limit.upper()}" in local.message
    assert normalise(outcome(remote, method, req)) == normalise(local)
    check_request(req, backend.limits.model_copy(update={limit: bound + 1}))  # one more passes the table


def test_the_schemas_carry_no_limit_of_their_own():
    """top_k follows FEATURESCOPE_MAX_K: a raised limit lets a larger request validate and pass."""
    req = SteerRequest(model="demo", prompt="x", top_k=500)
    check_request(req, Limits(max_k=500))
    with pytest.raises(LimitExceeded, match="top_k is 500; the limit is 499"):
        check_request(req, Limits(max_k=499))


@pytest.mark.parametrize(("method", "case"), ALL_CASES, ids=[f"{m}-{c.id}" for m, c in ALL_CASES])
def test_every_answer_validates_against_its_own_model(method: str, case: Case, remote_service):
    """The raw HTTP answer, not the client's parse of it: a result is the method's result model
    (no null where a float belongs), an error is the error body, and nothing is a 5xx but the
    documented ones."""
    import httpx

    from backend.schemas.service import ErrorBody

    m = protocol_methods()[method]
    body = None if case.request is None else case.request.model_dump(mode="json")
    response = httpx.request(m.http_method, remote_service.url + m.path, json=body, timeout=600,
                             headers={"X-Api-Key": remote_service.key})
    assert response.status_code < 500 or response.status_code in (501, 503, 507), response.text[:300]
    if response.status_code == 200:
        m.result.model_validate_json(response.content)
        assert case.expect is None, f"expected {case.expect}, got a result"
    else:
        ErrorBody.model_validate_json(response.content)
