"""Multi-host runs: ``jax.distributed`` start-up, process-0 writes, barriers, host gathers.

A multi-host run is one SPMD program on a global mesh: every process (one per host) runs the same
Python code on the same inputs, and jitted computations span all hosts' devices. What differs per
process:

* **data**: each process materialises only the batch rows its own devices hold and the global
  batch is assembled with ``jax.make_array_from_process_local_data`` (``train.step``,
  ``data.batching.Batcher(local_rows=...)``);
* **files**: the run directory must be on a filesystem every host sees (GCS via gcsfuse, NFS,
  Filestore). Shared artifacts (JSON/JSONL, markers, reports, tokenizers, HF exports) are written
  by process 0 only (``is_writer``) and every process waits at a barrier after each write, so a
  file is visible to all processes once any of them moves on; orbax checkpoints are written by all
  processes together (each writes its own shards);
* **sampling**: the decode slots are sharded over the mesh's batch axes, so each host's devices
  decode their share of the prompts; the tokens of every chunk of decode steps come back
  replicated, so every process builds the same outputs and the same artifacts.

``initialize`` is called by ``main`` before anything touches a device. Everything here is a no-op
in a single-process run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, List, Sequence, Tuple

import jax
import numpy as np

log = logging.getLogger(__name__)

INITIALIZE_MODES = ("auto", "yes", "no")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """When and how ``main`` calls ``jax.distributed.initialize``.

  initialize: "auto" (default): initialise when a coordinator address is given here or in
    ``JAX_COORDINATOR_ADDRESS``, when ``num_processes > 1``, or on a multi-host Cloud TPU slice
    (``TPU_WORKER_HOSTNAMES`` lists several workers); "yes": always (with no address, JAX detects
    the cluster: Cloud TPU, SLURM, Open MPI, Kubernetes); "no": never.
  coordinator_address: "host:port" of process 0 (empty: ``JAX_COORDINATOR_ADDRESS``, else
    auto-detected by JAX).
  num_processes, process_id: 0 / -1: from ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` when set
    (our convention for GPU nodes without a cluster manager), else auto-detected by JAX.
  local_device_ids: devices this process uses (empty: all of its devices).
  timeout_s: how long to wait for every process to join.
  """

  initialize: str = "auto"
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  local_device_ids: Tuple[int, ...] = ()
  timeout_s: int = 300

  def __post_init__(self):
    if self.initialize not in INITIALIZE_MODES:
      raise ValueError(f"DistributedConfig.initialize={self.initialize!r}; allowed: {INITIALIZE_MODES}")
    if self.num_processes < 0 or self.process_id < -1 or self.timeout_s <= 0:
      raise ValueError("DistributedConfig: num_processes >= 0, process_id >= -1, timeout_s > 0")

  def wanted(self, environ=None) -> bool:
    """Whether ``initialize`` should start the distributed runtime."""
    env = os.environ if environ is None else environ
    if self.initialize != "auto":
      return self.initialize == "yes"
    workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w.strip()]
    return bool(self.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
                or self.num_processes > 1 or int(env.get("JAX_NUM_PROCESSES") or 0) > 1
                or len(workers) > 1)


def initialize(config: DistributedConfig = DistributedConfig()) -> bool:
  """Starts ``jax.distributed`` if ``config`` asks for it (see ``DistributedConfig``); returns
  whether this is a multi-process run. Must run before any device is used; a second call is a
  no-op."""
  if jax.distributed.is_initialized():
    return is_multiprocess()
  if not config.wanted():
    return False
  kwargs = {"initialization_timeout": config.timeout_s}
  if config.coordinator_address:
    kwargs["coordinator_address"] = config.coordinator_address
  num_processes = config.num_processes or int(os.environ.get("JAX_NUM_PROCESSES") or 0)
  process_id = config.process_id if config.process_id >= 0 else int(
      os.environ.get("JAX_PROCESS_ID") or -1)
  if num_processes:
    kwargs["num_processes"] = num_processes
  if process_id >= 0:
    kwargs["process_id"] = process_id
  if config.local_device_ids:
    kwargs["local_device_ids"] = list(config.local_device_ids)
  jax.distributed.initialize(**kwargs)
  log.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return is_multiprocess()


initialize_distributed = initialize  # the name exported by the package


def is_multiprocess() -> bool:
  """True in a run of several JAX processes (never initialises a backend by itself)."""
  return jax.distributed.is_initialized() and jax.process_count() > 1


def process_index() -> int:
  return jax.process_index() if is_multiprocess() else 0


def is_writer() -> bool:
  """Whether this process writes shared files (process 0, or the only process)."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op in one process)."""
  if is_multiprocess():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def allgather_bytes(data: bytes) -> List[bytes]:
  """``data`` of every process, in process order (a collective: every process must call it)."""
  if not is_multiprocess():
    return [bytes(data)]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([len(data)], np.int64)))
  sizes = sizes.reshape(-1)
  buf = np.zeros((int(sizes.max()) or 1,), np.uint8)
  buf[:len(data)] = np.frombuffer(data, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), -1)
  return [gathered[i, :int(n)].tobytes() for i, n in enumerate(sizes)]


def allgather_json(obj: Any) -> List[Any]:
  """A JSON-serialisable ``obj`` of every process, in process order (a collective)."""
  return [json.loads(b.decode("utf-8")) for b in allgather_bytes(json.dumps(obj).encode("utf-8"))]


def broadcast_json(obj: Any) -> Any:
  """Process 0's ``obj`` on every process (a collective)."""
  return allgather_json(obj if is_writer() else None)[0]


def check_same(name: str, obj: Any) -> None:
  """Raises ``RuntimeError`` naming the processes whose ``obj`` differs from process 0's (a
  collective; for catching divergent SPMD control flow early, e.g. different stage lists)."""
  values = allgather_json(obj)
  bad = [i for i, v in enumerate(values) if v != values[0]]
  if bad:
    raise RuntimeError(f"{name} differs between processes: process 0 has {values[0]!r}, "
                       f"processes {bad} have {[values[i] for i in bad]!r}")


def check_shared_dir(directory: str) -> None:
  """Raises ``RuntimeError`` unless every process sees the same ``directory`` (a collective; no-op
  in one process): process 0 writes a probe file with a random token, the others must read it."""
  if not is_multiprocess():
    return
  os.makedirs(directory, exist_ok=True)
  probe = os.path.join(directory, ".shared-dir-probe")
  token = broadcast_json(os.urandom(8).hex() if is_writer() else None)
  if is_writer():
    with open(probe, "w", encoding="utf-8") as f:
      f.write(token)
  barrier("check_shared_dir written")
  try:
    with open(probe, encoding="utf-8") as f:
      seen = f.read()
  except OSError:
    seen = None
  seen_all = allgather_json(seen == token)
  if is_writer():
    os.remove(probe)
  missing = [i for i, ok in enumerate(seen_all) if not ok]
  if missing:
    raise RuntimeError(f"{directory} is not shared: processes {missing} do not see the file process "
                       "0 wrote there. A multi-host run needs its workdir on a filesystem every host "
                       "mounts (NFS/Filestore, or a gcsfuse mount of a bucket)")


def process_rows(mesh, rows: int, axes: Sequence[str] = ("data", "fsdp")) -> Tuple[int, int]:
  """``[lo, hi)``: the rows of a ``[rows, ...]`` batch sharded over ``axes`` of ``mesh`` that this
  process's devices hold (all rows in a single-process run). Raises ``ValueError`` if they are not
  one contiguous block (reorder the mesh's devices so each host's devices are adjacent on the
  batch axes)."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  sharding = NamedSharding(mesh, P(tuple(axes)))
  spans = sorted({(idx[0].start or 0, rows if idx[0].stop is None else idx[0].stop)
                  for idx in sharding.addressable_devices_indices_map((rows,)).values()})
  lo, hi = spans[0][0], spans[-1][1]
  covered = sum(b - a for a, b in spans)
  if covered != hi - lo or any(a < b_prev for (_, b_prev), (a, _) in zip(spans, spans[1:])):
    raise ValueError(f"process {process_index()} holds batch rows {spans} of {rows}, not one "
                     "contiguous block; build the mesh so each host's devices are adjacent on the "
                     "batch axes (sharding.make_mesh does)")
  return lo, hi
