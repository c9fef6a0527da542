"""Training metrics: a JSONL file (one record per logged step), TensorBoard scalars, a tqdm bar.

``metrics.jsonl`` records are ``{"step": s, "time": unix seconds, <name>: float, ...}`` where ``s``
is the number of updates done (the loss of record s is the loss of the batch used by update s,
computed before that update). On resume the file is cut back to the restored step first, so the
file always tells the story of the run that produced the current checkpoint, with no duplicates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping

from selfreward_jax.data.jsonl import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

# names shown in the progress bar when present
_BAR_KEYS = ("loss", "reward_accuracy", "reward_margin", "tokens_per_s")


def is_finite(metrics: Mapping[str, Any], keys=("loss", "grad_norm")) -> bool:
  return all(math.isfinite(float(metrics[k])) for k in keys if k in metrics)


class MetricsLogger:
  """Writes scalars to ``<workdir>/metrics.jsonl`` and (optionally) TensorBoard ``<workdir>/tb``.

  Args:
    workdir: run directory.
    total_steps: length of the progress bar.
    start_step: the step training (re)starts from; JSONL records after it are dropped.
    tensorboard, progress: enable TensorBoard / the tqdm bar.
    prefix: TensorBoard tag prefix (e.g. "sft/").
    enabled: False makes every method a no-op (non-zero processes of a multi-host run).
  """

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, progress: bool = True, prefix: str = "",
               enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.prefix = prefix
    self._file = self._tb = self._bar = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate(start_step)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total_steps, initial=start_step, desc=prefix.rstrip("/") or "train",
                       dynamic_ncols=True)

  def _truncate(self, start_step: int) -> None:
    if not os.path.exists(self.path):
      return
    records, bad = [], 0
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a killed process
          bad += 1
    kept = [r for r in records if int(r.get("step", 0)) <= start_step]
    if len(kept) != len(records) or bad:
      log.info("metrics: dropping %d records after the resumed step %d (%d unreadable)",
               len(records) - len(kept), start_step, bad)
      write_jsonl(self.path, kept, shared=False)  # only the enabled process gets here

  def log(self, step: int, metrics: Mapping[str, float]) -> None:
    """Records ``metrics`` (python floats) for ``step``."""
    if self._file is None:
      return
    rec = {"step": int(step), "time": round(time.time(), 3)}
    rec.update({k: float(v) for k, v in metrics.items()})
    self._file.write(json.dumps(rec) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if math.isfinite(float(v)):
          self._tb.add_scalar(self.prefix + k, float(v), step)
    if self._bar is not None:
      self._bar.set_postfix({k: f"{float(metrics[k]):.4g}" for k in _BAR_KEYS if k in metrics},
                            refresh=False)

  def advance(self, n: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(n)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    if self._bar is not None:
      self._bar.close()


def read_metrics(workdir: str) -> list:
  """The records of ``<workdir>/metrics.jsonl``."""
  return read_jsonl(os.path.join(workdir, "metrics.jsonl"))
