"""Model configuration, read from a Hugging Face ``config.json``.

`ModelConfig` is the architecture only (what the weights mean). How the model is run (compute and
parameter dtypes, rematerialisation) lives in the same frozen dataclass as separate fields so a
single hashable object can be a static argument to `jax.jit`; how it is *sharded* lives elsewhere
(`aci_jax.parallel`), never here.

Two architectures are supported, Qwen2 (`Qwen2ForCausalLM`: Qwen2, Qwen2.5, Qwen2.5-Math) and Llama
(`LlamaForCausalLM`: Llama-2/3.x, DeepSeek-Math). They differ only in which projections carry a
bias, so one decoder serves both. Anything outside what the decoder implements (another
architecture, sliding-window attention, an unknown RoPE scaling type, a non-SiLU MLP) raises
`UnsupportedConfigError` with a one-line reason instead of producing wrong logits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax.numpy as jnp

from aci_jax.model import schema


class UnsupportedConfigError(ValueError):
  """A Hugging Face config asks for something this decoder does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. `kind` is 'linear' or 'llama3' (Llama-3.1 'rope_type')."""

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder architecture plus run-time dtypes.

  Sizes: D = hidden_size, F = intermediate_size, H = num_heads, K = num_kv_heads (K divides H;
  K == H is plain multi-head attention), Dh = head_dim (need not equal D / H), V = vocab_size.
  """

  arch: str  # "qwen2" | "llama"
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 32768
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  # Run-time options (not part of the checkpoint).
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of the parameters
  remat: str = "none"  # "none" | "full" | "dots": activation checkpointing per layer

  def __post_init__(self):
    if self.arch not in ("qwen2", "llama"):
      raise UnsupportedConfigError(f"arch must be 'qwen2' or 'llama', got {self.arch!r}")
    if self.num_heads % self.num_kv_heads:
      raise UnsupportedConfigError(
          f"num_attention_heads={self.num_heads} is not a multiple of "
          f"num_key_value_heads={self.num_kv_heads}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise UnsupportedConfigError(f"{name} must be one of {sorted(_DTYPES)}, got "
                                     f"{getattr(self, name)!r}")
    if self.remat not in ("none", "full", "dots"):
      raise UnsupportedConfigError(f"remat must be none|full|dots, got {self.remat!r}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (for FLOP/MFU accounting and logging), from the parameter schema."""
    return schema.num_params(self)

  # ---------------------------------------------------------------- Hugging Face interop

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **runtime) -> "ModelConfig":
    """Builds a config from the dict of a Hugging Face `config.json` (transformers 4.x or 5.x)."""
    model_type = hf.get("model_type")
    archs = tuple(hf.get("architectures") or ())
    arch = {"qwen2": "qwen2", "llama": "llama"}.get(model_type)
    if arch is None:
      raise UnsupportedConfigError(
          f"unsupported model_type {model_type!r} (architectures={list(archs)}); aci_jax "
          "supports Qwen2ForCausalLM (model_type 'qwen2') and LlamaForCausalLM ('llama')")
    known = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    if archs and known not in archs:
      raise UnsupportedConfigError(f"architectures {list(archs)} do not include {known}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
      raise UnsupportedConfigError(f"hidden_act {act!r} is not supported (only 'silu')")
    if hf.get("use_sliding_window"):
      raise UnsupportedConfigError(
          "sliding-window attention (use_sliding_window=true) is not supported")
    layer_types = hf.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
      raise UnsupportedConfigError(
          f"layer_types {sorted(set(layer_types))} include non-full attention; unsupported")
    if hf.get("pretraining_tp", 1) not in (1, None):
      raise UnsupportedConfigError("pretraining_tp != 1 is not supported")

    theta, scaling = _parse_rope(hf)
    d = int(hf["hidden_size"])
    h = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or d // h
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    if arch == "qwen2":
      qkv_bias, o_bias, mlp_bias = True, False, False  # fixed by the Qwen2 architecture
    else:
      qkv_bias = o_bias = bool(hf.get("attention_bias", False))
      mlp_bias = bool(hf.get("mlp_bias", False))
    return cls(
        arch=arch,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=d,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=h,
        num_kv_heads=int(hf.get("num_key_value_heads") or h),
        head_dim=int(head_dim),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=tuple(int(e) for e in eos_ids),
        **runtime,
    )

  @classmethod
  def from_pretrained(cls, path: str, **runtime) -> "ModelConfig":
    """Reads `path/config.json` (or `path` itself if it is the file)."""
    file = path if path.endswith(".json") else os.path.join(path, "config.json")
    if not os.path.exists(file):
      raise FileNotFoundError(f"no config.json at {file}")
    with open(file) as f:
      return cls.from_hf_dict(json.load(f), **runtime)

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` dict that `transformers` loads back into the same architecture."""
    out: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if self.arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": self.arch,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "torch_dtype": self.param_dtype,
        "rope_theta": self.rope_theta,
        "rope_scaling": None,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": (list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else
                         (self.eos_token_ids[0] if self.eos_token_ids else None)),
    }
    if self.rope_scaling is not None:
      rs = self.rope_scaling
      out["rope_scaling"] = {"rope_type": rs.kind, "factor": rs.factor}
      if rs.kind == "llama3":
        out["rope_scaling"].update(
            low_freq_factor=rs.low_freq_factor, high_freq_factor=rs.high_freq_factor,
            original_max_position_embeddings=rs.original_max_position_embeddings)
    if self.arch == "qwen2":
      if not self.qkv_bias or self.o_bias or self.mlp_bias:
        raise UnsupportedConfigError(
            "a Qwen2 checkpoint has q/k/v biases and no others; export a model with other "
            "biases as arch='llama'")
      out.update(use_sliding_window=False, sliding_window=None)
    else:
      if self.qkv_bias != self.o_bias:
        raise UnsupportedConfigError("Llama export needs qkv_bias == o_bias (attention_bias)")
      out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
    # transformers 5 reads `rope_parameters`; 4.x reads rope_theta/rope_scaling. Write both.
    rope_params = {"rope_theta": self.rope_theta, "rope_type": "default"}
    if out["rope_scaling"]:
      rope_params.update(out["rope_scaling"])
    out["rope_parameters"] = rope_params
    return out


def _parse_rope(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
  """RoPE theta and scaling from either the 4.x keys or the 5.x `rope_parameters` dict."""
  params = dict(hf.get("rope_parameters") or {})
  scaling = hf.get("rope_scaling")
  if scaling:
    params = {**params, **scaling}
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind in (None, "default"):
    return theta, None
  if kind == "linear":
    return theta, RopeScaling(kind="linear", factor=float(params["factor"]))
  if kind == "llama3":
    try:
      return theta, RopeScaling(
          kind="llama3",
          factor=float(params["factor"]),
          low_freq_factor=float(params["low_freq_factor"]),
          high_freq_factor=float(params["high_freq_factor"]),
          original_max_position_embeddings=int(params["original_max_position_embeddings"]))
    except KeyError as e:
      raise UnsupportedConfigError(f"llama3 rope_scaling is missing {e.args[0]!r}") from None
  raise UnsupportedConfigError(
      f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)")
