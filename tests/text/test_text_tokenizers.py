"""Tokenizers: packaged data and licences, golden ids, ftfy cleaning, parity with transformers, overrides."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest

from sd35.errors import UserInputError
from sd35.text import tokenizers as tk
from sd35.text.tokenizers import load_tokenizers, openai_clean

DATA = Path(__file__).resolve().parents[2] / "src" / "sd35" / "text" / "data"
SHA256 = {  # from ../shared/vocab/README.md
    "bpe_simple_vocab_16e6.txt.gz": "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
    "t5_tokenizer.json": "446c9d237282cf337802bd559f326c8ba59712e463f034585ab57d49193a2e68",
}


def test_package_data_and_licences_ship() -> None:
    for name, digest in SHA256.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest
    assert "MIT License" in (DATA / "LICENSE-CLIP-MIT.txt").read_text()
    assert "OpenAI" in (DATA / "LICENSE-CLIP-MIT.txt").read_text()
    assert "Apache License" in (DATA / "LICENSE-T5-Apache-2.0.txt").read_text()


def test_golden_ids(tokenizers) -> None:
    assert tokenizers.encode_clip("l", ["a photo of a cat"]) == [[320, 1125, 539, 320, 2368]]
    assert tokenizers.clip_bos_eos("l") == (49406, 49407) == tokenizers.clip_bos_eos("g")
    assert tokenizers.encode_t5(["a photo of a cat", "Hello world"]) == [[3, 9, 1202, 13, 3, 9, 1712], [8774, 296]]
    assert tokenizers.t5_eos_pad() == (1, 0)
    assert tokenizers.t5.token_to_id("<unk>") == 2
    assert tokenizers.t5.token_to_id("<extra_id_0>") == 32099
    assert tokenizers.clip_l.get_vocab_size() == 49408
    assert tokenizers.t5.get_vocab_size() == 32100


def test_load_is_cached_and_clip_shared(tokenizers) -> None:
    again = load_tokenizers(clean_text=False)
    assert again is tokenizers
    assert tokenizers.clip_l is tokenizers.clip_g


def test_ftfy_cleaning_matches_openai(tokenizers, tokenizers_ftfy) -> None:
    # curly quotes, a ligature, doubly escaped HTML, odd whitespace: OpenAI's basic_clean + whitespace_clean
    raw = "“Quoted”  ﬁsh &amp;amp; chips\u00a0\n’s"
    assert openai_clean(raw) == '"quoted" fish & chips \'s'
    cleaned = tokenizers_ftfy.encode_clip("l", [raw])
    assert cleaned == tokenizers.encode_clip("l", ['"quoted" fish & chips \'s'])
    assert cleaned != tokenizers.encode_clip("l", [raw])  # the plain pipeline differs, as the README says
    assert tokenizers_ftfy.encode_t5([raw]) == tokenizers.encode_t5([raw])  # T5 never uses it


def test_3000_random_prompts_match_transformers(tokenizers, tokenizers_ftfy, hf_clip, hf_t5, make_prompt) -> None:
    rng = random.Random(1234)
    prompts = [make_prompt(rng) for _ in range(3000)]
    ours_l = tokenizers.encode_clip("l", prompts)
    ours_clean = tokenizers_ftfy.encode_clip("l", prompts)
    ours_t5 = tokenizers.encode_t5(prompts)
    theirs_l = hf_clip(prompts)["input_ids"]
    theirs_clean = hf_clip([openai_clean(p) for p in prompts])["input_ids"]
    theirs_t5 = hf_t5(prompts)["input_ids"]
    bad = [p for p, a, b in zip(prompts, ours_l, theirs_l) if [49406, *a, 49407] != b]
    assert not bad, bad[:3]
    bad = [p for p, a, b in zip(prompts, ours_clean, theirs_clean) if [49406, *a, 49407] != b]
    assert not bad, bad[:3]
    bad = [p for p, a, b in zip(prompts, ours_t5, theirs_t5) if [*a, 1] != b]
    assert not bad, bad[:3]
    assert sum(map(len, ours_l)) > 30000 and sum(map(len, ours_t5)) > 30000  # the prompts are not trivial
    assert sum(a != b for a, b in zip(ours_l, ours_clean)) > 100  # and ftfy cleaning mattered on some


def test_override_vocab_merges_and_json(tmp_path, tokenizers, openai_vocab_dir, make_prompt) -> None:
    (tmp_path / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(openai_vocab_dir / name, tmp_path / "tokenizer" / name)
    (tmp_path / "tokenizer_3").mkdir()
    shutil.copy(DATA / "t5_tokenizer.json", tmp_path / "tokenizer_3" / "tokenizer.json")
    loaded = load_tokenizers(tmp_path, clean_text=False)
    assert loaded.clip_g is loaded.clip_l  # no tokenizer_2/: CLIP-G uses tokenizer/
    assert loaded.source == str(tmp_path.resolve())
    rng = random.Random(7)
    prompts = [make_prompt(rng) for _ in range(300)]
    assert loaded.encode_clip("g", prompts) == tokenizers.encode_clip("l", prompts)
    assert loaded.encode_t5(prompts) == tokenizers.encode_t5(prompts)

    json_dir = tmp_path / "json"
    (json_dir / "tokenizer_2").mkdir(parents=True)
    tokenizers.clip_l.save(str(json_dir / "tokenizer_2" / "tokenizer.json"))
    from_json = load_tokenizers(json_dir, clean_text=False)
    assert from_json.clip_l is not from_json.clip_g  # tokenizer/ missing: packaged CLIP-L
    assert from_json.encode_clip("g", prompts) == tokenizers.encode_clip("l", prompts)


def _spiece_model_bytes() -> bytes:
    """A T5 spiece.model rebuilt from the packaged JSON (pieces, scores, precompiled normalizer)."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    data = json.loads((DATA / "t5_tokenizer.json").read_text(encoding="utf-8"))
    proto = pb.ModelProto()
    for piece, score in data["model"]["vocab"][:32000]:
        entry = proto.pieces.add(piece=piece, score=score)
        entry.type = {"<pad>": 3, "</s>": 3, "<unk>": 2}.get(piece, 1)  # CONTROL, UNKNOWN, NORMAL
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    proto.trainer_spec.unk_id, proto.trainer_spec.pad_id = 2, 0
    proto.trainer_spec.eos_id, proto.trainer_spec.bos_id = 1, -1
    charsmap = data["normalizer"]["normalizers"][0]["precompiled_charsmap"]
    proto.normalizer_spec.precompiled_charsmap = base64.b64decode(charsmap)
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = True
    return proto.SerializeToString()


