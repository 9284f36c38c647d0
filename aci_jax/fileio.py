"""Files a user keeps, on a local disk or in Cloud Storage: written atomically, read with
one-line errors.

Paths are strings. A path with a scheme (`gs://bucket/run/...`, or any other fsspec URL) is
remote and goes through fsspec (gcsfs for gs://; `pip install 'aci_jax[gcs]'`); anything else is a
local path and goes through `os`. Orbax checkpoints take the same strings (orbax and tensorstore
speak gs:// themselves), so `--workdir gs://bucket/run` puts the whole run in the bucket.

Atomicity: `atomic_open` writes into a local temporary file; locally it is fsynced and renamed
over the target, remotely it is uploaded as one object, which Cloud Storage makes visible only
once the upload completes. Either way a crash or a kill leaves the old file or the complete new
one, never a torn one.

Staging: libraries that need real local files (the `tokenizers`/`transformers` loaders, the
mmap'd safetensors reader) get `stage(path)`: a local directory itself, or for a remote one a
copy under `staging_root()`, downloaded once and downloaded again only when the remote listing
(names, sizes, generations) changes. Every host of a pod stages to its own disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterable, Iterator

GCS_HINT = "gs:// paths need gcsfs: pip install 'aci_jax[gcs]' (or pip install gcsfs)"


class DataError(ValueError):
  """A malformed data file; the message names the file and line."""


class StorageError(OSError):
  """A remote path that cannot be used (no filesystem package for its scheme); one line."""


# ------------------------------------------------------------------------------ paths


def is_remote(path: str) -> bool:
  """True for URLs with a scheme other than file:// (gs://, s3://, memory://, ...)."""
  scheme, sep, _ = str(path).partition("://")
  return bool(sep) and scheme not in ("", "file") and "/" not in scheme


def join(path: str, *parts: str) -> str:
  """`os.path.join` that keeps a URL a URL (`gs://b/run` + `x` -> `gs://b/run/x`)."""
  if is_remote(path):
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(path, *parts)


def _fs(path: str):
  """(fsspec filesystem, path inside it) for a remote path."""
  try:
    import fsspec
    fs, inner = fsspec.core.url_to_fs(path)
  except ImportError as e:
    hint = GCS_HINT if str(path).startswith("gs://") else f"no filesystem package ({e})"
    raise StorageError(f"{path}: {hint}") from None
  except ValueError as e:  # an unknown scheme
    raise StorageError(f"{path}: {e}") from None
  # Another host (or process) may have written here since this process last listed the
  # directory; fsspec's listing cache would hide that.
  fs.invalidate_cache(inner)
  return fs, inner


def check(path: str) -> None:
  """Raises StorageError (one line) if `path` is remote and its filesystem is not installed."""
  if is_remote(path):
    _fs(path)


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  fs, p = _fs(path)
  return fs.exists(p)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  fs, p = _fs(path)
  return fs.isfile(p)


