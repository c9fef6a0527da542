"""JSONL and JSON artifacts: validated reading (errors name file, line and field) and atomic writing
(write to a temp file in the same directory, fsync, rename), so a killed process never leaves a
half-written artifact behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence


class DataError(ValueError):
  """Bad input data; the message names the file, the line (1-based) and the field."""

  def __init__(self, path: str, line: Optional[int], message: str, field: Optional[str] = None):
    where = f"{path}" + (f":{line}" if line is not None else "")
    what = f" field {field!r}:" if field else ""
    super().__init__(f"{where}:{what} {message}")
    self.path, self.line, self.field = path, line, field


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: Optional[str] = "utf-8", *,
                shared: bool = True):
  """Opens a temp file next to ``path``; on clean exit fsyncs and renames it over ``path``.

  On an exception the temp file is removed and ``path`` is left as it was.

  In a multi-process run (``selfreward_jax.distributed``) with ``shared`` (default) the file is a
  shared artifact: every process must make the same call, only process 0 writes (the others write
  into a discarded sink), and all processes then wait at a barrier, so the file exists for every
  process once the call returns. ``shared=False``: this process writes its own file, no barrier
  (for files written by one process only, e.g. under ``if distributed.is_writer()``).
  """
  from selfreward_jax import distributed  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if shared and distributed.is_multiprocess():
    if distributed.is_writer():
      with atomic_open(path, mode, encoding, shared=False) as f:
        yield f
    else:
      with open(os.devnull, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
    distributed.barrier(f"atomic_open {os.path.basename(path)}")
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]], *, shared: bool = True) -> int:
  """Atomically writes one JSON object per line; returns the number of records. ``shared``: see
  ``atomic_open`` (multi-process runs)."""
  n = 0
  with atomic_open(path, shared=shared) as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n")
      n += 1
  return n


def write_json(path: str, obj: Any, indent: int = 2, *, shared: bool = True) -> None:
  """Atomically writes a JSON document. ``shared``: see ``atomic_open`` (multi-process runs)."""
  with atomic_open(path, shared=shared) as f:
    json.dump(obj, f, indent=indent, ensure_ascii=False)
    f.write("\n")


def read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise DataError(path, None, "file not found") from None
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


def iter_jsonl(path: str, required: Mapping[str, type] | Sequence[str] = (),
               validate: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
               ) -> Iterator[tuple[int, Dict[str, Any]]]:
  """Yields ``(line_number, record)`` for each non-blank line of a JSONL file.

  Args:
    required: field names that must be present, or ``{name: type}`` to also check the type
      (``str`` fields may not be ``None``).
    validate: optional extra check returning an error message (or None).

  Raises:
    DataError naming the file, the line and the field for a malformed line.
  """
  path = os.fspath(path)
  types = dict(required) if isinstance(required, Mapping) else {k: object for k in required}
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError:
    raise DataError(path, None, "file not found") from None
  with f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
      if not isinstance(rec, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
      for key, typ in types.items():
        if key not in rec:
          raise DataError(path, lineno, "missing", field=key)
        if typ is not object and not isinstance(rec[key], typ):
          raise DataError(path, lineno, f"expected {getattr(typ, '__name__', typ)}, got "
                          f"{type(rec[key]).__name__}", field=key)
      if validate is not None:
        msg = validate(rec)
        if msg:
          raise DataError(path, lineno, msg)
      yield lineno, rec


def read_jsonl(path: str, required: Mapping[str, type] | Sequence[str] = (),
               validate: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None
               ) -> List[Dict[str, Any]]:
  """All records of a JSONL file (see ``iter_jsonl`` for validation)."""
  return [rec for _, rec in iter_jsonl(path, required, validate)]