def test_override_spiece_model(tmp_path, tokenizers, make_prompt) -> None:
    spm = pytest.importorskip("sentencepiece")
    model = _spiece_model_bytes()
    (tmp_path / "tokenizer_3").mkdir()
    (tmp_path / "tokenizer_3" / "spiece.model").write_bytes(model)
    loaded = load_tokenizers(tmp_path, clean_text=False)
    assert loaded.t5.token_to_id("<extra_id_0>") == 32099
    assert loaded.t5_eos_pad() == (1, 0)
    processor = spm.SentencePieceProcessor(model_proto=model)
    rng = random.Random(11)
    prompts = [make_prompt(rng, syntax=False) for _ in range(1000)]
    ours = loaded.encode_t5(prompts)
    assert ours == tokenizers.encode_t5(prompts)
    plain = [p for p in prompts if "<" not in p]  # sentencepiece knows no added tokens (</s>, <extra_id_n>)
    assert [loaded.encode_t5([p])[0] for p in plain] == processor.encode(plain)


def test_bad_override_folders(tmp_path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_tokenizers(tmp_path / "missing")
    with pytest.raises(UserInputError, match="holds none of"):
        load_tokenizers(tmp_path)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(UserInputError, match="vocab.json and merges.txt"):
        load_tokenizers(tmp_path)
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserInputError, match="not a tokenizers JSON"):
        load_tokenizers(tmp_path)
    bad_t5 = tmp_path / "t5only"
    (bad_t5 / "tokenizer_3").mkdir(parents=True)
    (bad_t5 / "tokenizer_3" / "spiece.model").write_bytes(b"\xff\x00garbage")
    with pytest.raises(UserInputError, match="spiece.model"):
        load_tokenizers(bad_t5)


def test_clean_text_without_ftfy_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(tk, "ftfy_available", lambda: False)
    with pytest.raises(UserInputError, match="ftfy"):
        load_tokenizers(clean_text=True)
    assert load_tokenizers().clean_clip_text is False  # auto: off without ftfy
