"""Steering against independent computations: the residual change a hook makes, the two runs'
logits recomputed with hand-written hooks, and metrics worked out from those logits."""

from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from backend.errors import InvalidRequest, LimitExceeded, NotFound
from backend.local.interventions import Edit, SteeringHooks
from backend.schemas import AnalyzeRequest, SteerRequest, SteerSweepRequest

TEXT = "The reactor reached full power at noon, and the operators logged every reading."
SEED_BODY = {  # the graph server's /steer example, verbatim
    "model_id": "google/gemma-2-2b",
    "prompt": "Fait: Michael Jordan joue au",
    "features": [
        {"layer": 20, "index": 1454, "token_active_position": 6, "steer_position": 6, "ablate": True},
        {"layer": 20, "index": 341, "token_active_position": 7, "steer_position": 7, "delta": 350},
        {"layer": 20, "index": 341, "token_active_position": 7, "steer_generated_tokens": True, "delta": 350},
    ],
    "n_tokens": 10,
    "top_k": 3,
    "temperature": 0,
    "freq_penalty": 0,
    "freeze_attention": False,
}


@pytest.fixture(scope="module")
def demo(backend):
    """(loaded demo model, its res SAEs and demo transcoders at layer 0)."""
    loaded = backend.load("demo")
    entry = backend.model_entry("demo")
    (sae,) = backend.models.dictionaries(loaded, entry.sae_set("res"), [0])
    (tc,) = backend.models.transcoders(loaded, entry.transcoder_set("demo"), [0])
    return loaded, sae, tc


def run_capturing(model, tokens, hooks, names):
    """One forward with `hooks` first, then capture hooks on `names` (which see edited values)."""
    seen = {}

    def keep(act, hook):
        seen[hook.name] = act.detach().clone()

    with torch.inference_mode(), model.hooks(fwd_hooks=list(hooks) + [(n, keep) for n in names]):
        logits = model(tokens)
    return seen, logits


def active_feature(z: torch.Tensor, positions: list[int]) -> int:
    """The feature with the largest activation summed over `positions` (so the test means something)."""
    return int(z[positions].sum(0).argmax())


