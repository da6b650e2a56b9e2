"""Prompt parsing and chunking against an independent transcription of ComfyUI's rules (comfy/sd1_clip.py)."""

from __future__ import annotations

import random
import re
import time

import pytest

from sd35.errors import UserInputError
from sd35.text.prompt import (
    T5_ADVISED_MAX_TOKENS,
    parse_prompt_weights,
    tokenize_prompt,
    tokenize_sd3,
)
from sd35.text.tokenizers import openai_clean

# ---- reference: ComfyUI's algorithm written out literally (recursive, string-copying) -----------------


def ref_parse_parentheses(s: str) -> list[str]:
    items, current, level = [], "", 0
    for ch in s:
        if ch == "(":
            if level == 0:
                if current:
                    items.append(current)
                current = "("
            else:
                current += ch
            level += 1
        elif ch == ")":
            level -= 1
            if level == 0:
                items.append(current + ")")
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        items.append(current)
    return items


def ref_token_weights(s: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for item in ref_parse_parentheses(s):
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            inner, w = item[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    w = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += ref_token_weights(inner, w)
        else:
            out.append((item, weight))
    return out


def ref_segments(text: str) -> list[tuple[str, float]]:
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    return [(s.replace("\0\1", ")").replace("\0\2", "("), w) for s, w in ref_token_weights(text, 1.0)]


def ref_words(text: str) -> list[tuple[str, float]]:
    """Segments split at " embedding:" with names dropped, as SDTokenizer does with no such embedding."""
    out = []
    for segment, weight in ref_segments(text):
        split = re.split(" embedding:|\nembedding:", segment)
        for word in [split[0]] + ["embedding:" + x for x in split[1:]]:
            if not word:
                continue
            if word.startswith("embedding:"):
                fields = word[len("embedding:") :].strip("\n").split()
                if not fields:
                    continue  # ComfyUI itself raises IndexError here
                name, leftover = fields[0], " ".join(fields[1:])
                stripped = name.strip(",")
                if len(stripped) < len(name):
                    leftover = f"{name[len(stripped) :]} {leftover}"
                if leftover == "":
                    continue
                word = leftover
            out.append((word, weight))
    return out


def ref_batches(groups, start, end, pad, max_length, min_length=None, pad_to_max=True):
    batches, batch = [], []
    if start is not None:
        batch.append((start, 1.0))
    batches.append(batch)
    for group in groups:
        large = len(group) >= 8
        while group:
            if len(group) + len(batch) > max_length - 1:
                remaining = max_length - len(batch) - 1
                if large:
                    batch.extend(group[:remaining])
                    batch.append((end, 1.0))
                    group = group[remaining:]
                else:
                    batch.append((end, 1.0))
                    if pad_to_max:
                        batch.extend([(pad, 1.0)] * remaining)
                batch = [] if start is None else [(start, 1.0)]
                batches.append(batch)
            else:
                batch.extend(group)
                group = []
    batch.append((end, 1.0))
    if pad_to_max:
        batch.extend([(pad, 1.0)] * (max_length - len(batch)))
    if min_length is not None and len(batch) < min_length:
        batch.extend([(pad, 1.0)] * (min_length - len(batch)))
    return batches


def ref_tokenize(text, hf_clip, hf_t5, clean=False):
    words = ref_words(text)
    clip_text = [openai_clean(w) if clean else w for w, _ in words]
    clip_ids = hf_clip(clip_text)["input_ids"] if words else []
    t5_ids = hf_t5([w for w, _ in words])["input_ids"] if words else []
    clip_groups = [[(t, w) for t in ids[1:-1]] for ids, (_, w) in zip(clip_ids, words)]
    t5_groups = [[(t, w) for t in ids[:-1]] for ids, (_, w) in zip(t5_ids, words)]
    return {
        "l": ref_batches(clip_groups, 49406, 49407, 49407, 77),
        "g": ref_batches(clip_groups, 49406, 49407, 0, 77),
        "t5": ref_batches(t5_groups, None, 1, 0, 99999999, min_length=77, pad_to_max=False),
    }


def rows(encoder_tokens):
    return [list(zip(c.ids, c.weights)) for c in encoder_tokens.chunks]


# ---- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("((x))", [("x", 1.1 * 1.1)]),
        ("(x:1.3)", [("x", 1.3)]),
        ("((x:1.3))", [("x", 1.3)]),  # sets, inside any nesting
        ("(x:y)", [("x:y", 1.1)]),  # not a float: the colon stays
        ("(a:b:0.5)", [("a:b", 0.5)]),  # split at the last colon
        ("(:0.5)", [(":0.5", 1.1)]),  # colon first: no split
        ("\\(lit\\) (w)", [("(lit) ", 1.0), ("w", 1.1)]),
        ("[x] {y}", [("[x] {y}", 1.0)]),  # square brackets are plain text in ComfyUI
        ("(a (b:0.5) c:2)", [("a ", 2.0), ("b", 0.5), (" c", 2.0)]),
        ("()", []),
        ("(a", [("(a", 1.0)]),  # unclosed: literal
        ("a)b (c)", [("a)b (c)", 1.0)]),  # a stray ")" makes later parentheses literal
        ("a)((b))", [("a)(", 1.0), ("b", 1.1), (")", 1.0)]),
        ("((a)", [("(a", 1.1)]),
        ("(x: 1.5 )", [("x", 1.5)]),
        ("(x:-1)", [("x", -1.0)]),
    ],
)
def test_parse_cases(text, expected) -> None:
    assert parse_prompt_weights(text) == expected
    assert ref_segments(text) == expected


def test_parse_matches_reference_on_random_strings() -> None:
    rng = random.Random(5)
    alphabet = ["(", ")", "(", ")", "\\(", "\\)", ":", "1.5", "0.7", "a", "b c", " ", "x:y", "\\"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert parse_prompt_weights(text) == ref_segments(text), text


def test_non_finite_weights_are_rejected() -> None:
    for text in ("(x:nan)", "(x:inf)", "(x:1e999)", "(" * 8000 + "x" + ")" * 8000):
        with pytest.raises(UserInputError, match="weight"):
            parse_prompt_weights(text)


def test_deep_nesting_is_fast() -> None:
    # ComfyUI's recursive scan hits Python's recursion limit here (and re-scans ~10^8 characters)
    text = "(" * 3000 + "x:1.2" + ")" * 3000 + " " + "((y)" * 5000
    t0 = time.perf_counter()
    segments = parse_prompt_weights(text)
    assert time.perf_counter() - t0 < 2.0
    assert segments[:2] == [("x", 1.2), (" ", 1.0)]
    small = "(" * 300 + "x:1.2" + ")" * 300 + " " + "((y)" * 200 + "z)"
    assert parse_prompt_weights(small) == ref_segments(small)


# ---- tokenization ---------------------------------------------------------------------------------------


def test_3000_random_prompts_match_comfyui_reference(tokenizers, hf_clip, hf_t5, make_prompt) -> None:
    rng = random.Random(99)
    mismatches = []
    multi = 0
    for _ in range(3000):
        text = make_prompt(rng) * rng.choice([1, 1, 1, 4])
        ours = tokenize_prompt(tokenizers, text)
        ref = ref_tokenize(text, hf_clip, hf_t5)
        multi += len(ours.clip_l.chunks) > 1
        if (rows(ours.clip_l), rows(ours.clip_g), rows(ours.t5)) != (ref["l"], ref["g"], ref["t5"]):
            mismatches.append(text)
    assert not mismatches, mismatches[:3]
    assert multi > 200  # long prompts (several CLIP chunks) were exercised


def test_random_prompts_with_ftfy_cleaning(tokenizers_ftfy, hf_clip, hf_t5, make_prompt) -> None:
    rng = random.Random(3)
    for _ in range(300):
        text = make_prompt(rng)
        ours = tokenize_prompt(tokenizers_ftfy, text)
        ref = ref_tokenize(text, hf_clip, hf_t5, clean=True)
        assert rows(ours.clip_l) == ref["l"], text


def test_short_prompt_layout(tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, "a photo of a cat")
    content = [320, 1125, 539, 320, 2368]
    assert tokens.clip_l.ids == [[49406, *content, 49407] + [49407] * 70]
    assert tokens.clip_g.ids == [[49406, *content, 49407] + [0] * 70]
    assert tokens.t5.ids == [[3, 9, 1202, 13, 3, 9, 1712, 1] + [0] * 69]
    assert (tokens.clip_l.count, tokens.clip_g.count, tokens.t5.count) == (5, 5, 7)
    assert not tokens.clip_l.weighted and tokens.warnings == ()


def test_empty_prompt_layout(tokenizers) -> None:
    tokens = tokenize_prompt(tokenizers, "")
    assert tokens.clip_l.ids == [[49406] + [49407] * 76]
    assert tokens.clip_g.ids == [[49406, 49407] + [0] * 75]
    assert tokens.t5.ids == [[1] + [0] * 76]
    assert (tokens.clip_l.count, tokens.t5.count) == (0, 0)


def test_long_prompts_chunking(tokenizers) -> None:
    sixty = tokenize_prompt(tokenizers, " ".join(f"word{i}" for i in range(60)))
    assert len(sixty.clip_l.chunks) == 3 == len(sixty.clip_g.chunks)  # one 170-token group, split at 75
    assert [c.ids.count(49406) for c in sixty.clip_l.chunks] == [1, 1, 1]
    assert all(len(c.ids) == 77 and c.ids[76] == 49407 for c in sixty.clip_l.chunks)  # full rows end in EOS
    cats = tokenize_prompt(tokenizers, " ".join(["a photo of a cat"] * 20))
    assert len(cats.clip_l.chunks) == 2 and cats.clip_l.count == 100
    assert len(cats.t5.chunks) == 1 and len(cats.t5.chunks[0].ids) == 141  # T5: never chunked, EOS, no pad
    assert cats.t5.chunks[0].ids[-1] == 1


def test_small_group_that_does_not_fit_starts_a_new_chunk(tokenizers) -> None:
    # 74 tokens, then a weighted 3-token group: it does not fit in the one place left, so row 1 is padded
    text = " ".join(["cat"] * 74) + " (a photo of:1.5)"
    tokens = tokenize_prompt(tokenizers, text)
    first, second = tokens.clip_l.chunks
    assert first.ids[:75] == (49406, *[2368] * 74) and first.ids[75:] == (49407, 49407)
    assert second.ids[:5] == (49406, 320, 1125, 539, 49407) and second.weights[1:4] == (1.5, 1.5, 1.5)
    assert tokens.clip_g.chunks[0].ids[75:] == (49407, 0)


def test_t5_warning_above_256_tokens(tokenizers) -> None:
    def t5_prompt(n):  # "cat" is one T5 token
        return " ".join(["cat"] * n)

    assert tokenize_prompt(tokenizers, t5_prompt(T5_ADVISED_MAX_TOKENS)).warnings == ()
    tokens = tokenize_prompt(tokenizers, t5_prompt(T5_ADVISED_MAX_TOKENS + 1))
    assert tokens.t5.count == 257 and len(tokens.t5.chunks[0].ids) == 258
    assert len(tokens.warnings) == 1 and "257 T5 tokens" in tokens.warnings[0]
    assert "shorten" in tokens.warnings[0]


def test_bad_input_is_handled(tokenizers) -> None:
    unbalanced = tokenize_prompt(tokenizers, "a ((cat) dog))) (( (x")
    assert unbalanced.clip_l.count > 0
    assert tokenize_prompt(tokenizers, "ctrl \x00\x01\x02\x1b[31m\x7f end").clip_l.count > 0
    assert tokenize_prompt(tokenizers, "日本語 Ελληνικά 😀 café").t5.count > 0
    surrogate = tokenize_prompt(tokenizers, "lone \ud800 surrogate")  # from JSON "\\ud800"
    assert surrogate == tokenize_prompt(tokenizers, "lone \ufffd surrogate")
    embed = tokenize_prompt(tokenizers, "a embedding:foo, cat embedding:")
    assert embed.clip_l.ids == tokenize_prompt(tokenizers, "a , cat").clip_l.ids
    assert any("embedding:foo," in w for w in embed.warnings)


def test_100kb_prompt(tokenizers) -> None:
    rng = random.Random(0)
    words = ["astronaut", "(riding:1.2)", "a", "horse,", "[moon]", "\\(detailed\\)", "日本", "((cat))"]
    text = " ".join(rng.choice(words) for _ in range(14000))[:100_000]
    t0 = time.perf_counter()
    tokens = tokenize_prompt(tokenizers, text)
    assert time.perf_counter() - t0 < 10.0
    assert len(tokens.clip_l.chunks) > 100 and tokens.t5.count > 20000
    assert any("too long to encode" in w for w in tokens.warnings)
    assert any("T5 tokens" in w for w in tokens.warnings)


def test_tokenize_sd3_empty_padding(tokenizers) -> None:
    none = tokenize_sd3(tokenizers, "", "a cat", "", empty_padding="none")
    assert len(none.clip_g.chunks) == 1 and len(none.clip_l.chunks) == 1  # L padded with an empty row
    assert none.clip_l.ids == tokenize_prompt(tokenizers, "").clip_l.ids
    assert none.t5.chunks == ()
    both = tokenize_sd3(tokenizers, "", "", "", empty_padding="none")
    assert both.clip_l.chunks == () == both.clip_g.chunks
    padded = tokenize_sd3(tokenizers, "", "", "", empty_padding="empty_prompt")
    assert padded == tokenize_prompt(tokenizers, "")
    long_l = tokenize_sd3(tokenizers, " ".join(["cat"] * 100), "dog", "fish", empty_padding="none")
    assert len(long_l.clip_l.chunks) == 2 == len(long_l.clip_g.chunks)
    assert long_l.clip_g.chunks[1] == tokenize_prompt(tokenizers, "").clip_g.chunks[0]
    assert long_l.t5.ids == tokenize_prompt(tokenizers, "fish").t5.ids
    with pytest.raises(UserInputError):
        tokenize_sd3(tokenizers, "", "", "", empty_padding="zeros")
