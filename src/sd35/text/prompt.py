"""Prompt text → weighted segments → token chunks per encoder, as ComfyUI's SD3 text path builds them.

Matches `comfy/sd1_clip.py` (`token_weights`, `parse_parentheses`, `escape_important`,
`SDTokenizer.tokenize_with_weights`) and `comfy/text_encoders/sd3_clip.py` (`SD3Tokenizer`,
`T5XXLTokenizer`); see docs/prompts.md for the rules in words. No torch here.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sd35.errors import UserInputError
from sd35.text.tokenizers import SD3Tokenizers

CLIP_CHUNK_LENGTH = 77  # BOS + 75 tokens + EOS
T5_MIN_LENGTH = 77  # T5 is padded up to this, never cut or chunked
WORD_SPLIT_LENGTH = 8  # a token group this long may be split across CLIP chunks (ComfyUI max_word_length)
WEIGHT_STEP = 1.1  # "(text)" multiplies the weight by this per level
T5_ADVISED_MAX_TOKENS = 256  # SD3.5 model card: longer T5 prompts may give artifacts at the image edges
MAX_T5_TOKENS = 2048  # sd35's own limit for encoding (T5 attention memory grows with the square)
MAX_CLIP_CHUNKS = 32  # sd35's own limit for encoding: 32 × 75 CLIP tokens
EMBEDDING_PREFIX = "embedding:"

# ComfyUI escape_important: "\)" and "\(" are swapped for control-character pairs before parsing and
# swapped back after, so they stay literal parentheses (a prompt holding these pairs itself gets them
# turned into parentheses too, as in ComfyUI).
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))
_EMBEDDING_SPLIT = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class SpecialTokens:
    """An encoder's special ids: `start` (None for T5), `end`, `pad`."""

    start: int | None
    end: int
    pad: int

    def empty(self, length: int) -> tuple[int, ...]:
        """The "empty prompt" row used as the weighting baseline (ComfyUI `gen_empty_tokens`)."""
        head = [t for t in (self.start, self.end) if t is not None]
        return tuple(head + [self.pad] * (length - len(head)))


@dataclass(frozen=True)
class TokenChunk:
    """One row as the encoder receives it: ids and the per-token weight (1.0 for BOS/EOS/padding)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class EncoderTokens:
    """One encoder's input: `chunks` (77 ids each for CLIP; one ≥77 row for T5), `count` = the prompt's
    tokens without BOS/EOS/padding. `chunks` may be empty (CLIPTextEncodeSD3 with empty_padding "none")."""

    chunks: tuple[TokenChunk, ...]
    count: int
    special: SpecialTokens

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for chunk in self.chunks for w in chunk.weights)

    @property
    def ids(self) -> list[list[int]]:
        return [list(chunk.ids) for chunk in self.chunks]


@dataclass(frozen=True)
class PromptTokens:
    """Tokens of one prompt for the three SD3 encoders, plus warnings meant for the person (>256 T5)."""

    clip_l: EncoderTokens
    clip_g: EncoderTokens
    t5: EncoderTokens
    warnings: tuple[str, ...] = ()


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (segment, weight) pairs with ComfyUI's `token_weights(text, 1.0)` semantics.

    "(x)" multiplies the weight by 1.1 per level, "(x:1.3)" sets it (split at the last ":" inside, when
    what follows parses as a float), "\\(" "\\)" are literal, unbalanced parentheses stay text in the way
    ComfyUI's scanner leaves them (its nesting counter is the raw running count, which may go negative).
    Returns segments in order, unescaped. Runs in O(n log n) for any nesting (no recursion).
    Raises UserInputError for a non-finite weight ("(x:nan)", "(x:inf)", or ~7,500 nested levels).
    """
    for old, new in _ESCAPES:
        text = text.replace(old, new)
    spans = _weighted_spans(text)
    if any(not math.isfinite(w) for _, _, w in spans):
        raise UserInputError("prompt weight overflows: too many nested parentheses")
    return [(_unescape(text[a:b]), w) for a, b, w in spans]


def _unescape(text: str) -> str:
    for old, new in _ESCAPES:
        text = text.replace(new, old[1])
    return text


