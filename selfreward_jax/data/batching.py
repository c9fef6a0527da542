"""From JSONL records to fixed-shape training batches: chat-template tokenization, loss masks on
response tokens, skip rules, bucketed padding, optional packing, deterministic shuffling with a
resumable data position.

Records (one JSON object per line; a malformed line raises ``DataError`` naming file and line):

* SFT: ``{"prompt": str, "response": str}`` (optional ``"system": str``), or
  ``{"messages": [{"role", "content"}, ...]}`` ending with the assistant turn to learn (earlier
  turns are context: only the final assistant turn is a target).
* Preference pairs (DPO): ``{"prompt": str | messages ending with a user turn, "chosen": str,
  "rejected": str}`` (optional ``"system"``).

Every example is ``Tokenizer.encode_chat_example(prompt, response)``: the Llama 2 chat prompt,
then the response and EOS; the loss mask is 1 exactly on the response tokens and the EOS.

Skip rule (counted per reason, logged, and kept in ``SkipStats``; never silent):

* ``empty_response``: the response (or either side of a pair) is empty or whitespace only.
* ``identical_pair``: chosen and rejected are equal after stripping whitespace (no preference).
* ``too_long``: prompt + response is longer than ``max_len`` tokens (for a pair: either side).
  Truncation policy = **drop**: such examples are skipped whole, never cut, because cutting the
  prompt from the left destroys the chat template (BOS, ``[INST]``) and cutting the response
  teaches the model to stop mid-answer without EOS. Raise ``max_len`` if too many are dropped
  (a warning is logged when more than 10 % are).

Batches: a stream of example indices, epoch after epoch, each epoch a permutation drawn from
``(seed, epoch)``; a batch takes the next ``batch_size`` rows from the stream (a batch may straddle
two epochs). ``DataPosition(epoch, index)`` is the place of the next example in that stream: saving
it with a checkpoint and restoring it gives the same batches as an uninterrupted run. Each batch
is padded (right, with ``pad_id``) to the smallest bucket length that fits its longest row, so a
run compiles one program per bucket, not per batch. With packing (SFT), each row is filled
greedily in stream order with whole examples up to the largest bucket; examples in a row get
segment ids 1, 2, ... (0 = padding) and positions restarting at 0.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from selfreward_jax.data.jsonl import DataError, iter_jsonl

log = logging.getLogger(__name__)

SKIP_REASONS = ("empty_response", "identical_pair", "too_long")
WARN_SKIP_FRACTION = 0.10


# ---- skip bookkeeping ----------------------------------------------------------------------------

@dataclasses.dataclass
class SkipStats:
  """Counts of kept and skipped records, with the first few skipped line numbers per reason."""

  path: str = ""
  kept: int = 0
  skipped: Dict[str, int] = dataclasses.field(default_factory=collections.Counter)
  lines: Dict[str, List[int]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, line: int) -> None:
    assert reason in SKIP_REASONS, reason
    self.skipped[reason] += 1
    self.lines.setdefault(reason, [])
    if len(self.lines[reason]) < 10:
      self.lines[reason].append(line)

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def to_dict(self) -> dict:
    return {"path": self.path, "kept": self.kept, "skipped": dict(self.skipped),
            "first_skipped_lines": self.lines}

  def log(self, logger: logging.Logger = log) -> None:
    """Logs the counts; a warning when anything was skipped, louder above 10 %."""
    n = self.kept + self.total_skipped
    if not self.total_skipped:
      logger.info("%s: %d examples, none skipped", self.path, self.kept)
      return
    detail = ", ".join(f"{k}={v} (e.g. lines {self.lines[k][:3]})" for k, v in self.skipped.items())
    msg = f"{self.path}: kept {self.kept} of {n} examples; skipped {detail}"
    if self.total_skipped > WARN_SKIP_FRACTION * n:
      msg += f" -- more than {WARN_SKIP_FRACTION:.0%} skipped; check max_len and the data"
    logger.warning(msg)


# ---- tokenized examples --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SFTExample:
  """One tokenized example: int32 ``ids`` [n] and ``loss_mask`` [n]; ``line`` in the source file."""

  ids: np.ndarray
  loss_mask: np.ndarray
  line: int = 0

  def __len__(self) -> int:
    return len(self.ids)


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """A tokenized preference pair (both sides share the prompt tokens)."""

  chosen_ids: np.ndarray
  chosen_mask: np.ndarray
  rejected_ids: np.ndarray
  rejected_mask: np.ndarray
  line: int = 0

  def __len__(self) -> int:
    return max(len(self.chosen_ids), len(self.rejected_ids))


def _as_arrays(ids_mask) -> Tuple[np.ndarray, np.ndarray]:
  ids, mask = ids_mask
  return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def _check_optional_str(rec: Mapping[str, Any], key: str) -> Optional[str]:
  if key in rec and rec[key] is not None and not isinstance(rec[key], str):
    return f"field {key!r}: expected str, got {type(rec[key]).__name__}"
  return None


def _validate_sft(rec: Mapping[str, Any]) -> Optional[str]:
  if "messages" in rec:
    if not isinstance(rec["messages"], list) or not rec["messages"]:
      return "field 'messages': expected a non-empty list of {role, content} objects"
    return None
  for key in ("prompt", "response"):
    if key not in rec:
      return f"field {key!r}: missing (an SFT record has 'prompt' and 'response', or 'messages')"
    if not isinstance(rec[key], str):
      return f"field {key!r}: expected str, got {type(rec[key]).__name__}"
  return _check_optional_str(rec, "system")


def _validate_pair(rec: Mapping[str, Any]) -> Optional[str]:
  if not isinstance(rec["prompt"], (str, list)):
    return f"field 'prompt': expected str or a list of messages, got {type(rec['prompt']).__name__}"
  return _check_optional_str(rec, "system")


def _system_for(rec: Mapping[str, Any], default: Optional[str]) -> Optional[str]:
  """The record's own ``system`` field, else ``default`` -- unless the prompt is a message list
  that already starts with a system message (then it wins)."""
  if "system" in rec:
    return rec["system"]
  prompt = rec.get("prompt", rec.get("messages"))
  if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping) \
      and prompt[0].get("role") == "system":
    return None
  return default


def load_sft_examples(path: str, tokenizer, max_len: int, *, system: Optional[str] = None
                      ) -> Tuple[List[SFTExample], SkipStats]:
  """Reads and tokenizes an SFT JSONL file, applying the module's skip rule.

  ``system``: a default system prompt for records without one (None: no system block).
  Raises ``DataError`` (file:line) for malformed records, including chat-template errors.
  """
  stats = SkipStats(path=str(path))
  out = []
  for line, rec in iter_jsonl(path, validate=_validate_sft):
    try:
      if "messages" in rec:
        msgs = rec["messages"]
        last = msgs[-1] if isinstance(msgs[-1], Mapping) else {}
        if last.get("role") != "assistant":
          raise ValueError("the last message must be the assistant response to learn")
        if isinstance(last.get("content"), str) and not last["content"].strip():
          stats.skip("empty_response", line)
          continue
        ids, mask = _as_arrays(tokenizer.encode_chat_example(msgs, system=_system_for(rec, system)))
      else:
        if not rec["response"].strip():
          stats.skip("empty_response", line)
          continue
        ids, mask = _as_arrays(tokenizer.encode_chat_example(
            rec["prompt"], rec["response"], system=_system_for(rec, system)))
    except (ValueError, TypeError) as e:
      raise DataError(str(path), line, str(e), field="messages" if "messages" in rec else None) from None
    if len(ids) > max_len:
      stats.skip("too_long", line)
      continue
    out.append(SFTExample(ids, mask, line))
  stats.kept = len(out)
  return out, stats


def load_preference_pairs(path: str, tokenizer, max_len: int, *, system: Optional[str] = None
                          ) -> Tuple[List[PreferencePair], SkipStats]:
  """Reads and tokenizes a preference-pair JSONL file, applying the module's skip rule."""
  stats = SkipStats(path=str(path))
  out = []
  required = {"prompt": object, "chosen": str, "rejected": str}
  for line, rec in iter_jsonl(path, required=required, validate=_validate_pair):
    chosen, rejected = rec["chosen"], rec["rejected"]
    if not chosen.strip() or not rejected.strip():
      stats.skip("empty_response", line)
      continue
    if chosen.strip() == rejected.strip():
      stats.skip("identical_pair", line)
      continue
    sys_prompt = _system_for(rec, system)
    try:
      w_ids, w_mask = _as_arrays(tokenizer.encode_chat_example(rec["prompt"], chosen, system=sys_prompt))
      l_ids, l_mask = _as_arrays(tokenizer.encode_chat_example(rec["prompt"], rejected, system=sys_prompt))
    except (ValueError, TypeError) as e:
      raise DataError(str(path), line, str(e), field="prompt") from None
    if max(len(w_ids), len(l_ids)) > max_len:
      stats.skip("too_long", line)
      continue
    out.append(PreferencePair(w_ids, w_mask, l_ids, l_mask, line))
  stats.kept = len(out)
  return out, stats


