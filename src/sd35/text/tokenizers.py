"""CLIP BPE and T5 Unigram tokenizers (Hugging Face `tokenizers`), built from the packaged vocabularies.

The CLIP tokenizer is rebuilt from OpenAI's `bpe_simple_vocab_16e6.txt.gz` the way openai/CLIP's
`SimpleTokenizer` builds its encoder (256 byte symbols, the same with `</w>`, one token per merge, then
`<|startoftext|>` 49406 and `<|endoftext|>` 49407), with the normalizer / pre-tokenizer pipeline of
transformers' `CLIPTokenizer` (NFC, whitespace collapse, lowercase, CLIP's split regex, byte level).
With the optional `ftfy` package, text first goes through OpenAI's cleaning (`ftfy.fix_text`, HTML
unescape twice, whitespace collapse), as openai/CLIP `SimpleTokenizer.encode` does.
The T5 tokenizer is the packaged `t5_tokenizer.json` (google t5-v1_1 SentencePiece vocabulary).

A diffusers-style folder overrides them: `tokenizer/` (CLIP-L), `tokenizer_2/` (CLIP-G), `tokenizer_3/`
(T5), each holding `tokenizer.json`, or `vocab.json` + `merges.txt` (CLIP), or `spiece.model` (T5).
No torch here: `sd35 tokens` runs without it.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from sd35.errors import UserInputError

CLIP_BOS_TEXT = "<|startoftext|>"
CLIP_EOS_TEXT = "<|endoftext|>"
T5_EOS_TEXT = "</s>"
T5_PAD_TEXT = "<pad>"
T5_UNK_TEXT = "<unk>"
T5_EXTRA_IDS = 100  # sentinel tokens <extra_id_0..99>, appended after the SentencePiece pieces, reversed

# openai/CLIP SimpleTokenizer's word pattern (applied after lowercasing): special tokens, English
# contractions, letter runs, single digits, runs of other non-space characters.
CLIP_WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_MERGE_COUNT = 49152 - 256 - 2  # merges OpenAI keeps from the file (first line is a header)

_DATA_PACKAGE = "sd35.text"
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
T5_JSON_FILE = "t5_tokenizer.json"
OVERRIDE_FOLDERS = {"clip_l": "tokenizer", "clip_g": "tokenizer_2", "t5": "tokenizer_3"}


def ftfy_available() -> bool:
    """True when the optional `ftfy` package (extra `sd35[ftfy]`) is importable."""
    return importlib.util.find_spec("ftfy") is not None


def openai_clean(text: str) -> str:
    """OpenAI CLIP's text cleaning (openai/CLIP `simple_tokenizer.py` basic_clean + whitespace_clean).

    ftfy.fix_text, HTML-unescape twice, strip, collapse whitespace runs to one space, lowercase. Needs ftfy.
    """
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass(frozen=True, eq=False)
class SD3Tokenizers:
    """The three tokenizers SD3 uses. CLIP-L and CLIP-G normally share one CLIP BPE tokenizer object.

    `clean_clip_text`: run `openai_clean` on CLIP text before tokenizing (needs ftfy). `source` says where
    the vocabularies came from (for messages).
    """

    clip_l: Tokenizer
    clip_g: Tokenizer
    t5: Tokenizer
    clean_clip_text: bool = False
    source: str = "packaged"

    def encode_clip(self, which: str, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text for CLIP `which` ("l" or "g"), without BOS/EOS."""
        tokenizer = self.clip_l if which == "l" else self.clip_g
        if self.clean_clip_text:
            texts = [openai_clean(t) for t in texts]
        return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_t5(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text for T5, without the EOS."""
        return [e.ids for e in self.t5.encode_batch(list(texts), add_special_tokens=False)]

    def clip_bos_eos(self, which: str) -> tuple[int, int]:
        tokenizer = self.clip_l if which == "l" else self.clip_g
        return _token_id(tokenizer, CLIP_BOS_TEXT, self.source), _token_id(tokenizer, CLIP_EOS_TEXT, self.source)

    def t5_eos_pad(self) -> tuple[int, int]:
        return _token_id(self.t5, T5_EOS_TEXT, self.source), _token_id(self.t5, T5_PAD_TEXT, self.source)


def _token_id(tokenizer: Tokenizer, token: str, source: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise UserInputError(f"tokenizer from {source} has no {token} token")
    return token_id


def load_tokenizers(override_dir: Path | None = None, *, clean_text: bool | None = None) -> SD3Tokenizers:
    """The SD3 tokenizers: packaged vocabularies, or a diffusers-style folder (see the module docstring).

    `clean_text`: OpenAI's ftfy cleaning for CLIP; None = on when ftfy is installed. Results are cached per
    process (building the CLIP BPE takes ~0.5 s). A folder missing `tokenizer_2/` uses its `tokenizer/`
    for CLIP-G; a folder missing one of them entirely falls back to the packaged vocabulary.
    """
    clean = ftfy_available() if clean_text is None else clean_text
    if clean and not ftfy_available():
        raise UserInputError("CLIP text cleaning needs the ftfy package: pip install 'sd35[ftfy]'")
    key = None
    if override_dir is not None:
        folder = Path(override_dir).expanduser()
        if not folder.is_dir():
            raise UserInputError(f"tokenizer folder {folder} does not exist")
        key = str(folder.resolve())
    return _load_cached(key, clean)


@functools.lru_cache(maxsize=8)
def _load_cached(override: str | None, clean: bool) -> SD3Tokenizers:
    if override is None:
        clip = packaged_clip_tokenizer()
        return SD3Tokenizers(clip, clip, packaged_t5_tokenizer(), clean)
    folder = Path(override)
    found = {slot: folder / name for slot, name in OVERRIDE_FOLDERS.items() if (folder / name).is_dir()}
    if not found:
        names = ", ".join(f"{n}/" for n in OVERRIDE_FOLDERS.values())
        raise UserInputError(f"tokenizer folder {folder} holds none of {names}")
    clip_l = load_clip_folder(found["clip_l"]) if "clip_l" in found else None
    clip_g = load_clip_folder(found["clip_g"]) if "clip_g" in found else clip_l
    if clip_l is None:
        clip_l = packaged_clip_tokenizer()
    if clip_g is None:
        clip_g = clip_l
    t5 = load_t5_folder(found["t5"]) if "t5" in found else packaged_t5_tokenizer()
    return SD3Tokenizers(clip_l, clip_g, t5, clean, source=str(folder))


def _data_bytes(name: str) -> bytes:
    return (resources.files(_DATA_PACKAGE) / "data" / name).read_bytes()


@functools.lru_cache(maxsize=1)
def packaged_clip_tokenizer() -> Tokenizer:
    """CLIP BPE tokenizer built from the packaged `bpe_simple_vocab_16e6.txt.gz` (vocab 49,408)."""
    vocab, merges = clip_vocab_from_bpe(gzip.decompress(_data_bytes(CLIP_BPE_FILE)).decode("utf-8"))
    return build_clip_tokenizer(vocab, merges)


@functools.lru_cache(maxsize=1)
def packaged_t5_tokenizer() -> Tokenizer:
    """T5 v1.1 SentencePiece Unigram tokenizer from the packaged `t5_tokenizer.json` (32,100 pieces)."""
    return Tokenizer.from_str(_data_bytes(T5_JSON_FILE).decode("utf-8"))


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes 0..255, in the order OpenAI's vocabulary lists them.

    Printable Latin-1 bytes stand for themselves and come first (in byte order); the other bytes follow,
    mapped to U+0100 onwards (openai/CLIP `bytes_to_unicode`, whose dict order fixes token ids 0..255).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def clip_vocab_from_bpe(merges_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges from the text of `bpe_simple_vocab_16e6.txt` (openai/CLIP's construction)."""
    lines = merges_text.split("\n")[1 : CLIP_MERGE_COUNT + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != CLIP_MERGE_COUNT or any(len(m) != 2 for m in merges):
        raise UserInputError("CLIP BPE file is truncated or malformed")
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [CLIP_BOS_TEXT, CLIP_EOS_TEXT]
    return {tok: i for i, tok in enumerate(tokens)}, merges  # type: ignore[return-value]


def build_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A CLIP byte-level BPE `Tokenizer` with CLIP's normalization and word split, no post-processor."""
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        unk_token=CLIP_EOS_TEXT,
        fuse_unk=False,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(CLIP_BOS_TEXT, special=True), AddedToken(CLIP_EOS_TEXT, special=True)])
    return tokenizer


