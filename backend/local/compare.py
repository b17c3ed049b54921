"""Several models read the same domain sentences: tokenization, surprisal, guesses, SAE features.

`compare_models` first checks the whole request (limits, models, SAE sets and layers, whether
each model fits the memory budget at all), then reads the models one after another. Each model is
loaded through the `ModelManager`, which unloads idle models as needed, so models that do not fit
in memory together can still be compared; models already loaded are read first, so nothing is
loaded twice. For each model, every sentence takes one forward pass: the logits give per-token
surprisal (bits) and the next-token guesses where a term starts; a hook on the chosen SAE layer
encodes the activations and tallies features on term tokens against the other tokens.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from backend.catalog import ModelEntry, SaeSetEntry
from backend.errors import InvalidRequest, LimitExceeded, NotFound
from backend.local import analysis, density, term_spans
from backend.local.models import LoadedModel
from backend.local.term_features import FeatureTally
from backend.protocol import Progress, no_progress
from backend.schemas import (
    CompareRequest,
    CompareResult,
    FeatureReading,
    ModelReading,
    NextTokenGuess,
    SentenceReading,
    TermOccurrence,
    TermSummary,
)

if TYPE_CHECKING:
    from backend.local.runtime import Runtime

LN2 = math.log(2.0)
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_AFTER_BLOCK = ("hook_resid_post", "hook_mlp_out", "mlp.hook_post", "mlp.hook_pre")


def hook_depth(hook_name: str, n_layers: int) -> float:
    """Where a hook reads the residual stream, from 0 (embeddings) to 1 (after the last block)."""
    m = _HOOK.match(hook_name)
    if not m or n_layers <= 0:
        return 0.0 if hook_name.startswith("hook_") else 1.0
    layer, point = int(m.group(1)), m.group(2)
    if point == "hook_resid_pre":
        depth = float(layer)
    elif point in _AFTER_BLOCK:
        depth = layer + 1.0
    else:  # resid_mid, attention outputs
        depth = layer + 0.5
    return depth / n_layers


@dataclass
class ModelPlan:
    entry: ModelEntry
    sae_set: SaeSetEntry | None
    layer: int | None
    depth: float | None
    features_note: str | None = None


def _clean_terms(terms: Sequence[str], match_case: bool) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for i, term in enumerate(terms):
        t = term.strip()
        if not t:
            raise InvalidRequest(f"Domain term {i + 1} is empty. Remove it or type a term.")
        key = t if match_case else t.casefold()
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def read_request(req: CompareRequest) -> tuple[list[str], list[str], list[str]]:
    """(models, sentences, terms) of the request, refused before any work if malformed (its limits
    were checked by the caller, request_limits)."""
    models = list(dict.fromkeys(m.strip() for m in req.models))
    terms = _clean_terms(req.domain_terms, req.match_case)
    for i, s in enumerate(req.sentences):
        if not s.strip():
            raise InvalidRequest(f"Sentence {i + 1} is empty. Remove it or type a sentence.")
    unknown = sorted((set(req.sae_sets) | set(req.sae_layers)) - set(models))
    if unknown:
        raise InvalidRequest(f"sae_sets / sae_layers name {unknown}, which are not among the models "
                             f"compared ({models}). Key them by the compared model ids.")
    return models, list(req.sentences), terms


def plan_model(backend: Runtime, model_id: str, req: CompareRequest) -> ModelPlan:
    """The catalog entry, SAE set and layer one model will be read with (refusing bad choices)."""
    entry = backend.model_entry(model_id)
    backend.models.refuse_if_too_big(entry, backend.dtype_for(entry))
    layer = req.sae_layers.get(model_id, req.sae_layer)
    if not req.include_features:
        return ModelPlan(entry, None, None, None, "Features were not requested.")
    if model_id in req.sae_sets:
        sae_set = entry.sae_set(req.sae_sets[model_id])
    elif entry.sae_sets:
        sae_set = next(iter(entry.sae_sets.values()))
    else:
        if model_id in req.sae_layers:
            raise InvalidRequest(f"{entry.display_name} has no SAE set in the catalog, so it has no SAE "
                                 "layer to read. Remove it from sae_layers.")
        return ModelPlan(entry, None, None, None, f"{entry.display_name} has no SAE set in the catalog.")
    layers = list(sae_set.layers or ())
    if not layers:
        return ModelPlan(entry, None, None, None, f"SAE set '{sae_set.id}' lists no layers.")
    n_layers = entry.n_layers or (max(layers) + 1)
    if layer is not None:
        if layer not in layers:
            raise NotFound(f"{entry.display_name}'s SAE set '{sae_set.id}' has no SAE at layer {layer}; its "
                           f"layers are {layers}. Pick one of them, or leave the layer empty to read the "
                           "same relative depth in every model.", layers=[layer])
    else:
        def distance(L: int) -> tuple[float, int]:
            return abs(hook_depth(sae_set.hook_for(L), n_layers) - req.relative_depth), L

        layer = min(layers, key=distance)
    return ModelPlan(entry, sae_set, layer, hook_depth(sae_set.hook_for(layer), n_layers))


def _within(progress: Progress, start: float, span: float, prefix: str) -> Progress:
    def report(fraction: float | None, message: str) -> None:
        progress(None if fraction is None else start + span * min(max(fraction, 0.0), 1.0), prefix + message)

    return report


def compare_models(backend: Runtime, req: CompareRequest,
                   progress: Progress | None = None) -> CompareResult:
    timer = analysis.Timer()
    progress = progress or no_progress
    models, sentences, terms = read_request(req)
    plans = [plan_model(backend, m, req) for m in models]
    resident = {m.entry.id for m in backend.models.resident()}
    order = sorted(range(len(plans)), key=lambda i: plans[i].entry.id not in resident)
    readings: dict[int, ModelReading] = {}
    notes: list[str] = []
    n = len(plans)
    for slot, i in enumerate(order):
        plan = plans[i]
        prefix = f"[{slot + 1}/{n}] {plan.entry.display_name}: "
        readings[i] = read_model(backend, plan, req, sentences, terms, notes,
                                 _within(progress, slot / n, 1 / n, prefix))
    progress(1.0, f"Compared {n} model(s) on {len(sentences)} sentence(s)")
    return CompareResult(models=[readings[i] for i in range(n)], sentences=sentences, domain_terms=terms,
                         notes=notes, elapsed_ms=timer.ms())


def _load(backend: Runtime, plan: ModelPlan, notes: list[str], progress: Progress) -> LoadedModel:
    entry = plan.entry
    before = {m.key: m.entry.display_name for m in backend.models.resident()}
    loaded = backend.models.get(entry, backend.dtype_for(entry), progress)
    now = {m.key for m in backend.models.resident()}
    for key, name in before.items():
        if key not in now:
            note = f"Unloaded {name} to make room for {entry.display_name}."
            notes.append(note)
            progress(None, note)
    if entry.id not in before:
        notes.append(f"Loaded {entry.display_name} ({loaded.dtype}, {loaded.device}).")
    return loaded


def read_model(backend: Runtime, plan: ModelPlan, req: CompareRequest, sentences: list[str],
               terms: list[str], notes: list[str], progress: Progress) -> ModelReading:
    timer = analysis.Timer()
    lim = backend.limits
    entry = plan.entry
    loaded = _load(backend, plan, notes, _within(progress, 0.0, 0.3, ""))
    dictionary = None
    if plan.sae_set is not None:
        (dictionary,) = backend.models.dictionaries(loaded, plan.sae_set, [plan.layer],
                                                    _within(progress, 0.3, 0.05, ""))
    with loaded.use(lim.lock_timeout_s) as model:
        prepend_bos = bool(model.cfg.default_prepend_bos)
        tokenized = []
        for i, text in enumerate(sentences):
            try:
                tokenized.append(analysis.tokenize(model, text, prepend_bos=prepend_bos, window=None,
                                                   max_tokens=lim.max_prompt_tokens))
            except LimitExceeded as exc:
                raise LimitExceeded(f"Sentence {i + 1} in {entry.display_name}'s tokens",
                                    exc.details["value"], exc.details["limit"], "Shorten it.") from None
        tok = model.tokenizer
        term_tokens = [term_spans.term_tokenization(tok, t) for t in terms]
        n_layers, d_vocab = int(model.cfg.n_layers), int(model.cfg.d_vocab)
    tally = FeatureTally(dictionary.d_sae, terms, loaded.device) if dictionary is not None else None
    readings = []
    for i, (text, tokens) in enumerate(zip(sentences, tokenized)):
        progress(0.35 + 0.65 * i / len(sentences), f"sentence {i + 1}/{len(sentences)}")
        with loaded.use(lim.lock_timeout_s) as model:
            readings.append(read_sentence(model, i, text, tokens, terms, req, dictionary, tally))
    progress(1.0, f"read {len(sentences)} sentence(s)")

    features = None
    note = plan.features_note
    if tally is not None and plan.sae_set is not None and plan.layer is not None:
        if not terms:
            note = "No domain terms were given, so no features on them."
        else:
            features = _feature_reading(backend, plan, tally, req, dictionary)
            if tally.n_term_tokens == 0:
                note = "None of the domain terms occurs in the sentences."
    summaries = [_summary(t, readings) for t in terms]
    term_bits = [s for r in readings for s, owner, tok in zip(r.surprisal_bits, r.term_of, r.tokens)
                 if owner is not None and s is not None and not tok.special]
    other_bits = [s for r in readings for s, owner, tok in zip(r.surprisal_bits, r.term_of, r.tokens)
                  if owner is None and s is not None and not tok.special]
    total_words = sum(t.n_words for t in term_tokens)
    return ModelReading(
        model=entry.id, display_name=entry.display_name, n_layers=n_layers, d_vocab=d_vocab,
        label=loaded.label,
        terms=term_tokens, term_summaries=summaries, sentences=readings,
        mean_tokens_per_term=_mean([t.n_tokens for t in term_tokens]),
        mean_tokens_per_word=(sum(t.n_tokens for t in term_tokens) / total_words) if total_words else None,
        mean_surprisal_terms=_mean(term_bits), mean_surprisal_other=_mean(other_bits),
        n_term_tokens=len(term_bits), n_other_tokens=len(other_bits),
        features=features, features_note=note, elapsed_ms=timer.ms(),
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _feature_reading(backend: Runtime, plan: ModelPlan, tally: FeatureTally, req: CompareRequest,
                     dictionary) -> FeatureReading:
    sae_set, layer = plan.sae_set, plan.layer
    explain = (backend.explanations.for_set(plan.entry.id, sae_set.id, [layer]).get(layer, {})
               if req.include_explanations else {})
    source = sae_set.neuronpedia_for(layer)
    rate = req.specific_max_other_rate
    dens = density.layers(backend, plan.entry.id, sae_set.id, [layer])[layer]
    feats = [f.model_copy(update={"density": density.at(dens, f.index)})
             for f in tally.top(req.k, rate, explain, source)]
    specific = [f.model_copy(update={"density": density.at(dens, f.index)})
                for f in tally.top(req.k, rate, explain, source, only_specific=True)]
    n_active, n_specific_all = tally.counts(rate)
    return FeatureReading(
        sae_set=sae_set.id, sae_set_name=sae_set.display_name, layer=layer, hook_name=dictionary.hook_name,
        relative_depth=round(plan.depth or 0.0, 4), d_sae=dictionary.d_sae, neuronpedia_id=source,
        n_term_tokens=tally.n_term_tokens, n_other_tokens=tally.n_other_tokens, n_active_on_terms=n_active,
        n_specific=sum(f.specific for f in feats), n_specific_all=n_specific_all,
        specific_max_other_rate=rate, features=feats, specific_features=specific,
    )


def _summary(term: str, readings: Sequence[SentenceReading]) -> TermSummary:
    occ = [o for r in readings for o in r.occurrences if o.term == term]
    if not occ:
        return TermSummary(term=term, present=False)
    bits = [o.bits for o in occ if o.bits is not None]
    per_tok = [o.bits_per_token for o in occ if o.bits_per_token is not None]
    return TermSummary(term=term, present=True, n_occurrences=len(occ),
                       sentences=sorted({o.sentence for o in occ}), mean_bits=_mean(bits),
                       mean_bits_per_token=_mean(per_tok),
                       mean_tokens_in_context=_mean([o.n_tokens for o in occ]))


def read_sentence(model, index: int, text: str, tokens: analysis.Tokenized, terms: list[str],
                  req: CompareRequest, dictionary, tally: FeatureTally | None) -> SentenceReading:
    """One forward pass over one sentence (call under the model's lock)."""
    tok = model.tokenizer
    ids = tokens.ids[0].tolist()
    spans = term_spans.align_offsets(tok, text, ids)
    special = [t.special for t in tokens.tokens]
    matches = term_spans.find_terms(text, terms, req.match_case)
    term_index = {t: j for j, t in enumerate(terms)}
    token_terms: list[list[int]] = [[] for _ in ids]
    covered = []
    for m in matches:
        positions = [p for p in term_spans.covering(spans, m.start, m.end) if not special[p]]
        covered.append(positions)
        for p in positions:
            if term_index[m.term] not in token_terms[p]:
                token_terms[p].append(term_index[m.term])

    captured: dict[str, torch.Tensor] = {}
    hooks = []
    if dictionary is not None:
        def hook(act: torch.Tensor, hook) -> None:
            captured["z"] = dictionary.encode(act)[0]

        hooks.append((dictionary.hook_name, hook))
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens.ids, return_type="logits")
    logp = logits[0].float().log_softmax(-1)  # [n_tokens, d_vocab]
    ids_t = tokens.ids[0]
    surprisal: list[float | None] = [None]
    predicted: list[str | None] = [None]
    if len(ids) > 1:
        surprisal += (-logp[:-1].gather(-1, ids_t[1:, None])[:, 0] / LN2).tolist()
        predicted += analysis.token_texts(tok, logp[:-1].argmax(-1).tolist())
    if tally is not None and "z" in captured:
        tally.add(captured["z"], token_terms, special)

    occurrences = []
    for m, positions in zip(matches, covered):
        if not positions:
            continue
        lead = term_spans.leading_whitespace(text, spans, positions[0])
        span_positions = lead + positions
        bits_parts = [surprisal[p] for p in span_positions]
        bits = sum(bits_parts) if all(b is not None for b in bits_parts) else None
        first = span_positions[0]
        guess: dict = {}
        if first > 0:
            row = logp[first - 1]
            top = torch.topk(row, min(req.top_guesses, row.shape[-1]))
            top_ids = top.indices.tolist()
            actual = ids[first]
            guess = {
                "guess_position": first,
                "guesses": [NextTokenGuess(id=i, token=s, prob=math.exp(v)) for i, s, v in
                            zip(top_ids, analysis.token_texts(tok, top_ids), top.values.tolist())],
                "actual": tokens.tokens[first].text,
                "actual_prob": math.exp(float(row[actual])),
                "actual_rank": int((row > row[actual]).sum()) + 1,
            }
        occ = TermOccurrence(
            term=m.term, sentence=index, start=m.start, end=m.end, positions=positions,
            pieces=[tokens.tokens[p].text for p in positions], n_tokens=len(positions),
            partial=term_spans.is_partial(text, spans, positions, m.start, m.end),
            bits=bits, bits_per_token=None if bits is None else bits / len(positions), **guess,
        )
        occurrences.append(occ)
    present = {o.term for o in occurrences}
    return SentenceReading(
        sentence=text, index=index, tokens=tokens.tokens, offsets=spans, surprisal_bits=surprisal,
        predicted=predicted,
        term_of=[terms[ts[0]] if ts else None for ts in token_terms],
        occurrences=occurrences, absent_terms=[t for t in terms if t not in present],
    )
