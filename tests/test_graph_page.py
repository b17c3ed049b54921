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
# A graph file whose slug is markdown with a URL and whose tokens and labels hold quotes: all text.
LITERAL_GRAPH = {
    "metadata": {"slug": "[click me](https://example.com) *bold*", "scan": "x",
                 "prompt_tokens": ["<bos>", " a", "'."], "prompt": "<bos> a'."},
    "nodes": [{"node_id": "E_1_1", "layer": "E", "ctx_idx": 1, "feature_type": "embedding"},
              {"node_id": "0_5_2", "layer": "0", "ctx_idx": 2, "feature_type": "cross layer transcoder",
               "influence": 0.1, "activation": 1.0, "clerp": 'says "hi"'},
              {"node_id": "3_9_2", "layer": "3", "ctx_idx": 2, "feature_type": "logit",
               "token_prob": 0.5, "clerp": 'Output "x" (p=0.500)'}],
    "links": [{"source": "E_1_1", "target": "0_5_2", "weight": 1.0},
              {"source": "0_5_2", "target": "3_9_2", "weight": 1.0}],
}
NODES = 120


def graph_page(**query: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    return at.switch_page("pages/graph.py").run()


def chart_nodes(at: AppTest) -> list[dict]:
    """The nodes the browser's canvas receives (the graph view is the page's one custom component),
    as one {"customdata": ids} record per view."""
    (view,) = at.get("component_instance")
    graph = json.loads(view.proto.json_args)["graph"]
    return [{"customdata": graph["ids"]}]


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
    at.button(key=f"graph_pin_{first}").click().run()
    at.selectbox(key="graph_node_pick").select(second).run()
    at.button(key=f"graph_pin_{second}").click().run()
    assert at.session_state["graph_pinned"] == [first, second]
    # the button is now another widget (unpin): a repeat of the pin click cannot unpin
    assert [b.label for b in at.button if b.key == f"graph_unpin_{second}"] == ["Unpin"]
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
    assert any("the limit is 256" in e.proto.body for e in at.error)  # a refusal is an error (issue 12)
    assert "graph_doc" not in at.session_state


@pytest.fixture(scope="module")
def shared(generated):
    """The generated graph opened by its shared URL in a fresh session (served from the cache)."""
    at = graph_page(prompt=PROMPT, transcoder_set="demo", max_feature_nodes=str(NODES))
    assert not at.exception, at.exception
    return at


def page_links(at: AppTest) -> dict[str, dict[str, str]]:
    from urllib.parse import parse_qsl

    return {el.proto.label: dict(parse_qsl(el.proto.query_string)) for el in at.get("page_link")}


def test_node_links_carry_the_graphs_prompt_set_feature_and_position(shared):
    """Issue 12 (3): 'Steer this feature' opens steering on the graph's own prompt (positions are the
    graph's), transcoder set, layer:index and position; the feature browser on the same dictionary."""
    at = shared
    doc = at.session_state["graph_doc"]
    node = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index, pos = (int(p) for p in node["node_id"].split("_"))
    at.selectbox(key="graph_node_pick").select(node["node_id"]).run()
    assert not at.exception, at.exception
    links = page_links(at)
    feature = f"{layer}:{index}"
    assert links["Open in feature browser"] == {"model": "demo", "sae_set": "demo", "feature": feature}
    steer = links["Steer this feature"]
    assert steer == {"model": "demo", "sae_set": "demo", "feature": feature, "position": str(pos),
                     "prompt": PROMPT}
    # the node's title is plain text, escaped by nobody but Streamlit
    titles = [t.value for t in at.text]
    assert any(f"feature {feature} @{pos} '" in t for t in titles)
    assert not any("&#x27;" in t or "&quot;" in t for t in titles)


def test_a_selected_feature_shows_its_corpus_examples(shared):
    at = shared
    htmls = [h.proto.body for h in at.get("html")]
    examples = [h for h in htmls if "fs-ex" in h]
    assert examples, "the selected feature's top activating examples are shown"
    assert 'class="tok max"' in examples[0], "with the activating token highlighted"
    assert any("Top activating examples" in m.proto.body for m in at.markdown)


def test_scores_are_shown_with_the_graph(shared):
    at = shared
    scores = at.session_state["graph_doc"]["metadata"]["scores"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Replacement score"] == f"{scores['replacement_score']:.3f}"
    assert shown["Completeness score"] == f"{scores['completeness_score']:.3f}"


def test_prompt_settings_and_view_survive_another_page(generated):
    """Issue 12 (7): the graph's prompt box, attribution settings, prune sliders and styling are the
    user's own after a trip to another page, next to the same graph (not the default prompt beside
    another prompt's graph)."""
    at = graph_page(prompt=PROMPT, transcoder_set="demo", max_feature_nodes=str(NODES))
    assert not at.exception, at.exception
    doc_id = at.session_state["graph_doc_id"]
    at.text_area(key="graph_prompt").input("A prompt typed and not yet run")
    at.number_input(key="graph_batch_size").set_value(64)
    at.slider(key="graph_nt").set_value(0.55)
    at.slider(key="graph_et").set_value(0.7)
    at.selectbox(key="graph_colour").select("type")
    at.button(key="FormSubmitter:graph_form-Estimate").click().run()
    assert not at.exception, at.exception
    shown = len(chart_nodes(at)[0]["customdata"])
    at.switch_page("pages/steer.py").run()
    assert not at.exception, at.exception
    at.switch_page("pages/graph.py").run()
    assert not at.exception, at.exception
    assert at.session_state["graph_doc_id"] == doc_id, "the same graph, not a regenerated one"
    assert at.text_area(key="graph_prompt").value == "A prompt typed and not yet run"
    assert at.number_input(key="graph_batch_size").value == 64
    assert at.slider(key="graph_nt").value == pytest.approx(0.55)
    assert at.slider(key="graph_et").value == pytest.approx(0.7)
    assert at.selectbox(key="graph_colour").value == "type"
    assert len(chart_nodes(at)[0]["customdata"]) == shown, "the view is pruned as the user left it"
    doc = at.session_state["graph_doc"]
    assert shown == len(display_graph(doc, 0.55, 0.7).nodes)


def test_a_long_slug_and_a_blank_prompt_get_a_message_and_the_page_keeps_working(hf_cache, tmp_path):
    """Issue 12 (4, 5): a 129+ character slug or a blank prompt is refused inline, nothing is sent, and
    the page (the 'Open a graph file' tab too) keeps working on every later rerun."""
    at = graph_page()
    at.text_input(key="graph_slug").input("s" * 300)
    at.button(key="FormSubmitter:graph_form-Generate").click().run()
    assert not at.exception, at.exception
    warned = "\n".join(w.proto.body for w in at.warning)
    assert "the limit is 128" in warned and "s" * 81 not in warned
    assert "graph_doc" not in at.session_state
    at.run()  # a plain rerun: the form is not rebuilt into a crash
    assert not at.exception, at.exception
    at.text_input(key="graph_slug").input("")
    at.text_area(key="graph_prompt").input("   \n ")
    at.button(key="FormSubmitter:graph_form-Generate").click().run()
    assert not at.exception, at.exception
    assert any("Type a prompt" in w.proto.body for w in at.warning)
    assert "graph_doc" not in at.session_state
    raw = LITERAL_GRAPH
    path = tmp_path / "link.json"
    path.write_text(json.dumps(raw))
    at.text_input(key="graph_path").input(str(path)).run()
    at.button(key="graph_open_path").click().run()
    assert not at.exception, at.exception
    assert at.session_state["graph_doc"]["metadata"]["slug"] == raw["metadata"]["slug"]
    heads = [m.proto.body for m in at.markdown if "click me" in m.proto.body]
    assert heads and all("](https" not in h and "\\[click me\\]" in h for h in heads), heads


def test_steering_from_the_subgraph_equals_the_steering_pages_answer(shared):
    """Ablating a pinned feature at its node's position from the graph page gives the numbers the
    steering page gives for the same edit, opened by the node's own link."""
    at = shared
    feature = at.session_state["graph_clicked"]  # selected by the tests above
    if feature not in at.session_state["graph_pinned"]:
        at.button(key=f"graph_pin_{feature}").click().run()
    assert feature in at.session_state["graph_pinned"]
    at.multiselect(key="graph_steer_pick").set_value([feature]).run()
    at.button(key="graph_steer_run").click().run()
    assert not at.exception, at.exception
    _, req, mine = at.session_state["graph_steer"]
    layer, index, pos = feature.split("_")
    assert [(f.layer, f.index, f.steer_positions, f.ablate) for f in req.features] == [
        (int(layer), int(index), [int(pos)], True)]
    assert req.prompt == PROMPT
    # steering reads the prompt as the graph did, so a node's position is the same token there
    assert [t.text for t in mine.prompt_tokens] == at.session_state["graph_doc"]["metadata"]["prompt_tokens"]
    steer = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    for k, v in {"model": "demo", "sae_set": "demo", "feature": f"{layer}:{index}", "position": pos,
                 "prompt": PROMPT}.items():
        steer.query_params[k] = v
    steer.run()
    steer = steer.switch_page("pages/steer.py").run()
    steer.button(key="st_run").click().run()
    assert not steer.exception, steer.exception
    theirs = steer.session_state["st_result"]
    assert theirs is not None
    assert [t.text for t in mine.prompt_tokens] == [t.text for t in theirs.prompt_tokens]
    assert mine.default_ids == theirs.default_ids and mine.steered_ids == theirs.steered_ids
    assert mine.metrics == theirs.metrics
    assert mine.steered_logits_by_token == theirs.steered_logits_by_token
    assert mine.metrics.kl_divergence > 0, "the ablation changes the next-token distribution"
    shown = "\n".join(m.proto.body for m in at.markdown)
    assert "**DEFAULT**" in shown and "**STEERED**" in shown
