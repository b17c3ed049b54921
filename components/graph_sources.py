"""Where graphs come from: the generate form (the graph server's parameters, an estimate first)
and opening a graph file (upload, a path on the server, or the library of saved graphs).

Opening a graph puts it in `st.session_state` under the `graph_*` keys the graph page reads, with
the view state saved in its qParams (pins, supernodes, selection; a `node` in the URL wins).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import streamlit as st
from pydantic import ValidationError

from backend.graphfile import library_dir, list_library, parse_graph, read_graph_file, view_state
from backend.schemas import GraphRequest, GraphResult, ModelInfo
from components import demo_defaults, state
from components.graph_panels import render_estimate
from components.page_state import DEFAULT_GRAPH_PROMPT as DEFAULT_PROMPT
from components.page_state import GraphState

S = st.session_state
URL_PROMPT_LIMIT = 1500  # longer prompts are not put in the URL


def open_graph(doc: dict[str, Any], *, origin: tuple[str, str] | None, result: GraphResult | None = None,
               name: str = "") -> None:
    """Show `doc` from now on, with the view state saved in its qParams (the URL's node wins)."""
    pinned, supernodes, clicked = view_state(doc)
    url_node = state.query_param("node")
    ids = {n["node_id"] for n in doc["nodes"]}
    S.update(graph_doc=doc, graph_origin=origin, graph_result=result, graph_name=name,
             graph_doc_id=uuid.uuid4().hex, graph_pinned=pinned, graph_supernodes=supernodes,
             graph_clicked=url_node if url_node in ids else clicked)
    S.pop("graph_node_pick", None)
    gs = GraphState.load()  # a new graph opens at its own thresholds
    gs.nt, gs.et = None, 1.0
    S.pop(gs.key("nt"), None)
    S.pop(gs.key("et"), None)


def origin_of(doc: dict[str, Any], models: list[ModelInfo]) -> tuple[str, str] | None:
    """(catalog model, transcoder set) a graph file came from, if this catalog has them."""
    gen = doc["metadata"].get("generation_settings") or {}
    if gen.get("model") and gen.get("transcoder_set"):
        return str(gen["model"]), str(gen["transcoder_set"])
    scan = str(doc["metadata"].get("scan") or "")
    if not scan:
        return None
    for m in models:
        for t in m.transcoder_sets:
            if scan in {t.id, t.circuit_tracer}:
                return m.id, t.id
    for m in models:  # Neuronpedia names the scan after its model id ('gemma-2-2b')
        if m.transcoder_sets and scan == m.neuronpedia_id:
            return m.id, m.transcoder_sets[0].id
    return None


def generate(req: GraphRequest, slot: Any) -> None:
    est = state.call(state.backend().attribute, req.model_copy(update={"estimate_only": True}))
    if est is None:
        return
    S["graph_estimate"] = est.estimate
    with slot.container():  # what it will cost, shown while it runs
        render_estimate(est.estimate)
    with state.progress("Building the attribution graph…") as progress:
        result = state.call(state.backend().attribute, req, progress=progress)
    if result is None or result.graph is None:
        return
    open_graph(result.graph, origin=(result.model, result.transcoder_set), result=result.model_copy(
        update={"graph": None}), name=result.slug)
    # the URL reproduces the graph: the prompt and every setting that is not the default
    changed = {name: (value if value != GraphRequest.model_fields[name].default else None)
               for name, value in req.model_dump(include=set(SETTINGS)).items()}
    state.set_query_params(prompt=req.prompt if len(req.prompt) <= URL_PROMPT_LIMIT else None,
                           transcoder_set=result.transcoder_set, graph=None, **changed)


# The graph server's numeric parameters: (min, max, step); defaults come from GraphRequest, and the
# upper bounds of the first three from the backend's published limits (`info().limits`).
SETTINGS: dict[str, tuple[float, float, float]] = {
    "max_feature_nodes": (1, 100_000, 1), "node_threshold": (0.01, 1.0, 0.01),
    "edge_threshold": (0.01, 1.0, 0.01), "batch_size": (1, 4096, 1),
    "max_n_logits": (1, 1000, 1), "desired_logit_prob": (0.01, 1.0, 0.01),
}
LIMIT_OF = {"max_feature_nodes": "max_feature_nodes", "batch_size": "max_batch_size",
            "max_n_logits": "max_graph_logits"}


def bounds(name: str) -> tuple[float, float, float]:
    low, high, step = SETTINGS[name]
    limit = getattr(state.limits(), LIMIT_OF.get(name, ""), None)
    return low, (min(high, limit) if limit else high), step


def request_or_message(prompt: str, slug: str, **fields: Any) -> GraphRequest | None:
    """The request, or None after an inline message saying what to change (never a validation dump,
    never more than a few characters of what was typed)."""
    if state.blank(prompt):  # empty, whitespace or only invisible characters
        st.warning("Type a prompt: the graph explains which features lead to the token after it.",
                   icon=":material/edit:")
        return None
    lim = state.limits()
    if len(prompt) > lim.max_text_chars:
        st.warning(f"The prompt has {len(prompt):,} characters; the limit is {lim.max_text_chars:,}. "
                   "Shorten it.", icon=":material/straighten:")
        return None
    if len(slug.strip()) > lim.max_graph_slug_chars:
        st.warning(f"The slug has {len(slug.strip()):,} characters; the limit is {lim.max_graph_slug_chars}. "
                   "Shorten it "
                   "(or leave it empty for a name made from the prompt).", icon=":material/straighten:")
        return None
    try:
        return GraphRequest(prompt=prompt, slug_identifier=slug.strip() or None, **fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the request"
        st.warning(f"{where}: {first['msg']}. Change it and try again.", icon=":material/edit:")
        return None


def number(col: Any, gs: GraphState, name: str, low: float, high: float, step: float) -> int | float:
    """A number input for one setting, starting from what the user set before (kept across pages),
    else the URL's value when it has one, else the graph server's default."""
    default = GraphRequest.model_fields[name].default
    kind = int if isinstance(default, int) else float
    default = min(default, kind(high))
    key = gs.key(name)
    if key not in S:
        try:
            start = gs.settings.get(name, state.query_param(name, str(default)))
            S[key] = min(max(kind(start), kind(low)), kind(high))
        except (TypeError, ValueError):
            S[key] = default
    value = kind(col.number_input(name, kind(low), kind(high), step=kind(step), key=key))
    gs.settings[name] = value
    return value


def render_generate_form(model: ModelInfo) -> None:
    if not model.transcoder_sets:
        cat = state.catalog()
        names = ", ".join(m.display_name for m in (cat.models if cat else []) if m.transcoder_sets)
        st.info(f"{model.display_name} has no transcoders for attribution graphs. Pick one of: {names}.")
        return
    sets = {t.id: t for t in model.transcoder_sets}
    gs = GraphState.load()
    if gs.prompt == DEFAULT_PROMPT and model.source == "demo":  # a prompt the demo model reads as its own
        gs.prompt = demo_defaults.steering_prompt(state.settings().demo_dir, DEFAULT_PROMPT)
        S.pop(gs.key("prompt"), None)
    tc_key = f"graph_tc::{model.id}"
    if tc_key not in S:
        wanted = state.query_param("transcoder_set")
        if wanted not in sets:
            wanted = gs.transcoder_sets.get(model.id)
        S[tc_key] = wanted if wanted in sets else next(iter(sets))
    with st.form("graph_form", border=False):
        prompt = gs.take("prompt", st.text_area(
            "Prompt", key=gs.bind("prompt"), height=80,
            help="The next token after this prompt is what the graph explains."))
        tc = st.selectbox("Transcoders", list(sets), key=tc_key, format_func=lambda s: sets[s].display_name)
        gs.transcoder_sets[model.id] = tc
        with st.expander("Attribution settings (the graph server's parameters)"):
            c = st.columns(4)
            cells = zip(c * 2, SETTINGS.items(), strict=False)  # two rows of the four columns
            values = {name: number(col, gs, name, *bounds(name)) for col, (name, _) in cells}
            offload = gs.take("offload", c[2].selectbox("offload", ["none", "cpu", "disk"],
                                                        key=gs.bind("offload")))
            slug = gs.take("slug", c[3].text_input("slug", key=gs.bind("slug"),
                                                   placeholder="default: from the prompt"))
        b1, b2, _ = st.columns([1, 1, 4])
        estimate = b1.form_submit_button("Estimate")
        run = b2.form_submit_button("Generate", type="primary")
    auto = "graph_doc" not in S and "graph_auto_done" not in S and state.query_param("prompt") is not None
    if auto:
        S["graph_auto_done"] = True
    req = None
    if estimate or run or auto:  # built only when asked for, so a bad field cannot break later reruns
        req = request_or_message(prompt or "", slug or "", model=model.id, transcoder_set=tc, **values,
                                 offload=None if offload == "none" else offload)
    # One fixed slot for the estimate, above the progress box: the estimate then keeps its place in
    # the page from run to run, and the browser never shows a stale copy of it beside the new one.
    slot = st.empty()
    if req is not None and estimate:
        result = state.call(state.backend().attribute, req.model_copy(update={"estimate_only": True}))
        if result is not None:
            S["graph_estimate"] = result.estimate
    if req is not None and (run or auto):
        generate(req, slot)
    if S.get("graph_estimate") is not None:
        with slot.container():
            render_estimate(S["graph_estimate"])


def render_open_form(models: list[ModelInfo]) -> None:
    folder = library_dir(state.settings().data_dir)
    c1, c2 = st.columns(2)
    upload = c1.file_uploader("Upload a graph (.json or .json.gz, from circuit-tracer or Neuronpedia)",
                              type=["json", "gz"], key="graph_upload")
    if upload is not None and S.get("graph_upload_seen") != upload.file_id:
        S["graph_upload_seen"] = upload.file_id
        _open(lambda: parse_graph(upload.getvalue(), name=upload.name), models, upload.name)
    path = c2.text_input("…or a path on the server", key="graph_path",
                         placeholder="/data/graphs/my-graph.json")
    if c2.button("Open path", key="graph_open_path", disabled=not path.strip()):
        _open(lambda: read_graph_file(path.strip()), models, path.strip())
    saved = list_library(folder)
    if saved:
        names = [p.name for p in saved]
        if "graph_library_pick" not in S and state.query_param("graph") in names:
            S["graph_library_pick"] = state.query_param("graph")
        pick = st.selectbox("Saved graphs", names, key="graph_library_pick")
        wanted = state.query_param("graph")
        if st.button("Open saved graph", key="graph_open_saved") or (
                wanted == pick and S.get("graph_name") != pick and "graph_url_opened" not in S):
            S["graph_url_opened"] = True
            if _open(lambda: read_graph_file(folder / pick), models, pick):
                state.set_query_params(graph=pick, prompt=None)
    else:
        st.caption(f"Graphs you save appear here ({folder}).")


def _open(load: Callable[[], dict[str, Any]], models: list[ModelInfo], name: str) -> bool:
    doc = state.call(load)
    if doc is None:
        return False
    open_graph(doc, origin=origin_of(doc, models), name=name)
    return True
