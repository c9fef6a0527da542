"""The only place that adapts google-jetstream 0.2.2 to the current stack. Nothing else patches
third-party code.

Problems handled (found by running jetstream 0.2.2 with jax 0.10):

1. ``jetstream.core.orchestrator.delete_pytree`` calls ``jax.tree_map``, removed from jax: the first
   request kills the server (its ``JetThread`` SIGKILLs the process on any exception). We do *not*
   add ``tree_map`` to the real ``jax`` module (that would hide the removal from our own code);
   the orchestrator module alone gets a view of ``jax`` that also has ``tree_map = jax.tree.map``.
2. Importing ``jetstream.core.orchestrator`` sets the root logger to DEBUG and attaches a stdout
   handler. ``import_orchestrator`` undoes exactly that (the handlers it added, the level it set).
3. The orchestrator's detokenize thread is not a daemon: a process whose ``Driver`` is not stopped
   never exits. ``running_driver`` is a context manager that always calls ``driver.stop()``.

Use ``import_orchestrator()`` instead of importing ``jetstream.core.orchestrator`` directly.
"""

from __future__ import annotations

import contextlib
import logging
import types
from typing import Iterator

import jax

_PATCHED_ATTR = "_selfreward_jax_compat"


class _JaxWithTreeMap(types.ModuleType):
  """A read-only view of the ``jax`` module that also has the removed ``jax.tree_map``."""

  def __init__(self):
    super().__init__("jax")
    self.tree_map = jax.tree.map

  def __getattr__(self, name):
    return getattr(jax, name)


def _restore_root_logger(level: int, handlers: list) -> None:
  root = logging.getLogger()
  for h in list(root.handlers):
    if h not in handlers:
      root.removeHandler(h)
  root.setLevel(level)


def import_orchestrator() -> types.ModuleType:
  """Imports ``jetstream.core.orchestrator`` with the shims above applied; idempotent.

  Returns the module. The root logger's level and handlers are as they were before the call.
  """
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  try:
    from jetstream.core import orchestrator  # pylint: disable=g-import-not-at-top
  finally:
    _restore_root_logger(level, handlers)
  if not getattr(orchestrator, _PATCHED_ATTR, False):
    if not hasattr(jax, "tree_map"):
      orchestrator.jax = _JaxWithTreeMap()
    setattr(orchestrator, _PATCHED_ATTR, True)
  return orchestrator


@contextlib.contextmanager
def running_driver(driver) -> Iterator:
  """Yields ``driver`` and always calls ``driver.stop()`` on exit (its non-daemon detokenize
  thread would otherwise keep the process alive forever)."""
  try:
    yield driver
  finally:
    driver.stop()
