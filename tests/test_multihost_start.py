"""Multi-host start (aci_jax/parallel/multihost.py): which launch environments count as
multi-host, the Cloud TPU VM metadata query (against a local stand-in for the metadata server),
and the config checks of maybe_initialize_distributed."""

import http.server
import threading

import ml_collections
import pytest

from aci_jax.configuration import UsageError
from aci_jax.parallel import multihost

_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES",
        "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_SKIP_MDS_QUERY", "GCE_METADATA_IP")


@pytest.fixture
def clean_env(monkeypatch):
  for key in _ENV:
    monkeypatch.delenv(key, raising=False)
  return monkeypatch


@pytest.fixture
def metadata_server():
  """A local HTTP server answering the GCE metadata query; yields (host:port, requests seen)."""
  seen = []

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
      seen.append((self.path, self.headers.get("Metadata-Flavor")))
      body = b"10.0.0.1:8470,10.0.0.2:8470,10.0.0.3:8470,10.0.0.4:8470"
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"127.0.0.1:{server.server_address[1]}", seen
  server.shutdown()
  server.server_close()


def test_environment_detection(clean_env):
  assert not multihost._env_says_multihost()
  clean_env.setenv("TPU_WORKER_HOSTNAMES", "host0")
  assert not multihost._env_says_multihost()  # a single-host TPU VM
  clean_env.setenv("TPU_WORKER_HOSTNAMES", "host0,host1")
  assert multihost._env_says_multihost()
  clean_env.delenv("TPU_WORKER_HOSTNAMES")
  clean_env.setenv("SLURM_NTASKS", "4")
  assert multihost._env_says_multihost()
  clean_env.setenv("SLURM_NTASKS", "1")
  assert not multihost._env_says_multihost()
  clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  assert multihost._env_says_multihost()


def test_tpu_vm_workers_come_from_the_metadata_server(clean_env, metadata_server):
  address, seen = metadata_server
  clean_env.setenv("GCE_METADATA_IP", address)
  clean_env.setattr(multihost, "_tpu_chips", lambda: 4)
  assert multihost._gce_tpu_workers() == 4
  assert seen == [("/computeMetadata/v1/instance/attributes/worker-network-endpoints",
                   "Google")]
  assert multihost._env_says_multihost()
  clean_env.setenv("TPU_SKIP_MDS_QUERY", "1")  # JAX's own switch to skip the query
  assert multihost._gce_tpu_workers() == 0
  assert len(seen) == 2  # _env_says_multihost asked once; the skipped query did not


def test_a_host_without_tpu_chips_never_asks_the_metadata_server(clean_env, metadata_server):
  address, seen = metadata_server
  clean_env.setenv("GCE_METADATA_IP", address)
  clean_env.setattr(multihost, "_tpu_chips", lambda: 0)
  assert multihost._gce_tpu_workers() == 0 and not multihost._env_says_multihost()
  assert seen == []


def test_an_unreachable_metadata_server_means_single_host(clean_env):
  clean_env.setenv("GCE_METADATA_IP", "127.0.0.1:9")  # discard port: connection refused
  clean_env.setattr(multihost, "_tpu_chips", lambda: 4)
  assert multihost._gce_tpu_workers(timeout=0.5) == 0


def test_the_jax_helper_that_counts_tpu_chips_is_still_there():
  # _tpu_chips falls back to 0 (single host) if a JAX release moves it: notice that here.
  from jax._src import hardware_utils
  chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  assert multihost._tpu_chips() == chips


def test_maybe_initialize_distributed_checks_the_mode(clean_env):
  with pytest.raises(UsageError, match="config.dist.multihost must be auto|on|off"):
    multihost.maybe_initialize_distributed(ml_collections.ConfigDict(dict(multihost="maybe")))
  for mode in ("off", "auto"):  # a single-host environment: nothing is initialised
    assert not multihost.maybe_initialize_distributed(
        ml_collections.ConfigDict(dict(multihost=mode, coordinator="")))
  assert not multihost.maybe_initialize_distributed(None)