def makedirs(path: str) -> None:
  """Creates a local directory (and parents); a no-op for object stores, which have none."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names (not paths) in a directory; [] if it does not exist."""
  if not is_remote(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []
  fs, p = _fs(path)
  if not fs.exists(p):
    return []
  return sorted({os.path.basename(x.rstrip("/")) for x in fs.ls(p, detail=False)} - {""})


def rmtree(path: str) -> None:
  """Removes a directory tree; a missing one is fine."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=True)
    return
  fs, p = _fs(path)
  if fs.exists(p):
    fs.rm(p, recursive=True)


@contextlib.contextmanager
def open_read(path: str, mode: str = "r", encoding: str | None = "utf-8"):
  """`open(path, mode)` for reading, local or remote."""
  binary = "b" in mode
  if not is_remote(path):
    with open(path, mode, encoding=None if binary else encoding) as f:
      yield f
    return
  fs, p = _fs(path)
  with fs.open(p, "rb" if binary else "r", **({} if binary else {"encoding": encoding})) as f:
    yield f


def read_text(path: str) -> str:
  with open_read(path) as f:
    return f.read()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


# ----------------------------------------------------------------------------- writes


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8"):
  """`with atomic_open(p) as f:` -- `p` appears only if the block completes."""
  remote = is_remote(path)
  if remote:
    fs, target = _fs(path)
    d = tempfile.gettempdir()
  else:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=d)
  try:
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    if remote:
      fs.put_file(tmp, target)  # one object upload: visible only once complete
    else:
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


def write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, default=float)
    f.write("\n")


def write_jsonl(path: str, records: Iterable[Any]) -> str:
  with atomic_open(path) as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return path


def upload_file(local: str, path: str) -> None:
  """Copies a local file to `path` (local or remote), atomically."""
  if is_remote(path):
    fs, target = _fs(path)
    fs.put_file(local, target)
  else:
    with open(local, "rb") as src, atomic_open(path, "wb") as dst:
      shutil.copyfileobj(src, dst)


def upload_dir(local_dir: str, path: str, *, last: Iterable[str] = ()) -> None:
  """Replaces the directory `path` with the contents of `local_dir`.

  An object store cannot rename a directory, so completeness is marked by file: whatever was
  at `path` is removed first, the files named in `last` (e.g. an HF directory's config.json,
  which readers check for) are uploaded after all others. A crash midway leaves a directory
  without its marker, which readers treat as absent.
  """
  last = set(last)
  rmtree(path)
  names = sorted(os.path.relpath(os.path.join(root, f), local_dir)
                 for root, _, files in os.walk(local_dir) for f in files)
  for name in sorted(names, key=lambda n: n in last):
    upload_file(os.path.join(local_dir, name), join(path, *name.split(os.sep)))


# ---------------------------------------------------------------------------- staging


def staging_root() -> str:
  """Where remote directories are staged: $ACI_JAX_STAGING_DIR, else ~/.cache/aci_jax/staging."""
  return os.environ.get("ACI_JAX_STAGING_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "aci_jax", "staging")


def stage(path: str) -> str:
  """A local directory holding the files of directory `path` (itself when local).

  Remote directories are downloaded to `staging_root()/<scheme>/<bucket>/<path>` through a
  temporary directory renamed into place, so an interrupted download is never used; a later
  call re-downloads only if the remote listing changed.
  """
  if not is_remote(path):
    return path
  fs, p = _fs(path)
  p = p.rstrip("/")
  files = {name: info for name, info in fs.find(p, detail=True).items()
           if not name.endswith("/") and info.get("type", "file") == "file"}
  if not files:
    raise FileNotFoundError(f"{path}: no such directory (or it is empty)")
  listing = sorted([name[len(p):].lstrip("/"), int(info.get("size") or 0),
                    str(info.get("generation") or info.get("md5Hash") or info.get("mtime") or "")]
                   for name, info in files.items())
  scheme, _, rest = path.partition("://")
  local = os.path.join(staging_root(), scheme, *rest.strip("/").split("/"))
  marker = os.path.join(local, ".aci_jax_staged.json")
  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      if json.load(f) == listing:
        return local
  parent = os.path.dirname(local)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(local)}.", dir=parent)
  try:
    for rel, _, _ in listing:
      dest = os.path.join(tmp, *rel.split("/"))
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      fs.get_file(f"{p}/{rel}", dest)
    with open(os.path.join(tmp, os.path.basename(marker)), "w", encoding="utf-8") as f:
      json.dump(listing, f)
    if os.path.exists(local):  # an older copy: move it aside, then swap in the new one
      old = tempfile.mkdtemp(prefix=".old-", dir=parent)
      os.replace(local, os.path.join(old, "x"))
      shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, local)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return local


def local_mirror() -> str:
  """A fresh local directory for files written locally and copied to a remote path later
  (append-only files: an object store cannot append)."""
  return tempfile.mkdtemp(prefix="aci_jax-mirror-")


# ------------------------------------------------------------------------------ reads


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
  """(line number, object) for each non-blank line of `path` ("-" = stdin; local or remote);
  DataError names file:line for anything that is not a JSON object."""
  if path != "-" and not exists(path):
    raise DataError(f"{path}: no such file")
  with (contextlib.nullcontext(sys.stdin) if path == "-" else open_read(path)) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
      yield lineno, obj