def load_clip_folder(folder: Path) -> Tokenizer:
    """CLIP tokenizer from `tokenizer.json`, else `vocab.json` + `merges.txt`, in `folder`."""
    if (folder / "tokenizer.json").is_file():
        return _from_json_file(folder / "tokenizer.json")
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    if not (vocab_path.is_file() and merges_path.is_file()):
        raise UserInputError(f"{folder}: expected tokenizer.json, or vocab.json and merges.txt")
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{folder}: cannot read the CLIP vocabulary: {exc}") from exc
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
        raise UserInputError(f"{folder}: vocab.json must be an object and merges.txt hold pairs")
    return build_clip_tokenizer(vocab, merges)  # type: ignore[arg-type]


def load_t5_folder(folder: Path) -> Tokenizer:
    """T5 tokenizer from `tokenizer.json`, else `spiece.model`, in `folder`."""
    if (folder / "tokenizer.json").is_file():
        return _from_json_file(folder / "tokenizer.json")
    if (folder / "spiece.model").is_file():
        return t5_tokenizer_from_spiece((folder / "spiece.model").read_bytes(), str(folder / "spiece.model"))
    raise UserInputError(f"{folder}: expected tokenizer.json or spiece.model")


def _from_json_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a plain Exception for any parse error
        raise UserInputError(f"{path}: not a tokenizers JSON file: {exc}") from exc


def t5_tokenizer_from_spiece(model_bytes: bytes, name: str = "spiece.model") -> Tokenizer:
    """Convert a SentencePiece Unigram model (T5 `spiece.model`) into a `Tokenizer`.

    The pipeline matches the packaged T5 JSON: the model's precompiled normalizer, strip right, collapse
    runs of spaces, Metaspace "▁" prepended to the first word; then <extra_id_99..0> appended (ids 32000+
    for T5) and <pad>, </s>, <unk> and the sentinels registered as special tokens. Needs the sentencepiece
    and protobuf packages (only for this path).
    """
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise UserInputError(
            f"{name}: reading spiece.model needs the sentencepiece and protobuf packages "
            "(or give a tokenizer.json instead)"
        ) from exc
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_bytes)
    except Exception as exc:  # protobuf DecodeError
        raise UserInputError(f"{name}: not a SentencePiece model: {exc}") from exc
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM or not proto.pieces:
        raise UserInputError(f"{name}: expected a SentencePiece Unigram model")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_EXTRA_IDS))]
    model = models.Unigram(pieces, unk_id=proto.trainer_spec.unk_id, byte_fallback=proto.trainer_spec.byte_fallback)
    tokenizer = Tokenizer(model)
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    tokenizer.normalizer = normalizers.Sequence(steps)
    prepend = "first" if proto.normalizer_spec.add_dummy_prefix else "never"
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend, split=True)
    specials = [T5_PAD_TEXT, T5_EOS_TEXT, T5_UNK_TEXT] + [f"<extra_id_{i}>" for i in range(T5_EXTRA_IDS)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer
