"""The parameter tree, as one table: every leaf's path, shape, logical axes and checkpoint names.

Loading and export (`weights.py`), the GGUF converter (`gguf.py`), the sharding rules
(`aci_jax.parallel.rules`) and the parameter count (`ModelConfig.num_params`) all read `LEAVES`;
the Flax decoder builds the same tree (tests/test_model_weights.py checks path for path and shape
for shape against `init_params`, and that the Hugging Face names cover every tensor of a
`transformers` model of the same config).

Sizes (ModelConfig): V vocab_size, D hidden_size, F intermediate_size, H num_heads, K
num_kv_heads, Dh head_dim, L num_layers. Leaves under `layers/` are stacked over the L layers
(`nn.scan`), so they carry a leading L axis ("layers" in the logical axes) that the table rows
leave implicit. Kernels are [in, out]: Hugging Face Linear weights transposed.

  path                          shape         logical axes     Hugging Face tensor
  embed/embedding               [V, D]        vocab, embed     model.embed_tokens.weight
  final_norm/scale              [D]           norm             model.norm.weight
  lm_head/kernel                [D, V]        embed, vocab     lm_head.weight (untied heads)
  layers/attn_norm/scale        [L, D]        norm             input_layernorm.weight
  layers/mlp_norm/scale         [L, D]        norm             post_attention_layernorm.weight
  layers/attn/q_proj/kernel     [L, D, H*Dh]  embed, heads     self_attn.q_proj.weight
  layers/attn/{k,v}_proj/kernel [L, D, K*Dh]  embed, kv_heads  self_attn.{k,v}_proj.weight
  layers/attn/o_proj/kernel     [L, H*Dh, D]  heads, embed     self_attn.o_proj.weight
  layers/attn/{q,k,v}_proj/bias [L, H*Dh] / [L, K*Dh] when qkv_bias; o_proj/bias [L, D] when o_bias
  layers/mlp/{gate,up}_proj/kernel [L, D, F]  embed, mlp       mlp.{gate,up}_proj.weight
  layers/mlp/down_proj/kernel   [L, F, D]     mlp, embed       mlp.down_proj.weight
  layers/mlp/*_proj/bias        [L, F] / [L, D] when mlp_bias
(per-layer Hugging Face names are prefixed with `model.layers.{i}.`). `LEAVES` below is the
authority; this table is its summary.
"""

from __future__ import annotations

import dataclasses
import math

# Each size symbol of the table, as a function of the ModelConfig.
DIMS = {
    "V": lambda c: c.vocab_size,
    "D": lambda c: c.hidden_size,
    "F": lambda c: c.intermediate_size,
    "H*Dh": lambda c: c.num_heads * c.head_dim,
    "K*Dh": lambda c: c.num_kv_heads * c.head_dim,
}
LAYER_PREFIX = "model.layers.{i}."


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter: where it sits in our tree and how it appears in checkpoints."""

  path: tuple[str, ...]  # in our tree; a leading "layers" means stacked over L layers
  dims: tuple[str, ...]  # one DIMS symbol per dimension (without the layer axis)
  axes: tuple[str, ...]  # one logical axis name per dimension (without the layer axis)
  hf: str  # Hugging Face tensor name; per-layer names lack the LAYER_PREFIX
  gguf: str  # llama.cpp GGUF tensor name; per-layer names lack their "blk.{i}." prefix
  transpose: bool = False  # HF Linear weights are [out, in]; our kernels are [in, out]
  when: str = ""  # ModelConfig flag the leaf exists under; "!flag": exists when it is False

  @property
  def stacked(self) -> bool:
    return self.path[0] == "layers"

  def present(self, cfg) -> bool:
    if not self.when:
      return True
    flag = getattr(cfg, self.when.lstrip("!"))
    return not flag if self.when.startswith("!") else bool(flag)

  def layer_shape(self, cfg) -> tuple[int, ...]:
    """The shape of one layer's slice (the whole leaf when not stacked)."""
    return tuple(DIMS[d](cfg) for d in self.dims)

  def shape(self, cfg) -> tuple[int, ...]:
    return ((cfg.num_layers,) if self.stacked else ()) + self.layer_shape(cfg)

  def logical_axes(self) -> tuple[str, ...]:
    return (("layers",) if self.stacked else ()) + self.axes

  def hf_shape(self, cfg) -> tuple[int, ...]:
    """The shape of each Hugging Face tensor of this leaf (one per layer when stacked)."""
    shape = self.layer_shape(cfg)
    return tuple(reversed(shape)) if self.transpose else shape

  def hf_name(self, layer: int | None = None) -> str:
    return (LAYER_PREFIX.format(i=layer) if self.stacked else "") + self.hf

  def hf_names(self, cfg) -> list[str]:
    """Every Hugging Face tensor name of this leaf, in layer order."""
    if self.stacked:
      return [self.hf_name(i) for i in range(cfg.num_layers)]
    return [self.hf_name()]