def _weighted_spans(s: str) -> list[tuple[int, int, float]]:
    """(start, end, weight) of every text segment of `s`, in order.

    ComfyUI scans a string with a nesting counter starting at 0: "(" at level 0 starts a new item, ")"
    bringing the level from 1 to 0 closes it; an item "(...)" is then re-scanned on its inside. With
    `level[i]` the raw running count before character i, the scan of s[a:b] uses level − level[a], so the
    item boundaries of any range are the "(" at level[a] and the ")" at level[a] + 1, looked up here by
    bisection instead of re-scanning.
    """
    opens: dict[int, list[int]] = {}  # level before "(" -> positions
    closes: dict[int, list[int]] = {}  # level after ")" -> positions
    level = [0] * (len(s) + 1)
    for i, ch in enumerate(s):
        if ch == "(":
            opens.setdefault(level[i], []).append(i)
            level[i + 1] = level[i] + 1
        elif ch == ")":
            level[i + 1] = level[i] - 1
            closes.setdefault(level[i + 1], []).append(i)
        else:
            level[i + 1] = level[i]
    out: list[tuple[int, int, float]] = []
    stack: list[tuple[int, int, float, bool]] = [(0, len(s), 1.0, False)]  # (a, b, weight, is_text)
    while stack:
        a, b, weight, is_text = stack.pop()
        if is_text:
            out.append((a, b, weight))
            continue
        tasks = []
        for start, end in _items(s, a, b, opens.get(level[a], []), closes.get(level[a], [])):
            if end - start >= 2 and s[start] == "(" and s[end - 1] == ")":
                inner_end, inner_weight = _item_weight(s, start + 1, end - 1, weight)
                tasks.append((start + 1, inner_end, inner_weight, False))
            else:
                tasks.append((start, end, weight, True))
        stack.extend(reversed(tasks))
    return out


def _items(s: str, a: int, b: int, opens: list[int], closes: list[int]) -> list[tuple[int, int]]:
    """ComfyUI `parse_parentheses` on s[a:b], as (start, end) spans, from the precomputed boundaries."""
    bounds = [(i, 0) for i in opens[bisect.bisect_left(opens, a) : bisect.bisect_left(opens, b)]]
    bounds += [(j + 1, 1) for j in closes[bisect.bisect_left(closes, a) : bisect.bisect_left(closes, b)]]
    bounds.sort()
    items, current = [], a
    for pos, _ in bounds:
        if pos > current:
            items.append((current, pos))
        current = pos
    if current < b:
        items.append((current, b))
    return items


def _item_weight(s: str, a: int, b: int, weight: float) -> tuple[int, float]:
    """Weight of the inside s[a:b] of "(...)", and where its text ends (before ":weight" if given)."""
    weight *= WEIGHT_STEP
    colon = s.rfind(":", a, b)
    if colon > a:
        try:
            value = float(s[colon + 1 : b])
        except ValueError:
            return b, weight
        if not math.isfinite(value):
            raise UserInputError(f"prompt weight {s[colon + 1 : b].strip()!r} is not a finite number")
        return colon, value
    return b, weight


