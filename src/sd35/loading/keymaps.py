"""Key names: file prefixes per component and the official <-> diffusers rename table (pure strings).

Official names are the sd3.5 reference's (= our module attribute names). One rule table per component
serves both directions: `to_diffusers(component, official_keys)` for writing diffusers folders and
`from_diffusers(component, diffusers_keys)` for reading them. Rules follow diffusers 0.42.1
`single_file_utils.py` (`convert_sd3_transformer_checkpoint_to_diffusers`, `convert_ldm_vae_checkpoint`).
Tensor work implied by an op (split, swap, reshape) lives in `sd35.loading.convert`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

COMPONENTS = ("mmditx", "vae", "clip_l", "clip_g", "t5xxl")

# Prefixes of the official single file (sd3.5 `sd3_infer.py`; ComfyUI `supported_models.py SD3`).
OFFICIAL_PREFIXES = {
    "mmditx": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
}
# Sub-folders of a diffusers StableDiffusion3Pipeline folder.
DIFFUSERS_FOLDERS = {
    "mmditx": "transformer",
    "vae": "vae",
    "clip_l": "text_encoder",
    "clip_g": "text_encoder_2",
    "t5xxl": "text_encoder_3",
}
# Keys some files carry that no model needs: HF CLIP's position_ids buffer, T5's tied `shared` table.
IGNORED_KEYS = {
    "clip_l": {"text_model.embeddings.position_ids", "logit_scale"},
    "clip_g": {"text_model.embeddings.position_ids", "logit_scale"},
    "t5xxl": {"shared.weight"},
}
# ComfyUI scaled-fp8 files (comfy/model_detection.py, comfy/ops.py scaled_fp8_ops): a `scaled_fp8` marker
# whose dtype names the fp8 format, and per-Linear `.scale_weight` (weight = fp8 · scale) and
# `.scale_input` (only for fp8 matmuls, irrelevant once weights are dequantized). Newer ComfyUI and
# other tools write `.weight_scale` / `.input_scale` and a `.comfy_quant` descriptor.
SCALED_FP8_MARKER = "scaled_fp8"
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
IGNORED_SCALE_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")

# ops: how the official tensor relates to the diffusers tensor(s)
COPY, QKV, SWAP, CONV1X1 = "copy", "qkv", "swap", "conv1x1"


@dataclass(frozen=True)
class Rule:
    """official pattern <-> diffusers pattern(s). Placeholders: {i},{j} any index; {p} weight|bias;
    {s} encoder|decoder; {r} norm1|conv1|norm2|conv2; {last} the last block index only; {u} a decoder
    level, reversed on the diffusers side (up_blocks.{n-1-u})."""

    official: str
    diffusers: tuple[str, ...]
    op: str = COPY


@dataclass(frozen=True)
class KeyMapping:
    official: str
    diffusers: tuple[str, ...]  # several only for QKV (q, k, v)
    op: str


@dataclass(frozen=True)
class KeyMap:
    mappings: tuple[KeyMapping, ...]
    unmatched: tuple[str, ...] = field(default=())  # input keys no rule covers


def _block(stream: str, tail: str) -> str:
    return f"joint_blocks.{{i}}.{stream}.{tail}"


def _qkv(prefix: str, names: tuple[str, str, str]) -> tuple[str, ...]:
    return tuple(f"{prefix}.{n}.{{p}}" for n in names)


_T = "transformer_blocks.{i}"
MMDITX_RULES = (
    Rule("pos_embed", ("pos_embed.pos_embed",)),
    Rule("x_embedder.proj.{p}", ("pos_embed.proj.{p}",)),
    Rule("t_embedder.mlp.0.{p}", ("time_text_embed.timestep_embedder.linear_1.{p}",)),
    Rule("t_embedder.mlp.2.{p}", ("time_text_embed.timestep_embedder.linear_2.{p}",)),
    Rule("y_embedder.mlp.0.{p}", ("time_text_embed.text_embedder.linear_1.{p}",)),
    Rule("y_embedder.mlp.2.{p}", ("time_text_embed.text_embedder.linear_2.{p}",)),
    Rule("context_embedder.{p}", ("context_embedder.{p}",)),
    Rule(_block("x_block", "attn.qkv.{p}"), _qkv(f"{_T}.attn", ("to_q", "to_k", "to_v")), QKV),
    Rule(
        _block("context_block", "attn.qkv.{p}"),
        _qkv(f"{_T}.attn", ("add_q_proj", "add_k_proj", "add_v_proj")),
        QKV,
    ),
    Rule(_block("x_block", "attn.ln_q.weight"), (f"{_T}.attn.norm_q.weight",)),
    Rule(_block("x_block", "attn.ln_k.weight"), (f"{_T}.attn.norm_k.weight",)),
    Rule(_block("context_block", "attn.ln_q.weight"), (f"{_T}.attn.norm_added_q.weight",)),
    Rule(_block("context_block", "attn.ln_k.weight"), (f"{_T}.attn.norm_added_k.weight",)),
    Rule(_block("x_block", "attn.proj.{p}"), (f"{_T}.attn.to_out.0.{{p}}",)),
    Rule(_block("context_block", "attn.proj.{p}"), (f"{_T}.attn.to_add_out.{{p}}",)),
    Rule(_block("x_block", "attn2.qkv.{p}"), _qkv(f"{_T}.attn2", ("to_q", "to_k", "to_v")), QKV),
    Rule(_block("x_block", "attn2.ln_q.weight"), (f"{_T}.attn2.norm_q.weight",)),
    Rule(_block("x_block", "attn2.ln_k.weight"), (f"{_T}.attn2.norm_k.weight",)),
    Rule(_block("x_block", "attn2.proj.{p}"), (f"{_T}.attn2.to_out.0.{{p}}",)),
    Rule(_block("x_block", "adaLN_modulation.1.{p}"), (f"{_T}.norm1.linear.{{p}}",)),
    # The pre-only last context block modulates with (shift, scale); diffusers stores (scale, shift).
    Rule(
        "joint_blocks.{last}.context_block.adaLN_modulation.1.{p}",
        ("transformer_blocks.{last}.norm1_context.linear.{p}",),
        SWAP,
    ),
    Rule(_block("context_block", "adaLN_modulation.1.{p}"), (f"{_T}.norm1_context.linear.{{p}}",)),
    Rule(_block("x_block", "mlp.fc1.{p}"), (f"{_T}.ff.net.0.proj.{{p}}",)),
    Rule(_block("x_block", "mlp.fc2.{p}"), (f"{_T}.ff.net.2.{{p}}",)),
    Rule(_block("context_block", "mlp.fc1.{p}"), (f"{_T}.ff_context.net.0.proj.{{p}}",)),
    Rule(_block("context_block", "mlp.fc2.{p}"), (f"{_T}.ff_context.net.2.{{p}}",)),
    Rule("final_layer.linear.{p}", ("proj_out.{p}",)),
    Rule("final_layer.adaLN_modulation.1.{p}", ("norm_out.linear.{p}",), SWAP),
)


def _vae_attention_rules() -> tuple[Rule, ...]:
    rules = [Rule("{s}.mid.attn_1.norm.{p}", ("{s}.mid_block.attentions.0.group_norm.{p}",))]
    for ours, theirs in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        # 1x1 convolutions in the reference, Linear layers in diffusers
        rules.append(
            Rule(f"{{s}}.mid.attn_1.{ours}.weight", (f"{{s}}.mid_block.attentions.0.{theirs}.weight",), CONV1X1)
        )
        rules.append(Rule(f"{{s}}.mid.attn_1.{ours}.bias", (f"{{s}}.mid_block.attentions.0.{theirs}.bias",)))
    return tuple(rules)


VAE_RULES = (
    Rule("{s}.conv_in.{p}", ("{s}.conv_in.{p}",)),
    Rule("{s}.conv_out.{p}", ("{s}.conv_out.{p}",)),
    Rule("{s}.norm_out.{p}", ("{s}.conv_norm_out.{p}",)),
    Rule("encoder.down.{i}.block.{j}.{r}.{p}", ("encoder.down_blocks.{i}.resnets.{j}.{r}.{p}",)),
    Rule("encoder.down.{i}.block.{j}.nin_shortcut.{p}", ("encoder.down_blocks.{i}.resnets.{j}.conv_shortcut.{p}",)),
    Rule("encoder.down.{i}.downsample.conv.{p}", ("encoder.down_blocks.{i}.downsamplers.0.conv.{p}",)),
    Rule("{s}.mid.block_1.{r}.{p}", ("{s}.mid_block.resnets.0.{r}.{p}",)),
    Rule("{s}.mid.block_2.{r}.{p}", ("{s}.mid_block.resnets.1.{r}.{p}",)),
    *_vae_attention_rules(),
    Rule("decoder.up.{u}.block.{j}.{r}.{p}", ("decoder.up_blocks.{u}.resnets.{j}.{r}.{p}",)),
    Rule("decoder.up.{u}.block.{j}.nin_shortcut.{p}", ("decoder.up_blocks.{u}.resnets.{j}.conv_shortcut.{p}",)),
    Rule("decoder.up.{u}.upsample.conv.{p}", ("decoder.up_blocks.{u}.upsamplers.0.conv.{p}",)),
)

RULES: dict[str, tuple[Rule, ...]] = {"mmditx": MMDITX_RULES, "vae": VAE_RULES}

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_CLASSES = {"p": "weight|bias", "s": "encoder|decoder", "r": "norm1|conv1|norm2|conv2"}


def _regex(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        name = m.group(1)
        out.append(f"(?P<{name}>{_CLASSES.get(name, '[0-9]+')})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


def _context(keys: Iterable[str], blocks: str, levels: str) -> dict[str, int]:
    """Layout facts the rules need: the last block index and the number of decoder levels."""
    block_ids, level_ids = {-1}, {-1}
    for key in keys:
        if key.startswith(blocks):
            block_ids.add(int(key[len(blocks) :].split(".", 1)[0]))
        elif key.startswith(levels):
            level_ids.add(int(key[len(levels) :].split(".", 1)[0]))
    return {"last": max(block_ids), "n_up": max(level_ids) + 1}


def _match(regex: re.Pattern[str], key: str, ctx: dict[str, int]) -> dict[str, str] | None:
    m = regex.match(key)
    if m is None:
        return None
    groups = m.groupdict()
    if "last" in groups and int(groups["last"]) != ctx["last"]:
        return None
    return groups


def _flip(groups: dict[str, str], ctx: dict[str, int]) -> dict[str, str]:
    if "u" in groups:
        return {**groups, "u": str(ctx["n_up"] - 1 - int(groups["u"]))}
    return groups


def to_diffusers(component: str, official_keys: Iterable[str]) -> KeyMap:
    """Map official keys (no file prefix) to diffusers names. CLIP/T5 names are the same in both."""
    keys = list(official_keys)
    if component not in RULES:
        return KeyMap(tuple(KeyMapping(k, (k,), COPY) for k in keys))
    ctx = _context(keys, "joint_blocks.", "decoder.up.")
    compiled = [(rule, _regex(rule.official)) for rule in RULES[component]]
    mappings, unmatched = [], []
    for key in keys:
        for rule, regex in compiled:
            groups = _match(regex, key, ctx)
            if groups is not None:
                groups = _flip(groups, ctx)
                mappings.append(KeyMapping(key, tuple(d.format(**groups) for d in rule.diffusers), rule.op))
                break
        else:
            unmatched.append(key)
    return KeyMap(tuple(mappings), tuple(unmatched))


def from_diffusers(component: str, diffusers_keys: Iterable[str]) -> KeyMap:
    """Map diffusers keys to official names, grouping q/k/v parts; parts absent from the input stay in
    the mapping (the loader reports them missing)."""
    keys = list(diffusers_keys)
    if component not in RULES:
        return KeyMap(tuple(KeyMapping(k, (k,), COPY) for k in keys))
    ctx = _context(keys, "transformer_blocks.", "decoder.up_blocks.")
    compiled = [(rule, [_regex(d) for d in rule.diffusers]) for rule in RULES[component]]
    found: dict[str, KeyMapping] = {}
    unmatched = []
    for key in keys:
        for rule, regexes in compiled:
            groups = next((g for r in regexes if (g := _match(r, key, ctx)) is not None), None)
            if groups is not None:
                official_groups = _flip(groups, ctx)
                official = rule.official.format(**official_groups)
                found[official] = KeyMapping(official, tuple(d.format(**groups) for d in rule.diffusers), rule.op)
                break
        else:
            unmatched.append(key)
    return KeyMap(tuple(found.values()), tuple(unmatched))


def mapped_shape(op: str, shapes: list[tuple[int, ...]], *, to_official: bool) -> tuple[int, ...]:
    """Shape of the converted tensor: QKV parts stack along dim 0, CONV1X1 adds/drops the 1x1 kernel."""
    if op == QKV:
        if to_official:
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        return (shapes[0][0] // 3, *shapes[0][1:])
    (shape,) = shapes
    if op == CONV1X1:
        return (*shape, 1, 1) if to_official else shape[:2]
    return shape
