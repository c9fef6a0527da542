"""Train-state checkpoints with orbax: async saves every N steps, retention, resume onto any mesh.

A checkpoint at step s holds the ``TrainState`` after s updates (params, optimizer state, step,
rng) and a JSON ``meta`` dict (the data position of the next batch, the data fingerprint, ...).
Restoring uses an abstract target of ``jax.ShapeDtypeStruct(..., sharding=...)`` built for the
*current* mesh, so a run saved on one topology resumes on another.

Async saves run in the background; an unfinished save is discarded by orbax (a killed process
leaves only finalised checkpoints visible), and ``close()`` waits for pending saves: always use
the ``Checkpointer`` as a context manager (or close it in a ``finally``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores ``(state, meta)`` under ``directory`` (one subdirectory per step).

  Args:
    directory: where checkpoints live (created if missing).
    save_every: ``maybe_save`` saves when ``step % save_every == 0`` (or when forced).
    max_to_keep: keep the newest this many (None: all). Counts every step in the directory.
    async_save: save in a background thread (training continues while the write happens).
  """

  def __init__(self, directory: str, *, save_every: int = 200, max_to_keep: Optional[int] = 3,
               async_save: bool = True):
    if save_every <= 0:
      raise ValueError(f"save_every={save_every} must be positive")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = save_every
    # cleanup_tmp_directories: a save cut short by a killed process leaves a tmp directory;
    # it is removed here (orbax never lists it as a checkpoint).
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    """Newest finalised step, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: Dict[str, Any]) -> bool:
    """Starts saving ``state`` (a pytree of jax Arrays) and ``meta`` (JSON) as ``step``."""
    if step in self._manager.all_steps():
      return False
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=True)
    if saved:
      log.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def maybe_save(self, step: int, state: Any, meta: Dict[str, Any], force: bool = False) -> bool:
    if force or step % self.save_every == 0:
      return self.save(step, state, meta)
    return False

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """``(state, meta)`` of ``step``, laid out as ``abstract_state`` (ShapeDtypeStructs with
    shardings on the current mesh)."""
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    return out.state, dict(out.meta)

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the params of ``step`` (orbax partial restore: the optimizer state is not read),
    laid out as ``abstract_params`` (ShapeDtypeStructs with shardings)."""
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
        abstract_params)
    out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": abstract_params}, restore_args={"params": restore_args},
        partial_restore=True)))
    return out.state["params"]

  def wait(self) -> None:
    """Blocks until pending async saves are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def load_trained_params(workdir: str, config, mesh=None, step: Optional[int] = None):
  """The float32 params of a trainer run's checkpoint (default: the newest) in ``workdir``,
  sharded on ``mesh`` (default: all devices on fsdp) -- e.g. M1 from a finished SFT stage, without
  rerunning the trainer. Raises ``FileNotFoundError`` if there is no checkpoint.

  A run finished when ``<workdir>/summary.json`` exists; its newest checkpoint is then the final
  step.
  """
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.state import abstract_param_tree  # pylint: disable=g-import-not-at-top
  mesh = mesh if mesh is not None else shd.make_mesh(shd.MeshConfig())
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoints in {workdir}")
  with Checkpointer(directory) as ckpt:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no finished checkpoint in {directory}")
    abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                            abstract_param_tree(config), shd.param_shardings(config, mesh))
    return ckpt.restore_params(step, abstract)
