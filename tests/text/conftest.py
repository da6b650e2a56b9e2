"""Shared fixtures for the text tests: tokenizers, transformers' reference tokenizers, random prompts."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from sd35.text.tokenizers import load_tokenizers

DATA = Path(__file__).resolve().parents[2] / "src" / "sd35" / "text" / "data"

_WORD_TEXT = (
    "a photo of cat dog astronaut riding horse on the moon, highly detailed 8k photograph portrait "
    "woman man oil painting by greg rutkowski trending artstation cinematic lighting bokeh it's don't "
    "they're we've I'm you'll he'd red-haired sci-fi 3D 1024x1024 f/1.8 50mm hdr uhd masterpiece"
)
WORDS = _WORD_TEXT.split()
ODD = [
    "café",
    "naïve",
    "Ωmega",
    "Ελληνικά",
    "русский",
    "日本語の猫",
    "中文提示词",
    "한국어",
    "😀",
    "🐱‍👤",
    "👍🏽",
    "e\u0301",
    "ﬁ",
    "“quoted”",
    "‘single’",
    "&amp;",
    "&lt;b&gt;",
    "&#40;",
    "\u00a0",
    "\u3000",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "\x07",
    "\x1b[0m",
    "\u200b",
    "\ufeff",
    "\u202e",
    "<|endoftext|>",
    "<|startoftext|>",
    "</s>",
    "<pad>",
    "<extra_id_7>",
    "embedding:foo",
    "   ",
    "!!!",
    "...",
    "#tag",
    "@user",
    "100%",
    "$5",
    "½",
    "²",
    "Ⅻ",
    "İstanbul",
    "ß",
    "ﬀ",
    "Ａ",
    "…",
    "—",
    "~",
    "`",
    "|",
    "\\",
    "/",
    "_",
    "^",
    "[x]",
    "{y}",
]
SYNTAX = ["(", ")", "((", "))", "\\(", "\\)", ":", ":1.2", ":0.5", ":x", ":-1", " "]


def random_prompt(rng: random.Random, *, syntax: bool = True) -> str:
    """A random prompt mixing words, odd Unicode, control characters and (optionally) weight syntax."""
    parts = []
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        if r < 0.6:
            parts.append(rng.choice(WORDS))
        elif r < 0.8 or not syntax:
            parts.append(rng.choice(ODD))
        elif r < 0.9:
            parts.append(rng.choice(SYNTAX))
        else:
            inner = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
            parts.append(f"({inner}:{rng.choice(['1.3', '0.8', '2', 'x'])})" if rng.random() < 0.5 else f"({inner})")
        if rng.random() < 0.2:
            parts.append(chr(rng.randint(0x20, 0x2FFF)))
    sep = rng.choice([" ", " ", ", ", "", "  "])
    return sep.join(parts)


@pytest.fixture(scope="session")
def make_prompt():
    return random_prompt


@pytest.fixture(scope="session")
def tokenizers():
    """Packaged tokenizers without ftfy cleaning (the pipeline transformers' tokenizers have)."""
    return load_tokenizers(clean_text=False)


@pytest.fixture(scope="session")
def tokenizers_ftfy():
    pytest.importorskip("ftfy")
    return load_tokenizers(clean_text=True)


def _openai_vocab_files(tmp: Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt written from the gz the way openai/CLIP's SimpleTokenizer builds its encoder."""
    merges = gzip.decompress((DATA / "bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    vocab = byte_chars + [v + "</w>" for v in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return tmp / "vocab.json", tmp / "merges.txt"


@pytest.fixture(scope="session")
def openai_vocab_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip_vocab")
    _openai_vocab_files(folder)
    return folder


@pytest.fixture(scope="session")
def hf_clip(openai_vocab_dir):
    """transformers' CLIPTokenizer from vocab.json + merges.txt (5.x: vocab=/merges=, not *_file=)."""
    transformers = pytest.importorskip("transformers")
    vocab = json.loads((openai_vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    lines = (openai_vocab_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    return transformers.CLIPTokenizer(vocab=vocab, merges=[tuple(line.split()) for line in lines])


@pytest.fixture(scope="session")
def hf_t5():
    transformers = pytest.importorskip("transformers")
    return transformers.T5Tokenizer(tokenizer_file=str(DATA / "t5_tokenizer.json"))