def _proj(block: str, proj: str, hf_block: str, gguf: str, kernel_dims, kernel_axes,
          bias_dim: str, bias_axis: str, bias_flag: str) -> tuple[Leaf, Leaf]:
  """A Linear layer of a block: its kernel and its (optional) bias."""
  path = ("layers", block, f"{proj}_proj")
  hf = f"{hf_block}.{proj}_proj"
  return (Leaf(path + ("kernel",), kernel_dims, kernel_axes, hf + ".weight", gguf + ".weight",
               transpose=True),
          Leaf(path + ("bias",), (bias_dim,), (bias_axis,), hf + ".bias", gguf + ".bias",
               when=bias_flag))


# The order is the order of tensors in exported checkpoints.
LEAVES: tuple[Leaf, ...] = (
    Leaf(("embed", "embedding"), ("V", "D"), ("vocab", "embed"), "model.embed_tokens.weight",
         "token_embd.weight"),
    Leaf(("final_norm", "scale"), ("D",), ("norm",), "model.norm.weight", "output_norm.weight"),
    Leaf(("lm_head", "kernel"), ("D", "V"), ("embed", "vocab"), "lm_head.weight",
         "output.weight", transpose=True, when="!tie_word_embeddings"),
    Leaf(("layers", "attn_norm", "scale"), ("D",), ("norm",), "input_layernorm.weight",
         "attn_norm.weight"),
    Leaf(("layers", "mlp_norm", "scale"), ("D",), ("norm",), "post_attention_layernorm.weight",
         "ffn_norm.weight"),
    *_proj("attn", "q", "self_attn", "attn_q", ("D", "H*Dh"), ("embed", "heads"),
           "H*Dh", "heads", "qkv_bias"),
    *_proj("attn", "k", "self_attn", "attn_k", ("D", "K*Dh"), ("embed", "kv_heads"),
           "K*Dh", "kv_heads", "qkv_bias"),
    *_proj("attn", "v", "self_attn", "attn_v", ("D", "K*Dh"), ("embed", "kv_heads"),
           "K*Dh", "kv_heads", "qkv_bias"),
    *_proj("attn", "o", "self_attn", "attn_output", ("H*Dh", "D"), ("heads", "embed"),
           "D", "norm", "o_bias"),
    *_proj("mlp", "gate", "mlp", "ffn_gate", ("D", "F"), ("embed", "mlp"),
           "F", "mlp", "mlp_bias"),
    *_proj("mlp", "up", "mlp", "ffn_up", ("D", "F"), ("embed", "mlp"), "F", "mlp", "mlp_bias"),
    *_proj("mlp", "down", "mlp", "ffn_down", ("F", "D"), ("mlp", "embed"),
           "D", "norm", "mlp_bias"),
)

BY_PATH: dict[tuple[str, ...], Leaf] = {leaf.path: leaf for leaf in LEAVES}


def leaves(cfg) -> tuple[Leaf, ...]:
  """The leaves a model of config `cfg` has (biases and the untied head only where it says)."""
  return tuple(leaf for leaf in LEAVES if leaf.present(cfg))


def shapes(cfg) -> dict:
  """The parameter tree of `cfg` as nested dicts of shape tuples (what `init_params` builds)."""
  tree: dict = {}
  for leaf in leaves(cfg):
    node = tree
    for k in leaf.path[:-1]:
      node = node.setdefault(k, {})
    node[leaf.path[-1]] = leaf.shape(cfg)
  return tree


def num_params(cfg) -> int:
  return sum(math.prod(leaf.shape(cfg)) for leaf in leaves(cfg))
