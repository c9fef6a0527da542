"""``Task``: one instruction with its exact oracle, serialisable; ``parse_task``: prompt text back
to a task.

A task is ``(family, params, template)``: the prompt, the reference answer and the oracle are all
rebuilt deterministically from those three, so ``to_dict``/``from_dict`` survive JSONL round trips
and a model-written prompt that matches any template becomes a gradable task again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from selfreward_jax.synthetic.base import Grade, format_response
from selfreward_jax.synthetic.families import FAMILIES, get_family


def _freeze(value: Any) -> Any:
  """Lists become tuples (recursively), so params are hashable and compare equal after JSON."""
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_thaw(v) for v in value]
  return value


@dataclasses.dataclass(frozen=True)
class Oracle:
  """The exact grader of one task: ``score(response)`` in [0, 1] with partial credit,
  ``is_correct(response)``, ``grade(response)`` (the full ``Grade``), ``reference`` (one correct
  answer value) and ``valid_answers`` (several, for the families that accept many)."""

  task: "Task"

  def grade(self, response: str) -> Grade:
    return self.task.family_obj.grade(self.task.params, response)

  def score(self, response: str) -> float:
    return self.grade(response).score

  def is_correct(self, response: str) -> bool:
    return self.grade(response).correct

  @property
  def reference(self) -> str:
    return self.task.reference

  @property
  def valid_answers(self) -> List[str]:
    return self.task.family_obj.valid_answers(self.task.params)


@dataclasses.dataclass(frozen=True)
class Task:
  """One instruction task.

  ``family``: a name in ``FAMILIES``; ``params``: the family's parameters (JSON-able scalars and
  tuples; lists are frozen to tuples on construction); ``template``: which phrasing of the family
  writes the prompt. Construction validates: ``ValueError`` for params the family rejects or a
  template id out of range (so every ``Task`` is solvable and has a reference).

  Derived, deterministic: ``prompt`` (the instruction text), ``reference`` (one correct answer
  value), ``response`` (the canonical response ``"The answer is {reference}."``), ``oracle``.
  ``score``/``is_correct``/``grade`` are shortcuts to the oracle. Equal tasks have equal prompts
  and vice versa (``parse_task(t.prompt) == t``).
  """

  family: str
  params: Mapping[str, Any]
  template: int = 0

  def __post_init__(self):
    fam = get_family(self.family)
    params = {k: _freeze(v) for k, v in dict(self.params).items()}
    object.__setattr__(self, "params", params)
    if not isinstance(self.template, int) or not 0 <= self.template < len(fam.templates):
      raise ValueError(f"{self.family}: template must be an int in [0, {len(fam.templates)}), "
                       f"got {self.template!r}")
    fixed = fam.templates[self.template].fixed_params
    needed = set(fam.fields) | set(fixed)
    if set(params) != needed:
      raise ValueError(f"{self.family}: params must have keys {sorted(needed)}, "
                       f"got {sorted(params)}")
    if any(params[k] != v for k, v in fixed.items()):
      raise ValueError(f"{self.family}: template {self.template} requires {fixed}, got {params}")
    try:
      ok = fam.validate(params)
    except (TypeError, KeyError, ValueError):
      ok = False
    if not ok:
      raise ValueError(f"{self.family}: invalid params {params}")

  def __hash__(self) -> int:
    return hash((self.family, self.key, self.template))

  @property
  def family_obj(self):
    return FAMILIES[self.family]

  @property
  def category(self) -> str:
    return self.family_obj.category

  @property
  def key(self) -> str:
    """The task's identity without its phrasing: ``family`` + sorted JSON params. Splits are
    assigned on this, so no problem is seen in two splits under different phrasings."""
    return self.family + ":" + json.dumps(_thaw_params(self.params), sort_keys=True,
                                          separators=(",", ":"))

  @property
  def prompt(self) -> str:
    return self.family_obj.render(self.params, self.template)

  @property
  def reference(self) -> str:
    return self.family_obj.reference(self.params)

  @property
  def response(self) -> str:
    return format_response(self.reference)

  @property
  def oracle(self) -> Oracle:
    return Oracle(self)

  def grade(self, response: str) -> Grade:
    return self.family_obj.grade(self.params, response)

  def score(self, response: str) -> float:
    return self.grade(response).score

  def is_correct(self, response: str) -> bool:
    return self.grade(response).correct

  def to_dict(self) -> Dict[str, Any]:
    """JSON-able: ``family``, ``params`` (tuples as lists), ``template``, plus ``prompt`` and
    ``reference`` for readers (``from_dict`` checks the prompt, so a changed template is caught)."""
    return {"family": self.family, "params": _thaw_params(self.params), "template": self.template,
            "prompt": self.prompt, "reference": self.reference}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Task":
    """Inverse of ``to_dict``. ``ValueError`` if the stored ``prompt`` (when present) differs from
    the rebuilt one."""
    task = cls(d["family"], d["params"], int(d.get("template", 0)))
    if "prompt" in d and d["prompt"] != task.prompt:
      raise ValueError(f"stored prompt {d['prompt']!r} != rebuilt prompt {task.prompt!r} "
                       "(were the templates changed?)")
    return task


def _thaw_params(params: Mapping[str, Any]) -> Dict[str, Any]:
  return {k: _thaw(v) for k, v in params.items()}


_SPACES = re.compile(r"\s+")


def normalize_prompt(text: str) -> str:
  """Whitespace-normalised prompt text (stripped, runs of whitespace -> one space)."""
  return _SPACES.sub(" ", text).strip()


def parse_task(prompt_text: str, families: Optional[Sequence[str]] = None) -> Optional[Task]:
  """The task whose prompt is ``prompt_text`` (after whitespace normalisation), or ``None``.

  Recognises every template of every family (or only ``families``), exactly as written by
  ``Task.prompt`` (case and punctuation matter), and only solvable params (e.g. a pair-sum prompt
  whose target no pair reaches is ``None``). Used to grade self-instructed prompts: the fraction
  that parse is the fraction of valid tasks. ``parse_task(t.prompt) == t`` for every task.
  """
  if not isinstance(prompt_text, str):
    return None
  text = normalize_prompt(prompt_text)
  for name in families or FAMILIES:
    hit = FAMILIES[name].parse(text)
    if hit is not None:
      params, template = hit
      try:
        return Task(name, params, template)
      except ValueError:
        continue
  return None


def oracle_score(prompt_text: str, response: str) -> Optional[float]:
  """The oracle score of ``response`` to a prompt, if the prompt parses as a task, else ``None``."""
  task = parse_task(prompt_text)
  return None if task is None else task.score(response)


def stable_hash(text: str) -> int:
  """A 64-bit hash of ``text`` that does not depend on ``PYTHONHASHSEED`` or the platform."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