def sanitize(text: str) -> str:
    """Replace lone UTF-16 surrogates (possible in JSON input) with U+FFFD; other text is kept as is."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def _segment_words(segment: str, dropped: list[str]) -> list[str]:
    """Split a segment before " embedding:"/"\\nembedding:" and drop `embedding:NAME` references.

    ComfyUI tokenizes each part on its own; a textual-inversion name it cannot load is dropped with a
    warning and the rest of that part is kept (`SDTokenizer._try_get_embedding`, including its quirk of
    keeping the tail of a name stripped of commas). sd35 loads no embeddings, so every name is dropped.
    """
    parts = _EMBEDDING_SPLIT.split(segment)
    words = [parts[0]] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    out = []
    for word in words:
        if word.startswith(EMBEDDING_PREFIX):
            fields = word[len(EMBEDDING_PREFIX) :].strip("\n").split()
            if not fields:
                continue
            name, rest = fields[0], " ".join(fields[1:])
            dropped.append(name)
            stripped = name.strip(",")
            word = f"{name[len(stripped) :]} {rest}" if len(stripped) < len(name) else rest
        if word:
            out.append(word)
    return out


def _clip_chunks(groups: Sequence[tuple[Sequence[int], float]], special: SpecialTokens) -> tuple[TokenChunk, ...]:
    """Pack token groups into 77-id rows (ComfyUI `tokenize_with_weights` batching).

    A group that does not fit in the current row closes it (EOS + padding) and starts a new one, unless it
    has ≥ 8 tokens: then it fills the row, which gets its EOS, and continues in the next.
    """
    assert special.start is not None
    rows: list[TokenChunk] = []
    ids, weights = [special.start], [1.0]
    room_limit = CLIP_CHUNK_LENGTH - 1  # one place kept for the EOS

    def close_row(pad: int) -> None:
        rows.append(TokenChunk(tuple(ids + [special.end] + [special.pad] * pad), tuple(weights + [1.0] * (pad + 1))))
        ids[:], weights[:] = [special.start], [1.0]

    for group, weight in groups:
        pending = list(group)
        large = len(pending) >= WORD_SPLIT_LENGTH
        while pending:
            if len(pending) + len(ids) <= room_limit:
                ids.extend(pending)
                weights.extend([weight] * len(pending))
                break
            room = room_limit - len(ids)
            if large:
                ids.extend(pending[:room])
                weights.extend([weight] * len(pending[:room]))
                pending = pending[room:]
                close_row(0)
            else:
                close_row(room)
    close_row(CLIP_CHUNK_LENGTH - len(ids) - 1)
    return tuple(rows)


def _t5_row(groups: Sequence[tuple[Sequence[int], float]], special: SpecialTokens) -> tuple[TokenChunk, ...]:
    """T5: all tokens, EOS, then padding up to 77; never cut (ComfyUI T5XXLTokenizer, min_length 77)."""
    ids = [t for group, _ in groups for t in group]
    weights = [w for group, w in groups for _ in group]
    pad = max(0, T5_MIN_LENGTH - len(ids) - 1)
    return (TokenChunk(tuple(ids + [special.end] + [special.pad] * pad), tuple(weights + [1.0] * (pad + 1))),)


def _specials(tokenizers: SD3Tokenizers) -> tuple[SpecialTokens, SpecialTokens, SpecialTokens]:
    l_bos, l_eos = tokenizers.clip_bos_eos("l")
    g_bos, g_eos = tokenizers.clip_bos_eos("g")
    t5_eos, t5_pad = tokenizers.t5_eos_pad()
    # CLIP-L pads with its EOS; CLIP-G (SDXLClipGTokenizer, pad_with_end=False) pads with 0.
    return SpecialTokens(l_bos, l_eos, l_eos), SpecialTokens(g_bos, g_eos, 0), SpecialTokens(None, t5_eos, t5_pad)


def tokenize_prompt(tokenizers: SD3Tokenizers, text: str) -> PromptTokens:
    """Tokenize one prompt for CLIP-L, CLIP-G and T5 (ComfyUI `SD3Tokenizer.tokenize_with_weights`).

    Each weighted segment (and each part split off at "embedding:") is tokenized on its own, without
    BOS/EOS, and keeps its weight on every token. CLIP rows: BOS + ≤75 tokens + EOS + padding to 77
    (L pads with 49407, G with 0), as many rows as needed. T5: one row, tokens + EOS, padded to ≥ 77.
    """
    clip_l, clip_g, t5, dropped = _tokenize(tokenizers, text)
    return PromptTokens(clip_l, clip_g, t5, _warnings(clip_l, clip_g, t5, dropped))


def _tokenize(tokenizers: SD3Tokenizers, text: str) -> tuple[EncoderTokens, EncoderTokens, EncoderTokens, list[str]]:
    dropped: list[str] = []
    words: list[tuple[str, float]] = []
    for segment, weight in parse_prompt_weights(sanitize(text)):
        words.extend((word, weight) for word in _segment_words(segment, dropped))
    texts = [w for w, _ in words]
    weights = [w for _, w in words]
    l_ids = tokenizers.encode_clip("l", texts)
    g_ids = l_ids if tokenizers.clip_g is tokenizers.clip_l else tokenizers.encode_clip("g", texts)
    t5_ids = tokenizers.encode_t5(texts)
    l_special, g_special, t5_special = _specials(tokenizers)
    clip_l = EncoderTokens(_clip_chunks(list(zip(l_ids, weights)), l_special), sum(map(len, l_ids)), l_special)
    clip_g = EncoderTokens(_clip_chunks(list(zip(g_ids, weights)), g_special), sum(map(len, g_ids)), g_special)
    t5 = EncoderTokens(_t5_row(list(zip(t5_ids, weights)), t5_special), sum(map(len, t5_ids)), t5_special)
    return clip_l, clip_g, t5, dropped


def _warnings(clip_l: EncoderTokens, clip_g: EncoderTokens, t5: EncoderTokens, dropped: list[str]) -> tuple[str, ...]:
    out = []
    if t5.count > T5_ADVISED_MAX_TOKENS:
        out.append(
            f"prompt has {t5.count} T5 tokens, more than the {T5_ADVISED_MAX_TOKENS} SD3.5 was trained with; "
            "the model card warns of artifacts at the image edges: shorten the prompt"
        )
    chunks = max(len(clip_l.chunks), len(clip_g.chunks))
    if t5.count > MAX_T5_TOKENS or chunks > MAX_CLIP_CHUNKS:
        out.append(
            f"prompt is too long to encode ({t5.count} T5 tokens, {chunks} CLIP chunks; sd35 encodes at most "
            f"{MAX_T5_TOKENS} T5 tokens and {MAX_CLIP_CHUNKS} CLIP chunks of 75)"
        )
    for name in dict.fromkeys(dropped):
        out.append(f"embedding:{name} ignored: sd35 does not load textual-inversion embeddings")
    return tuple(out)


def tokenize_sd3(
    tokenizers: SD3Tokenizers,
    clip_l: str,
    clip_g: str,
    t5xxl: str,
    empty_padding: Literal["none", "empty_prompt"] = "none",
) -> PromptTokens:
    """One text per encoder, as ComfyUI's CLIPTextEncodeSD3 node (`comfy_extras/nodes_sd3.py`) does it.

    With empty_padding "none" an empty field gives no rows at all (which changes the context length);
    "empty_prompt" tokenizes it as "". If CLIP-L and CLIP-G end with different row counts, the shorter
    gets empty-prompt rows appended.
    """
    if empty_padding not in ("none", "empty_prompt"):
        raise UserInputError(f"empty_padding must be 'none' or 'empty_prompt', not {empty_padding!r}")
    no_padding = empty_padding == "none"
    _, g_tok, _, g_dropped = _tokenize(tokenizers, clip_g)
    l_tok, _, _, l_dropped = _tokenize(tokenizers, clip_l)
    _, _, t5_tok, t5_dropped = _tokenize(tokenizers, t5xxl)
    if no_padding and not clip_l:
        l_tok = EncoderTokens((), 0, l_tok.special)
    if no_padding and not clip_g:
        g_tok = EncoderTokens((), 0, g_tok.special)
    if no_padding and not t5xxl:
        t5_tok = EncoderTokens((), 0, t5_tok.special)
    if len(l_tok.chunks) != len(g_tok.chunks):
        empty_l, empty_g, _, _ = _tokenize(tokenizers, "")
        n = max(len(l_tok.chunks), len(g_tok.chunks))
        l_tok = _padded_rows(l_tok, empty_l.chunks[0], n)
        g_tok = _padded_rows(g_tok, empty_g.chunks[0], n)
    return PromptTokens(l_tok, g_tok, t5_tok, _warnings(l_tok, g_tok, t5_tok, g_dropped + l_dropped + t5_dropped))


def _padded_rows(tokens: EncoderTokens, empty_row: TokenChunk, n: int) -> EncoderTokens:
    rows = tokens.chunks + (empty_row,) * (n - len(tokens.chunks))
    return EncoderTokens(rows, tokens.count, tokens.special)
