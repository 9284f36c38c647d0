"""Checkpoint locations: a local directory, a gs:// directory copied to local disk, or a Hugging
Face hub id downloaded once."""

from __future__ import annotations

import os

from aci_jax import fileio

_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]


class HubError(OSError):
  """A hub id that cannot be fetched (offline, unknown, gated): one line, no traceback."""


def resolve(path_or_id: str) -> str:
  """Local directory for `path_or_id`: itself if it exists; for a gs:// directory, a local copy
  (`fileio.stage`); else a hub snapshot (safetensors, configs and tokenizer files only) in the
  Hugging Face cache ($HF_HOME/hub). Respects HF_HUB_OFFLINE."""
  if os.path.isdir(path_or_id):
    return path_or_id
  if fileio.is_remote(path_or_id):
    try:
      return fileio.stage(path_or_id)
    except OSError as e:
      raise HubError(f"cannot stage {path_or_id!r}: {str(e).splitlines()[0]}") from None
  if path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") != 1:
    raise HubError(f"{path_or_id!r} is neither a local directory nor a hub id 'org/name'")
  try:
    from huggingface_hub import snapshot_download

    return snapshot_download(path_or_id, allow_patterns=_PATTERNS)
  except Exception as e:  # the hub raises many types; the user needs one line
    raise HubError(f"cannot fetch {path_or_id!r} from the Hugging Face hub "
                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                   "pass a local checkpoint directory instead") from None
