"""The file system of mdd: local folders and object stores (`gs://...`) alike, through `etils.epath`.

Everything mdd reads or writes under a workdir goes through these helpers (or through orbax,
which uses epath itself), so `--workdir=gs://bucket/run` behaves like a local folder. Paths stay
strings: `os.path.join` keeps `gs://` intact, `os.path.abspath` would not, hence `absolute`.

Which client serves `gs://` is epath's choice: `tf.io.gfile` when TensorFlow is importable, else
fsspec's gcsfs; `EPATH_USE_TF=false` picks gcsfs always (the tests do, against a local emulator,
since TensorFlow's GCS client cannot be pointed at one). gcsfs would cache directory listings
forever; other writers (tensorstore under orbax, other processes and hosts) change the store
behind its back, so that cache is turned off here.

Atomic writes (a reader never sees half a file): locally a temporary file beside the target and
a rename; on an object store an object becomes visible only when its upload completes, so the
bytes are built in memory and uploaded once, to the final name (a "rename" there is a copy and a
delete, no more atomic). Object stores have no appending, no exclusive creation and no memory
mapping: `create_exclusive` is best effort there, and `mdd.train.metrics` and
`mdd.data.token_shards` say how they cope.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from typing import Iterator, Union

import numpy as np
from etils import epath

PathLike = Union[str, os.PathLike]

# Before any gcsfs client exists (epath creates one on the first gs:// access). Without fsspec
# (an image that never touches gs://, e.g. the GPU benchmark one) there is nothing to configure.
try:
  import fsspec.config  # pylint: disable=g-import-not-at-top
  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
except ImportError:
  pass


def is_remote(p: PathLike) -> bool:
  """Whether `p` is a URL (`gs://`, `s3://`, ...) rather than a local path."""
  return "://" in os.fspath(p)


def _scheme(p: PathLike) -> str:
  """"gs", "s3", ... of a URL; "file" of a local path."""
  return os.fspath(p).split("://")[0] if is_remote(p) else "file"


def absolute(p: PathLike) -> str:
  """`p` as an absolute path string: local paths `~`-expanded and made absolute, URLs as given
  (less a trailing slash)."""
  text = os.fspath(p)
  if is_remote(text):
    return text.rstrip("/")
  return os.path.abspath(os.path.expanduser(text))


def path(p: PathLike) -> epath.Path:
  """The `epath.Path` of `p` (see `absolute`)."""
  return epath.Path(absolute(p))


def local_mirror(url: str) -> str:
  """A local folder for what must stay on this machine for a remote folder (caches that are
  memory-mapped): `$XDG_CACHE_HOME/mdd/<scheme>/<bucket>/<path>` (default `~/.cache`)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(base, "mdd", absolute(url).replace("://", "/", 1))


# Queries and folders.

def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def isfile(p: PathLike) -> bool:
  target = path(p)
  return target.exists() and not target.is_dir()


def makedirs(p: PathLike) -> None:
  """Creates folder `p` and its parents (on an object store: whatever the client does for
  folders, often nothing)."""
  path(p).mkdir(parents=True, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """The names in folder `p`, sorted; [] when it is not a folder."""
  folder = path(p)
  if not folder.is_dir():
    return []
  return sorted(child.name for child in folder.iterdir())


def remove(p: PathLike) -> None:
  """Deletes file `p`; a missing file is not an error."""
  with contextlib.suppress(FileNotFoundError):
    path(p).unlink()


def rmtree(p: PathLike) -> None:
  """Deletes folder `p` and everything under it."""
  path(p).rmtree()


def move(src: PathLike, dst: PathLike) -> None:
  """Renames a file or folder: atomic on a local disk. On an object store, which has no folders
  to rename, the objects are copied (server-side within one store) and then deleted, so a
  reader may meet both copies meanwhile."""
  if not is_remote(src) and not is_remote(dst):
    os.replace(absolute(src), absolute(dst))
    return
  was_folder = isdir(src)
  copy(src, dst)
  if was_folder:
    rmtree(src)
  else:
    remove(src)


def copy(src: PathLike, dst: PathLike) -> None:
  """Copies a file or a folder tree to `dst`, between any two file systems."""
  source, target = path(src), path(dst)
  if not source.exists():
    raise FileNotFoundError(f"{src} not found")
  if not is_remote(source) and not is_remote(target):
    if source.is_dir():
      shutil.copytree(source, target)
    else:
      shutil.copy2(source, target)
    return
  if source.is_dir():
    target.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
      copy(child, target / child.name)
    return
  if _scheme(source) == _scheme(target):
    source.copy(target, overwrite=True)  # One store: the server copies.
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  with source.open("rb") as reader, target.open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)


# Reading.

def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def read_json(p: PathLike, *, fix: str) -> dict:
  """The JSON in `p`; a file that is not JSON is a one-line ValueError naming it and `fix`."""
  text = read_text(p)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{p} is not valid JSON ({e}); {fix}") from None


def read_json_record(p: PathLike):
  """A record file a stage compares against to skip work (e.g. samples/done.json): its JSON, or
  None when it is missing or unreadable (the work is then simply redone)."""
  try:
    return json.loads(read_text(p))
  except (OSError, ValueError):
    return None


@contextlib.contextmanager
def open_npz(p: PathLike) -> Iterator[np.lib.npyio.NpzFile]:
  """`np.load` of an `.npz` whose members are read when accessed (a remote file through a
  seekable stream, so reading `data.files` or one member does not download the rest)."""
  if not is_remote(p):
    with np.load(absolute(p)) as data:
      yield data
    return
  with path(p).open("rb") as stream, np.load(stream) as data:
    yield data


def load_npz(p: PathLike) -> dict[str, np.ndarray]:
  """Every array of an `.npz` file, read into memory (a local file straight from disk, a remote
  one through one download; `.npz` members cannot be memory-mapped either way)."""
  source = io.BytesIO(read_bytes(p)) if is_remote(p) else absolute(p)
  with np.load(source) as data:
    return {key: data[key] for key in data.files}


# Writing.

def write_bytes_atomic(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` so readers see the old file or the whole new one, never a part
  (creating the parent folder)."""
  target = absolute(p)
  if is_remote(target):
    path(target).write_bytes(data)  # One upload: the object appears when it is complete.
    return
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = f"{target}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text_atomic(p: PathLike, text: str) -> None:
  write_bytes_atomic(p, text.encode("utf-8"))


def write_json_atomic(p: PathLike, payload: dict) -> None:
  """Writes `payload` as indented, key-sorted JSON (atomically, see `write_bytes_atomic`)."""
  write_text_atomic(p, json.dumps(payload, indent=2, sort_keys=True))


def save_npz(p: PathLike, **arrays) -> None:
  """Writes `arrays` as an uncompressed `.npz` (atomically, see `write_bytes_atomic`)."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_atomic(p, buffer.getvalue())


def create_exclusive(p: PathLike, text: str) -> bool:
  """Creates file `p` holding `text` unless it exists; whether this call created it.

  Exclusive on a local disk (O_EXCL). An object store offers no exclusive create through epath:
  there the file is written when absent and read back, and the call wins only if it reads its
  own text. Two writers that both found it absent mostly end with one winner, but both win when
  one writes after the other has read back: best effort."""
  target = absolute(p)
  if not is_remote(target):
    try:
      fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    return True
  if exists(target):
    return False
  write_text_atomic(target, text)
  return read_text(target) == text
