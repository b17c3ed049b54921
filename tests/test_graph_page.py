"""The graph page under AppTest on the demo pack: generate, select a node, pin, group, save, reload."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from components.graph_display import display_graph
from backend.graphfile import read_graph_file
from backend.schemas import GraphRequest
from tests.conftest import REPO

PROMPT = "Seven silver swans swam south"
NODES = 120


def graph_page(**query: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    return at.switch_page("pages/graph.py").run()


def chart_nodes(at: AppTest) -> list[dict]:
    """The node traces the browser receives (the main chart is the first plotly chart)."""
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return [t for t in spec["data"] if t.get("name") == "nodes"]


def captions(at: AppTest) -> str:
    return "\n".join(c.proto.body for c in at.caption)


@pytest.fixture(scope="module")
def generated(hf_cache):
    at = graph_page()
    assert not at.exception, at.exception
    at.text_area(key="graph_prompt").input(PROMPT)
    at.number_input(key="graph_max_feature_nodes").set_value(NODES)
    at.button(key="FormSubmitter:graph_form-Estimate").click().run()
    assert not at.exception, at.exception
    estimated = {m.label: m.value for m in at.metric}
    at.button(key="FormSubmitter:graph_form-Generate").click().run()
    assert not at.exception, at.exception
    return at, estimated


def test_estimate_then_generate_shows_the_graph(generated, backend):
    at, estimated = generated
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(backend.pack().tokenizer_dir()))
    assert estimated["Tokens"] == str(len(tok(PROMPT, add_special_tokens=False).input_ids) + 1)
    doc = at.session_state["graph_doc"]
    want = backend.attribute(GraphRequest(prompt=PROMPT, model="demo", max_feature_nodes=NODES))
    assert want.cached, "the page's graph is in the shared disk cache"
    assert doc["links"] == want.graph["links"]
    (trace,) = chart_nodes(at)
    shown = display_graph(doc, doc["metadata"]["node_threshold"], 1.0)
    assert list(trace["customdata"]) == [n.id for n in shown.nodes]
    assert f"Showing {len(shown.nodes):,} of {len(doc['nodes']):,} nodes" in captions(at)
    assert at.query_params["prompt"] == PROMPT and at.query_params["transcoder_set"] == "demo"
    assert at.query_params["max_feature_nodes"] == str(NODES) and "batch_size" not in at.query_params


def test_a_shared_url_reproduces_the_graph_and_selection(generated):
    at, _ = generated
    doc = at.session_state["graph_doc"]
    node = next(n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    shared = graph_page(prompt=PROMPT, transcoder_set="demo", max_feature_nodes=str(NODES), node=node)
    assert not shared.exception, shared.exception
    assert shared.session_state["graph_doc"]["links"] == doc["links"]
    assert shared.session_state["graph_clicked"] == node
    assert shared.session_state["graph_result"].cached


def test_select_pin_group_save_and_reload(generated):
    at, _ = generated
    doc = at.session_state["graph_doc"]
    features = [n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    first, second = features[0], features[1]
    at.selectbox(key="graph_node_pick").select(first).run()
    assert not at.exception, at.exception
    assert at.session_state["graph_clicked"] == first and at.query_params["node"] == first
    assert f"id `{first}`" in captions(at)
    inputs = at.dataframe[0].value  # the selected node's input edges, then its outputs, then all nodes
    strongest = max((abs(e["weight"]) for e in doc["links"] if e["target"] == first), default=None)
    if strongest is not None:
        assert abs(inputs["weight"].iloc[0]) == pytest.approx(strongest, abs=1e-5)
    at.button(key="graph_pin_toggle").click().run()
    at.selectbox(key="graph_node_pick").select(second).run()
    at.button(key="graph_pin_toggle").click().run()
    assert at.session_state["graph_pinned"] == [first, second]
    at.multiselect(key="graph_group_members").set_value([first, second]).run()
    at.text_input(key="graph_group_label").input("two features").run()
    at.button(key="graph_group").click().run()
    assert not at.exception, at.exception
    assert at.session_state["graph_supernodes"] == [["two features", first, second]]
    assert "Supernode **two features**" in "\n".join(m.proto.body for m in at.markdown)
    at.button(key="graph_save").click().run()
    (saved,) = [s.proto.body for s in at.success]
    path = saved.removeprefix("Saved as ")
    q = read_graph_file(path)["qParams"]
    assert q["pinnedIds"] == [first, second] and q["supernodes"] == [["two features", first, second]]
    assert q["clickedId"] == second

    again = graph_page(graph=path.rsplit("/", 1)[-1])
    assert not again.exception, again.exception
    assert again.session_state["graph_pinned"] == [first, second]
    assert again.session_state["graph_supernodes"] == [["two features", first, second]]
    assert again.session_state["graph_clicked"] == second
    (trace,) = chart_nodes(again)
    assert first in trace["customdata"] and second in trace["customdata"]


def test_a_circuit_tracer_file_opens_by_path(generated, tmp_path, backend):
    """circuit-tracer's own create_graph_files output, opened from a path on the server."""
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.utils.create_graph_files import create_graph_files

    entry = backend.model_entry("demo")
    loaded = backend.graphs.replacement_model(entry, entry.transcoder_set("demo"))
    with loaded.use(60) as model:
        ids = torch.tensor([0, *model.tokenizer("Swans swim", add_special_tokens=False).input_ids])
        graph = attribute(ids, model, max_feature_nodes=60, batch_size=64)
    create_graph_files(graph, "swans", str(tmp_path))
    at, _ = generated
    at.text_input(key="graph_path").input(str(tmp_path / "swans.json")).run()
    at.button(key="graph_open_path").click().run()
    assert not at.exception, at.exception
    doc = read_graph_file(tmp_path / "swans.json")
    assert at.session_state["graph_doc"]["links"] == doc["links"]
    (trace,) = chart_nodes(at)
    assert len(trace["customdata"]) == len(display_graph(doc, 0.8, 1.0).nodes)


def test_over_limit_prompt_is_refused_on_the_page(hf_cache):
    at = graph_page()
    at.text_area(key="graph_prompt").input("many tokens " * 400)
    at.button(key="FormSubmitter:graph_form-Generate").click().run()
    assert not at.exception
    assert any("the limit is 256" in w.proto.body for w in at.warning)
    assert "graph_doc" not in at.session_state
