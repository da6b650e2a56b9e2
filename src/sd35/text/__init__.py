"""Prompt → tokens → SD3 conditioning (ComfyUI semantics; see docs/prompts.md).

- `sd35.text.tokenizers`: `load_tokenizers(dir=None) -> SD3Tokenizers` (packaged CLIP BPE + T5 vocabularies).
- `sd35.text.prompt`: `parse_prompt_weights`, `tokenize_prompt`, `tokenize_sd3` -> `PromptTokens` (no torch).
- `sd35.text.encode`: `TextEncoders`, `encode_prompt` -> `Conditioning`, `ConditioningCache`.

Nothing is imported here, so the torch-free parts stay torch-free.
"""
