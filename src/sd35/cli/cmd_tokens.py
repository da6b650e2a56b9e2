"""`sd35 tokens "PROMPT" [--json] [--tokenizers DIR]`: how a prompt is tokenized for CLIP-L, CLIP-G, T5.

Needs only the tokenizers (no torch, no model files). `--json` prints one object
{"clip_l": {"ids": [[...], ...], "count": N}, "clip_g": {...}, "t5xxl": {...}, "warnings": [...]}: `ids` are
the padded rows exactly as each encoder receives them, `count` the prompt's tokens without BOS/EOS/padding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sd35.text.prompt import EncoderTokens, PromptTokens, SpecialTokens, tokenize_prompt
from sd35.text.tokenizers import load_tokenizers

log = logging.getLogger(__name__)

ENCODER_KEYS = (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5"))  # JSON key, PromptTokens field


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokens",
        help="show a prompt's token ids for CLIP-L, CLIP-G and T5-XXL",
        description="Tokenize a prompt as the text encoders receive it (ComfyUI prompt syntax: (text), "
        "(text:1.2), \\( \\) literal). Warns when the prompt has more than 256 T5 tokens.",
    )
    parser.add_argument("prompt", help='the prompt text; "-" reads it from standard input')
    parser.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    parser.add_argument(
        "--tokenizers",
        type=Path,
        metavar="DIR",
        help="diffusers-style folder with tokenizer/, tokenizer_2/, tokenizer_3/ (default: packaged vocabularies)",
    )
    parser.set_defaults(func=run)


def tokens_to_json(tokens: PromptTokens) -> dict:
    """The `--json` object (stable format: scripts rely on it)."""
    out: dict = {
        key: {"ids": getattr(tokens, field).ids, "count": getattr(tokens, field).count} for key, field in ENCODER_KEYS
    }
    out["warnings"] = list(tokens.warnings)
    return out


def _row_text(ids: tuple[int, ...], weights: tuple[float, ...], special: SpecialTokens) -> str:
    """Ids, with weights other than 1 shown as id*w, and the trailing padding summarised."""
    end = len(ids)
    while end > 0 and ids[end - 1] == special.pad and weights[end - 1] == 1.0:
        end -= 1
    if special.pad == special.end and end < len(ids):
        end += 1  # CLIP-L pads with its EOS: the first of the run is the row's EOS
    shown = " ".join(str(i) if w == 1.0 else f"{i}*{w:g}" for i, w in zip(ids[:end], weights[:end]))
    rest = len(ids) - end
    return shown + (f" + {rest} x {special.pad} (padding)" if rest else "")


def format_encoder(name: str, tokens: EncoderTokens) -> list[str]:
    rows = tokens.chunks
    length = len(rows[0].ids) if rows else 0
    lines = [f"{name}: {tokens.count} tokens, {len(rows)} row(s) of {length} ids (pad {tokens.special.pad})"]
    for i, row in enumerate(rows, 1):
        lines.append(f"  row {i}: {_row_text(row.ids, row.weights, tokens.special)}")
    return lines


def format_tokens(tokens: PromptTokens) -> str:
    lines: list[str] = []
    for key, field in ENCODER_KEYS:
        lines += format_encoder(key, getattr(tokens, field))
    lines += [f"warning: {w}" for w in tokens.warnings]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    tokens = tokenize_prompt(load_tokenizers(args.tokenizers), prompt)
    if args.json:
        print(json.dumps(tokens_to_json(tokens), ensure_ascii=False))
        for warning in tokens.warnings:
            log.warning("%s", warning)
    else:
        print(format_tokens(tokens))
    return 0
