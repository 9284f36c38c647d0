"""A local Cloud Storage server for tests of gs:// workdirs: `gcp-storage-emulator` (the JSON API
over HTTP) with the two parts of the protocol it lacks and tensorstore relies on.

    with gcs_emulator.running() as env:   # env: the variables that point every client at it
      ...                                 # gs://test-bucket/... now works for gcsfs, orbax,
                                          # tensorstore and google-cloud-storage

Added to the emulator, as Cloud Storage specifies them (and requests served concurrently):
  - the `x-goog-generation` header on object downloads (tensorstore's OCDBT driver reads the
    generation of every object it reads and refuses a response without one);
  - `ifGenerationMatch` preconditions on uploads (0 = the object must not exist), answered with
    412 when they fail; OCDBT commits its manifest with them.

Run as a script, it serves on the given port until killed: `python tests/gcs_emulator.py PORT`.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import types
from http import HTTPStatus

BUCKET = "test-bucket"


def _patch_emulator():
  from gcp_storage_emulator import server
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def generation_of(storage, bucket, name):
    try:
      return storage.get_file_obj(bucket, name)["generation"]
    except NotFound:
      return None

  original_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    gen = generation_of(storage, request.params["bucket_name"], request.params["object_id"])
    if gen is not None:
      response["x-goog-generation"] = str(gen)
    return original_download(request, response, storage, *args, **kwargs)

  # `objects.get` serves ?alt=media by calling the module's `download`: replace it there too.
  objects.download = download

  def with_precondition(handler):
    def wrapped(request, response, storage, *args, **kwargs):
      want = request.query.get("ifGenerationMatch")
      name = (request.query.get("name") or [None])[0]
      if want is not None and name is not None:
        gen = generation_of(storage, request.params["bucket_name"], name)
        if (want[0] == "0" and gen is not None) or (want[0] != "0" and str(gen) != want[0]):
          response.status = HTTPStatus.PRECONDITION_FAILED
          return None
      return handler(request, response, storage, *args, **kwargs)
    return wrapped

  lock = threading.Lock()

  def serialized(handler):
    def wrapped(*args, **kwargs):
      with lock:
        return handler(*args, **kwargs)
    return wrapped

  for _, table in server.HANDLERS:
    for method, handler in list(table.items()):
      if handler is original_download:
        handler = download
      elif handler is objects.insert:
        handler = with_precondition(handler)
      table[method] = serialized(handler)
  # One thread per connection, as a real endpoint answers requests concurrently (the stock
  # single-threaded server makes tensorstore's parallel requests queue until they time out);
  # the handlers themselves run one at a time on the in-memory store.
  server.server = types.SimpleNamespace(HTTPServer=_ThreadingServer)
  return server


class _ThreadingServer(http.server.ThreadingHTTPServer):
  daemon_threads = True


def serve(port: int) -> None:
  server = _patch_emulator()
  srv = server.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  srv.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    srv.stop()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def client_env(url: str) -> dict[str, str]:
  """Environment that sends gcsfs, google-cloud-storage and tensorstore to `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's gcs kvstore (orbax arrays)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # tensorstore: skip the credential lookup
      # gcsfs >= 2025.x asks the gRPC storage-control API for the bucket type, which an HTTP
      # emulator cannot answer (each attempt waits 60 s before falling back).
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


@contextlib.contextmanager
def running():
  """Starts the emulator in a subprocess; yields the client environment (also set in
  os.environ for the duration, and restored after)."""
  port = _free_port()
  proc = subprocess.Popen([sys.executable, __file__, str(port)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  url = f"http://localhost:{port}"
  try:
    deadline = time.monotonic() + 60
    while True:
      with socket.socket() as s:
        if s.connect_ex(("localhost", port)) == 0:
          break
      if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"the GCS emulator did not start (exit status {proc.poll()})")
      time.sleep(0.1)
    env = client_env(url)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield env
    finally:
      for k, v in old.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  finally:
    proc.terminate()
    proc.wait(timeout=30)


if __name__ == "__main__":
  serve(int(sys.argv[1]))