@pytest.mark.parametrize(
    "operation,amount,target",
    [("ablate", None, None), ("delta", 3.0, None), ("alpha", 2.5, None), ("set_value", None, 4.0)],
)
def test_sae_edit_changes_residual_by_the_decoder_row_at_steered_positions_only(
    demo, backend, operation, amount, target
):
    loaded, d, _ = demo
    with loaded.use(30) as model:
        tokens = model.to_tokens(TEXT)
        n = tokens.shape[1]
        clean, _ = run_capturing(model, tokens, [], ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
        with torch.inference_mode():
            z = d.sae.encode(clean["blocks.0.hook_resid_post"])[0]  # SAELens' own encode
        steered_at = [3, 7, n - 2]
        f = active_feature(z, steered_at)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[steered_at] = True
        edit = Edit(d, f, operation, amount=amount, prompt_mask=mask, target=target)
        hooks = SteeringHooks([edit]).prompt_hooks()
        seen, _ = run_capturing(
            model, tokens, hooks, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        )
    a = z[:, f]
    new = {
        "ablate": torch.zeros_like(a),
        "delta": a + 3.0,
        "alpha": a * 2.5,
        "set_value": torch.full_like(a, 4.0),
    }
    expected = torch.zeros_like(clean["blocks.0.hook_resid_post"][0])
    expected[steered_at] = (new[operation] - a)[steered_at, None] * d.sae.W_dec[f]
    diff = (seen["blocks.0.hook_resid_post"] - clean["blocks.0.hook_resid_post"])[0]
    assert a[steered_at].abs().sum() > 0, "the chosen feature is active where it is steered"
    torch.testing.assert_close(diff, expected, atol=2e-6, rtol=0)
    untouched = [p for p in range(n) if p not in steered_at]
    assert torch.equal(
        seen["blocks.0.hook_resid_post"][0, untouched], clean["blocks.0.hook_resid_post"][0, untouched]
    )
    # Downstream, positions before the first steered one cannot see the change (causal attention).
    first = min(steered_at)
    assert torch.equal(
        seen["blocks.1.hook_resid_post"][0, :first], clean["blocks.1.hook_resid_post"][0, :first]
    )


def test_transcoder_edit_changes_mlp_out_by_its_decoder_row(demo):
    loaded, _, tc = demo
    with loaded.use(30) as model:
        tokens = model.to_tokens(TEXT)
        n = tokens.shape[1]
        clean, _ = run_capturing(model, tokens, [], ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"])
        with torch.inference_mode():
            z = tc.transcoder.encode(clean["blocks.0.hook_resid_mid"])[0]  # circuit-tracer's own encode
        steered_at = [2, 5]
        f = active_feature(z, steered_at)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[steered_at] = True
        hooks = SteeringHooks([Edit(tc, f, "ablate", prompt_mask=mask)]).prompt_hooks()
        assert [name for name, _ in hooks] == ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"]
        seen, _ = run_capturing(model, tokens, hooks, ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"])
    assert torch.equal(seen["blocks.0.hook_resid_mid"], clean["blocks.0.hook_resid_mid"]), (
        "reading changes nothing"
    )
    expected = torch.zeros_like(clean["blocks.0.hook_mlp_out"][0])
    expected[steered_at] = -z[steered_at, f, None] * tc.transcoder.W_dec[f]
    assert z[steered_at, f].abs().sum() > 0
    torch.testing.assert_close(
        (seen["blocks.0.hook_mlp_out"] - clean["blocks.0.hook_mlp_out"])[0], expected, atol=2e-6, rtol=0
    )


def test_no_interventions_give_the_default_run_exactly(backend):
    req = SteerRequest(
        model="demo", sae_set="res", prompt=TEXT, n_tokens=8, top_k=4, temperature=0.9, seed=11
    )
    r = backend.steer(req)
    assert r.steered_ids == r.default_ids and r.steered_generation == r.default_generation
    assert r.steered_logits_by_token == r.default_logits_by_token
    assert r.metrics.kl_divergence == 0.0 and r.metrics.delta_ce_loss == 0.0
    assert len(r.default_ids) == len(r.prompt_tokens) + 8
    # alpha = 1 on every position is a real hook that changes nothing, bit for bit.
    noop = backend.steer(
        SteerRequest.model_validate(
            {
                **req.model_dump(),
                "features": [
                    {
                        "layer": 1,
                        "index": 4,
                        "alpha": 1.0,
                        "steer_all_prompt_positions": True,
                        "steer_generated_tokens": True,
                    }
                ],
            }
        )
    )
    assert noop.steered_ids == r.default_ids and noop.steered_logits_by_token == r.default_logits_by_token
    assert noop.metrics.kl_divergence == 0.0
    assert backend.steer(req).default_ids == r.default_ids, "a seed reproduces the sampled run"


def most_active_feature(loaded, sae, hook_name: str) -> int:
    """The feature with the largest total activation on TEXT past BOS (so scaling it must matter,
    whichever demo pack is installed)."""
    with loaded.use(30) as model, torch.inference_mode():
        _, cache = model.run_with_cache(model.to_tokens(TEXT), names_filter=hook_name)
        z = sae.encode(cache[hook_name])[0, 1:]
    return int(z.sum(0).argmax())


def independent_logits(model, tokens, sae, layer, f, new_value, positions, frozen=None):
    """Steered logits with a hand-written hook: resid + (new - a) * W_dec[f] at `positions`."""
    hook_name = f"blocks.{layer}.hook_resid_post"

    def edit(act, hook):
        a = sae.encode(act)[..., f]
        change = torch.zeros_like(a)
        change[:, positions] = new_value(a)[:, positions] - a[:, positions]
        return act + change[..., None] * sae.W_dec[f]

    hooks = [(hook_name, edit)]
    if frozen is not None:
        hooks += [(name, lambda act, hook, p=p: p) for name, p in frozen.items()]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        return model(tokens)[0]


@pytest.mark.parametrize("freeze", [False, True])
def test_metrics_agree_with_an_independent_computation(backend, demo, freeze):
    loaded, _, _ = demo
    (sae,) = backend.models.dictionaries(loaded, backend.model_entry("demo").sae_set("res"), [0])
    f = most_active_feature(loaded, sae.sae, "blocks.0.hook_resid_post")
    feature = {"layer": 0, "index": f, "alpha": 6.0, "steer_all_prompt_positions": True}
    r = backend.steer(
        SteerRequest(
            model="demo",
            sae_set="res",
            prompt=TEXT,
            n_tokens=3,
            top_k=5,
            features=[feature],
            freeze_attention=freeze,
        )
    )
    with loaded.use(30) as model:
        tokens = model.to_tokens(TEXT)
        patterns = {}
        with (
            torch.inference_mode(),
            model.hooks(
                fwd_hooks=[
                    (
                        f"blocks.{i}.attn.hook_pattern",
                        lambda act, hook: patterns.__setitem__(hook.name, act.clone()),
                    )
                    for i in range(model.cfg.n_layers)
                ]
            ),
        ):
            default = model(tokens)[0]
        positions = list(range(1, tokens.shape[1]))  # every prompt position but BOS
        steered = independent_logits(
            model, tokens, sae.sae, 0, f, lambda a: a * 6.0, positions, frozen=patterns if freeze else None
        )
    assert r.interventions[0].prompt_positions == positions
    ce_d = F.cross_entropy(default[:-1], tokens[0, 1:])
    ce_s = F.cross_entropy(steered[:-1], tokens[0, 1:])
    p, q = default.softmax(-1), steered.softmax(-1)
    kl = (p * (p.log() - q.log())).sum(-1)
    assert kl.mean() > 1e-4, "the intervention must move the distribution for this test to mean anything"
    m = r.metrics
    assert m.ce_loss_default == pytest.approx(float(ce_d), abs=1e-4)
    assert m.ce_loss_steered == pytest.approx(float(ce_s), abs=1e-4)
    assert m.delta_ce_loss == pytest.approx(float(ce_s - ce_d), abs=1e-4)
    assert m.kl_divergence == pytest.approx(float(kl.mean()), abs=1e-4)
    assert m.kl_by_position == pytest.approx(kl.tolist(), abs=1e-4)
    # The top-k tables at prompt positions are the softmax of the same logits.
    top = torch.topk(q, 5, dim=-1)
    for pos in range(tokens.shape[1]):
        assert [pr for _, pr in r.steered_logits_by_token[pos][1]] == pytest.approx(
            top.values[pos].tolist(), abs=1e-5
        )
    # Logit deltas: mean change of the centred logits over the prompt.
    delta = ((steered - steered.mean(-1, keepdim=True)) - (default - default.mean(-1, keepdim=True))).mean(0)
    best = int(delta.argmax())
    assert r.metrics.top_logit_deltas[0][1] == pytest.approx(float(delta[best]), abs=1e-4)
    assert r.metrics.top_logit_deltas[-1][1] < 0


def test_seed_body_validates_and_runs_on_the_demo(backend):
    from backend.http.seed_routes import SeedSteerRequest

    def from_seed(body):  # the wire layer reads the seed's names (model_id) as ours
        return SteerRequest.model_validate(SeedSteerRequest.model_validate(body).model_dump())

    req = from_seed(SEED_BODY)
    assert req.model == "google/gemma-2-2b" and req.sae_set is None
    assert [f.operation for f in req.features] == ["ablate", "delta", "delta"]
    from backend.local.feature_sets import resolve_model, resolve_set

    entry = resolve_model(backend, req.model)
    assert entry.id == "gemma-2-2b"
    assert resolve_set(entry, None).kind == "transcoder", (
        "like the graph server, transcoder features by default"
    )

    body = {**SEED_BODY, "model_id": "demo", "prompt": "Fait: Michael Jordan joue au"}
    body["features"] = [{**f, "layer": 1, "index": f["index"] % 128} for f in body["features"]]
    r = backend.steer(from_seed(body))
    assert r.sae_set == "demo" and all(i.kind == "transcoder" for i in r.interventions)
    wire = json.loads(r.model_dump_json())
    table = wire["DEFAULT_LOGITS_BY_TOKEN"]
    assert len(table) == len(r.default_ids)
    assert [row[0] for row in table] == [t.text for t in r.prompt_tokens] + [row[0] for row in table][
        len(r.prompt_tokens) :
    ]
    assert all(len(row[1]) == 3 and isinstance(row[1][0][0], str) for row in table[: len(r.prompt_tokens)])
    assert wire["DEFAULT_GENERATION"].startswith("Fait: Michael Jordan joue au")
    tap = r.interventions[1]
    assert tap.target_value == pytest.approx(tap.clean_activations[7] + 350, abs=1e-4)
    assert r.interventions[2].generated_tokens and r.interventions[2].prompt_positions == []
    assert r.steered_generation != r.default_generation


def test_generated_tokens_only_leave_the_prompt_untouched(backend):
    r = backend.steer(
        SteerRequest(
            model="demo",
            sae_set="res",
            prompt=TEXT,
            n_tokens=6,
            features=[{"layer": 1, "index": 2, "delta": 80.0, "steer_generated_tokens": True}],
        )
    )
    assert r.metrics.kl_divergence == 0.0
    assert (
        r.steered_logits_by_token[: len(r.prompt_tokens)] == r.default_logits_by_token[: len(r.prompt_tokens)]
    )
    assert r.steered_ids[len(r.prompt_tokens) + 1 :] != r.default_ids[len(r.prompt_tokens) + 1 :]


def test_sweep_points_match_single_steers(backend):
    target = {"layer": 0, "index": 9, "steer_all_prompt_positions": True}
    s = backend.sweep(
        SteerSweepRequest(
            model="demo", sae_set="res", prompt=TEXT, n_tokens=4, feature=target, alphas=[0.0, 1.0, 3.0]
        )
    )
    assert [p.alpha for p in s.points] == [0.0, 1.0, 3.0]
    assert s.points[1].metrics.kl_divergence == 0.0 and s.points[1].steered_ids == s.default_ids
    for point, op in ((s.points[0], {"ablate": True}), (s.points[2], {"alpha": 3.0})):
        one = backend.steer(
            SteerRequest(model="demo", sae_set="res", prompt=TEXT, n_tokens=4, features=[{**target, **op}])
        )
        assert point.steered_ids == one.steered_ids
        assert point.metrics.delta_ce_loss == pytest.approx(one.metrics.delta_ce_loss, abs=1e-6)
        assert point.metrics.kl_divergence == pytest.approx(one.metrics.kl_divergence, abs=1e-6)


def test_steering_and_analysis_in_two_threads_get_their_solo_answers(backend):
    steer_req = SteerRequest(
        model="demo",
        sae_set="res",
        prompt=TEXT,
        n_tokens=6,
        temperature=0.8,
        seed=5,
        features=[
            {
                "layer": 0,
                "index": 9,
                "delta": 20.0,
                "steer_all_prompt_positions": True,
                "steer_generated_tokens": True,
            }
        ],
    )
    analyze_req = AnalyzeRequest(model="demo", sae_set="res", text=TEXT, k=5)
    solo_steer, solo_analyze = backend.steer(steer_req), backend.analyze(analyze_req)
    got: dict[str, list] = {"steer": [], "analyze": []}
    errors: list[BaseException] = []

    def run(name, fn, req):
        try:
            for _ in range(5):
                got[name].append(fn(req))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=("steer", backend.steer, steer_req)),
        threading.Thread(target=run, args=("analyze", backend.analyze, analyze_req)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [r.steered_ids for r in got["steer"]] == [solo_steer.steered_ids] * 5
    assert [r.metrics for r in got["steer"]] == [solo_steer.metrics] * 5
    assert [r.layers for r in got["analyze"]] == [solo_analyze.layers] * 5
    model = backend.load("demo").model
    assert all(not hp._forward_hooks for hp in model.hook_dict.values()), "no hook may outlive a call"


def test_limits_and_bad_positions_say_what_to_do(backend):
    lim = backend.limits
    with pytest.raises(LimitExceeded, match="n_tokens"):
        backend.steer(SteerRequest(model="demo", sae_set="res", prompt="hi", n_tokens=lim.max_new_tokens + 1))
    with pytest.raises(InvalidRequest, match="past the prompt"):
        backend.steer(
            SteerRequest(
                model="demo",
                sae_set="res",
                prompt="hi",
                features=[{"layer": 0, "index": 1, "ablate": True, "steer_position": 40}],
            )
        )
    with pytest.raises(InvalidRequest, match="out of range"):
        backend.steer(
            SteerRequest(
                model="demo",
                sae_set="res",
                prompt="hi",
                features=[{"layer": 0, "index": 10**6, "ablate": True, "steer_position": 1}],
            )
        )
    with pytest.raises(NotFound, match="res, demo"):
        backend.steer(SteerRequest(model="demo", sae_set="nope", prompt="hi"))
    with pytest.raises(ValueError, match="somewhere to steer"):
        SteerRequest(model="demo", prompt="hi", features=[{"layer": 0, "index": 1, "ablate": True}])
    with pytest.raises(ValueError, match="exactly one"):
        SteerRequest(model="demo", prompt="hi", features=[{"layer": 0, "index": 1, "steer_position": 1}])


@pytest.mark.parametrize("where", ["prompt", "step"])
def test_logits_that_overflow_inside_a_run_are_a_4xx_naming_what_to_lower(demo, where):
    """An edit can pass every input bound and still overflow (float16 models overflow past 65504):
    generation refuses non-finite logits with InvalidRequest instead of sampling NaN or answering
    null probabilities. Here a hook makes the residual infinite, in the prompt pass or in a step."""
    from backend.local.generation import generate

    loaded, _, _ = demo

    def overflow(act, hook):
        return act * float("inf")

    hooks = [("blocks.0.hook_resid_post", overflow)]
    with loaded.use(30) as model:
        tokens = model.to_tokens("The cat sat on the")
        kwargs = {"prompt_hooks": hooks} if where == "prompt" else {"step_hooks": hooks}
        for temperature in (0.0, 1.0):
            with pytest.raises(InvalidRequest, match="non-finite logits.*Lower the steering amounts"):
                generate(model, tokens, n_tokens=2, temperature=temperature, freq_penalty=0.0, seed=1, top_k=2,
                         **kwargs)
        assert not model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks, "no hook outlives the call"


def test_cost_metrics_of_an_overflowed_run_are_a_4xx_not_nan():
    """batch_sums serves the playground and the experiments: steered logits holding inf (an edit
    that overflowed) give InvalidRequest, never NaN metrics that would travel as null."""
    from backend.local.steer_metrics import batch_sums

    g = torch.Generator().manual_seed(0)
    default = torch.randn(2, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    valid = torch.ones(2, 5, dtype=torch.bool)
    sums, _ = batch_sums(default, default + 1.0, tokens, valid)  # a common shift: finite, KL 0
    assert abs(sums.kl) < 1e-5 and sums.ce_default == pytest.approx(sums.ce_steered, abs=1e-5)
    steered = default.clone()
    steered[1, 2, 3] = float("inf")
    with pytest.raises(InvalidRequest, match="non-finite logits"):
        batch_sums(default, steered, tokens, valid)


def test_cached_steered_generation_equals_a_loop_without_cache_token_for_token(demo):
    """`generate` (KV cache, step hooks on each one-token step) gives the tokens of a plain loop that
    reruns the whole sequence every step with the same edit applied at every position. The edit
    adds the SAE's decoder row of a feature, scaled, to the residual: on the prompt through
    `prompt_hooks`, on each generated token through `step_hooks`."""
    from backend.local.generation import generate

    loaded, sae, _ = demo
    direction = 8.0 * sae.w_dec[3].detach()

    def push(act, hook):
        return act + direction.to(act.dtype)

    hooks = [(sae.hook_name, push)]
    n_new = 12
    with loaded.use(30) as model:
        prompt = model.to_tokens("The reactor reached full power at noon, and the")
        cached = generate(model, prompt, n_tokens=n_new, temperature=0.0, freq_penalty=0.0, seed=0, top_k=3,
                          prompt_hooks=hooks, step_hooks=hooks, stop_at_eos=False)
        ids = prompt
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            for _ in range(n_new):
                nxt = model(ids)[0, -1].argmax().view(1, 1)
                ids = torch.cat([ids, nxt], dim=1)
        plain = generate(model, prompt, n_tokens=n_new, temperature=0.0, freq_penalty=0.0, seed=0, top_k=3,
                         stop_at_eos=False)
    assert cached.ids == ids[0].tolist()
    assert cached.ids != plain.ids, "the edit must change the continuation for the test to mean anything"
