"""The pages' default texts come from the installed pack and read as text: the highlighter gets the
pack's held-out documentation sentences, steering a showcase example that starts and ends at a word."""

from __future__ import annotations

import json
import re

from components import demo_defaults
from tests.conftest import REPO

PACK = REPO / "assets" / "demo"


def test_the_highlighter_default_is_the_packs_held_out_sentences():
    sentences = json.loads((PACK / "metrics.json").read_text())["readability"]["sentences"]
    assert demo_defaults.highlighter_text(PACK, "res", "fallback") == " ".join(sentences[:3])


def test_the_steering_prompt_is_a_showcase_example_cut_at_whole_words():
    showcase = json.loads((PACK / "metrics.json").read_text())["showcase"]
    texts = [ex["text"] for item in showcase for ex in item["examples"][:1]]
    prompt = demo_defaults.steering_prompt(PACK, "fallback")
    source = next(t for t in texts if re.sub(r"\[\[|\]\]", "", t).strip().startswith(prompt))
    plain = re.sub(r"\[\[|\]\]", "", source)
    assert source[0].isspace(), "the window starts at a word"
    after = plain.strip()[len(prompt):]
    assert after == "" or after[0].isspace(), "the prompt ends at a word"
    token_end = source.index("]]") - 2  # in the unmarked text
    assert token_end <= len(plain) - len(plain.lstrip()) + len(prompt), "the prompt reaches the activating token"


def test_without_a_pack_the_pages_keep_their_own_defaults(tmp_path):
    assert demo_defaults.highlighter_text(tmp_path, "res", "fallback") == "fallback"
    assert demo_defaults.steering_prompt(tmp_path, "prompt") == "prompt"
