"""A local Google Cloud Storage emulator for tests: the `gcs_bucket` fixture yields `gs://...`.

The pure-Python `gcp-storage-emulator` serves the GCS JSON API from memory in a subprocess
(its own interpreter, so its single-threaded HTTP server never waits on the tests' GIL). Every
client that mdd uses for `gs://` is pointed at it:

* `etils.epath` (mdd.utils.fileio, orbax's directory work) through fsspec/gcsfs:
  `EPATH_USE_TF=false` picks epath's fsspec backend (with TensorFlow importable epath would use
  `tf.io.gfile`, whose GCS client has no endpoint override), and gcsfs honours
  `STORAGE_EMULATOR_HOST` and then sends no credentials.
* tensorstore (orbax's array writer) honours `TENSORSTORE_GCS_HTTP_URL`; without credentials it
  logs one line and sends unauthenticated requests, which the emulator accepts.
* array_record (ArrayRecord shards on gs://) has its own GCS client, which honours
  `CLOUD_STORAGE_EMULATOR_ENDPOINT`.

Two gaps of the emulator are filled here: media downloads lack the `x-goog-generation` header
that tensorstore requires on every read, and the HTTP server's listen queue of 5 drops
connections when tensorstore opens many at once.

Run `python tests/gcs_emulator.py` to serve on a free port (printed on stdout) until stdin
closes.
"""

import contextlib
import os
import subprocess
import sys

import pytest

BUCKET = "test-bucket"


def _serve():
  """Subprocess entry: serve an in-memory GCS with `BUCKET` until stdin reaches EOF."""
  from http import server as http_server  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel

  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except  (a 404 was already answered)
      return
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]

  objects.download = download_with_generation  # `objects.get` calls it for ?alt=media.
  for _, routes in server.HANDLERS:
    for method, handler in routes.items():
      if handler is download:
        routes[method] = download_with_generation
  http_server.HTTPServer.request_queue_size = 256

  emulator = server.create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
  emulator.start()
  print(emulator._api._httpd.server_address[1], flush=True)  # pylint: disable=protected-access
  sys.stdin.read()
  emulator.stop()


def _forget_clients():
  """Drops cached gcsfs clients so the next `gs://` access reads the endpoint variables again."""
  from etils.epath import backend  # pylint: disable=import-outside-toplevel
  from etils.epath import gpath  # pylint: disable=import-outside-toplevel
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access  (re-read EPATH_USE_TF)
  if "gcsfs" in sys.modules:
    sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def emulated_gcs():
  """Starts the emulator and points epath, gcsfs and tensorstore at it; yields the base URL."""
  log = open(os.devnull, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=log, text=True)
  try:
    port = proc.stdout.readline().strip()
    if not port.isdigit():
      raise RuntimeError(f"the GCS emulator did not start (exit code {proc.poll()})")
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
      env.setenv("EPATH_USE_TF", "false")
      env.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
      env.setenv("STORAGE_EMULATOR_HOST", url)
      env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
      env.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", url)  # array_record's own GCS client
      _forget_clients()
      try:
        yield url
      finally:
        _forget_clients()
  finally:
    proc.stdin.close()
    try:
      proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()


@pytest.fixture(scope="module")
def gcs_bucket():
  """`gs://test-bucket`, served by a local emulator while the tests of one module run (the
  environment variables are restored after them). Skips without the test extra's emulator."""
  pytest.importorskip("gcp_storage_emulator")
  pytest.importorskip("gcsfs")
  with emulated_gcs():
    yield f"gs://{BUCKET}"


if __name__ == "__main__":
  _serve()