def fingerprint(examples: Sequence[Any]) -> str:
  """sha256 of the tokenized examples (ids and masks, in order): identifies a dataset exactly, so
  a resumed run or a cached reference artifact can check it is looking at the same data."""
  h = hashlib.sha256()
  for ex in examples:
    for f in dataclasses.fields(ex):
      v = getattr(ex, f.name)
      if isinstance(v, np.ndarray):
        h.update(np.int64(len(v)).tobytes())
        h.update(np.ascontiguousarray(v, np.int32).tobytes())
  return h.hexdigest()


# ---- buckets -------------------------------------------------------------------------------------

def default_buckets(max_len: int, min_len: int = 64) -> Tuple[int, ...]:
  """Powers of two from ``min_len`` below ``max_len``, then ``max_len`` itself."""
  out, n = [], min_len
  while n < max_len:
    out.append(n)
    n *= 2
  return tuple(out) + (max_len,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length; raises if none fits."""
  for b in sorted(buckets):
    if length <= b:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}")


# ---- shuffled stream with a resumable position ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Place of the next example in the shuffled stream: ``index`` within epoch ``epoch``'s order."""

  epoch: int = 0
  index: int = 0

  def to_dict(self) -> dict:
    return {"epoch": int(self.epoch), "index": int(self.index)}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "DataPosition":
    return cls(int(d["epoch"]), int(d["index"]))


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order of examples in ``epoch``: a permutation drawn from (seed, epoch) (or 0..n-1)."""
  if not shuffle:
    return np.arange(n)
  return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


class NothingToTrainError(ValueError):
  """Every example of a data file was skipped (or the file is empty)."""


class _Stream:
  """Walks the example stream from a ``DataPosition``."""

  def __init__(self, n: int, seed: int, shuffle: bool, position: DataPosition):
    if n <= 0:
      raise NothingToTrainError("no examples to train on (all were skipped, or the file is empty)")
    self.n, self.seed, self.shuffle = n, seed, shuffle
    self.position = position
    self._orders: Dict[int, np.ndarray] = {}

  def _order(self, epoch: int) -> np.ndarray:
    if epoch not in self._orders:
      self._orders = {epoch: epoch_order(self.n, self.seed, epoch, self.shuffle)}
    return self._orders[epoch]

  def peek(self) -> int:
    return int(self._order(self.position.epoch)[self.position.index])

  def advance(self) -> None:
    e, i = self.position.epoch, self.position.index + 1
    self.position = DataPosition(e + 1, 0) if i >= self.n else DataPosition(e, i)


# ---- collation -----------------------------------------------------------------------------------

def collate_sft(examples: Sequence[SFTExample], rows: Sequence[Sequence[int]], length: int,
                pad_id: int = 0) -> Dict[str, np.ndarray]:
  """Rows of (packed) examples -> int32 [B, length] ``tokens``, ``loss_mask``, ``segment_ids``,
  ``positions`` (see ``train.objectives`` for the layout)."""
  b = len(rows)
  tokens = np.full((b, length), pad_id, np.int32)
  mask, seg, pos = (np.zeros((b, length), np.int32) for _ in range(3))
  for r, row in enumerate(rows):
    t = 0
    for s, idx in enumerate(row, start=1):
      ex = examples[idx]
      n = len(ex)
      tokens[r, t:t + n], mask[r, t:t + n] = ex.ids, ex.loss_mask
      seg[r, t:t + n], pos[r, t:t + n] = s, np.arange(n)
      t += n
  return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}


def collate_pairs(pairs: Sequence[PreferencePair], rows: Sequence[Sequence[int]], length: int,
                  pad_id: int = 0, ref_logps: Optional[Tuple[np.ndarray, np.ndarray]] = None
                  ) -> Dict[str, np.ndarray]:
  """Rows of one pair each -> int32 [B, length] ``{chosen,rejected}_{tokens,loss_mask,
  attention_mask}``, plus float32 [B] ``ref_{chosen,rejected}_logps`` gathered from ``ref_logps``
  (arrays indexed like ``pairs``) when given."""
  b = len(rows)
  out = {}
  for side in ("chosen", "rejected"):
    tokens = np.full((b, length), pad_id, np.int32)
    mask, attn = np.zeros((b, length), np.int32), np.zeros((b, length), np.int32)
    for r, row in enumerate(rows):
      (idx,) = row
      ids, m = getattr(pairs[idx], f"{side}_ids"), getattr(pairs[idx], f"{side}_mask")
      tokens[r, :len(ids)], mask[r, :len(ids)], attn[r, :len(ids)] = ids, m, 1
    out.update({f"{side}_tokens": tokens, f"{side}_loss_mask": mask, f"{side}_attention_mask": attn})
  if ref_logps is not None:
    idx = np.asarray([row[0] for row in rows])
    out["ref_chosen_logps"] = np.asarray(ref_logps[0], np.float32)[idx]
    out["ref_rejected_logps"] = np.asarray(ref_logps[1], np.float32)[idx]
  return out


# ---- batcher -------------------------------------------------------------------------------------

class Batcher:
  """Deterministic batches ``[microbatches, batch_size / microbatches, T]`` from a list of examples.

  Args:
    lengths: token length of each example (``len(example)``).
    collate: ``(rows, length) -> {name: [B, length] or [B] array}``.
    batch_size: rows per batch (the global batch; all microbatches together).
    microbatches: M; ``batch_size`` must be divisible by it.
    buckets: allowed padded lengths; the longest must be >= every example.
    seed, shuffle: the stream order (see the module docstring).
    pack: fill each row with several whole examples up to ``max(buckets)`` tokens.
    position: where to start (a restored ``DataPosition``).
    local_rows: ``(lo, hi)``: materialise only rows ``lo:hi`` of each microbatch (this process's
      share on a multi-host mesh, ``distributed.process_rows``); batches are then
      ``[M, hi - lo, T]``. Every process plans the same global batch (indices only), so the
      padded length and the data position agree across processes. Default: all rows.
  """

  def __init__(self, lengths: Sequence[int], collate: Callable[..., Dict[str, np.ndarray]], *,
               batch_size: int, microbatches: int = 1, buckets: Sequence[int], seed: int = 0,
               shuffle: bool = True, pack: bool = False,
               position: DataPosition = DataPosition(),
               local_rows: Optional[Tuple[int, int]] = None):
    if batch_size <= 0 or microbatches <= 0 or batch_size % microbatches:
      raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                       f"microbatches={microbatches}")
    self.batch_size, self.microbatches = batch_size, microbatches
    self.set_local_rows(local_rows)
    self.lengths = np.asarray(lengths, np.int64)
    self.buckets = tuple(sorted(buckets))
    if len(self.lengths) and self.lengths.max() > self.buckets[-1]:
      raise ValueError(f"an example of {self.lengths.max()} tokens exceeds the largest bucket "
                       f"{self.buckets[-1]}")
    self.collate, self.batch_size, self.microbatches = collate, batch_size, microbatches
    self.pack, self.seed, self.shuffle = pack, seed, shuffle
    self._stream = _Stream(len(self.lengths), seed, shuffle, position)

  def set_local_rows(self, local_rows: Optional[Tuple[int, int]]) -> None:
    """Sets ``local_rows`` (see the class docstring; None: all rows)."""
    per_micro = self.batch_size // self.microbatches
    lo, hi = (0, per_micro) if local_rows is None else (int(local_rows[0]), int(local_rows[1]))
    if not 0 <= lo < hi <= per_micro:
      raise ValueError(f"local_rows={local_rows} must be a non-empty range within the "
                       f"{per_micro} rows of a microbatch")
    self.local_rows = (lo, hi)

  @property
  def position(self) -> DataPosition:
    """Position of the first example of the next batch."""
    return self._stream.position

  def _plan(self, stream: _Stream) -> List[List[int]]:
    """Consumes the next batch's examples from ``stream``; returns its rows of example indices."""
    if not self.pack:
      rows = []
      for _ in range(self.batch_size):
        rows.append([stream.peek()])
        stream.advance()
      return rows
    cap = self.buckets[-1]
    rows, used = [[]], 0
    while True:
      idx = stream.peek()
      n = int(self.lengths[idx])
      if used + n > cap:
        if len(rows) == self.batch_size:
          return rows
        rows.append([])
        used = 0
      rows[-1].append(idx)
      used += n
      stream.advance()

  def next_batch(self) -> Dict[str, np.ndarray]:
    """The next batch, each array reshaped to ``[M, B / M, ...]`` (``[M, hi - lo, ...]`` with
    ``local_rows``); advances the position."""
    rows = self._plan(self._stream)
    longest = max(int(sum(self.lengths[i] for i in row)) for row in rows)
    m, (lo, hi) = self.microbatches, self.local_rows
    per_micro = len(rows) // m
    if (lo, hi) != (0, per_micro):
      rows = [rows[k * per_micro + r] for k in range(m) for r in range(lo, hi)]
    batch = self.collate(rows, bucket_for(longest, self.buckets))
    return {k: v.reshape((m, v.shape[0] // m) + v.shape[1:]) for k, v in batch.items()}

  def count_steps(self, num_epochs: float) -> int:
    """Batches needed to consume ``num_epochs`` epochs from the start of the stream (the last
    batch may run into the next epoch)."""
    if num_epochs <= 0:
      raise ValueError(f"num_epochs={num_epochs} must be positive")
    target = math.ceil(num_epochs * len(self.lengths))
    if not self.pack:
      return math.ceil(target / self.batch_size)
    stream = _Stream(len(self.lengths), self.seed, self.shuffle, DataPosition())
    steps = 0
    while stream.position.epoch * stream.n + stream.position.index < target:
      self._plan(stream)
      steps += 1
    return steps
