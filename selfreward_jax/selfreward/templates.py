"""Prompt templates as files.

A template is a text file with ``{name}`` placeholders (``str.format`` syntax; write literal braces
as ``{{`` and ``}}``). The package ships:

  judge.txt                 the LLM-as-a-Judge prompt: our own wording of the paper's additive
                            0-5 rubric (fields: prompt, response)
  judge_short.txt           a compact judge prompt for tiny models (same fields)
  self_instruct.txt         the few-shot self-instruction prompt (field: examples)
  self_instruct_example.txt one demonstration inside it (field: prompt)

A config names a shipped template by its stem (``"judge"``) or points at any file, e.g. a copy of
the paper's verbatim Figure 2 prompt; the file must use the same fields.
"""

from __future__ import annotations

import dataclasses
import os
import string
from typing import FrozenSet, Iterable

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")

REQUIRED_FIELDS = {
    "judge": frozenset({"prompt", "response"}),
    "self_instruct": frozenset({"examples"}),
    "self_instruct_example": frozenset({"prompt"}),
}


@dataclasses.dataclass(frozen=True)
class Template:
  """A loaded template: its text, where it came from, and its placeholder names."""

  text: str
  path: str
  fields: FrozenSet[str]

  def render(self, **values: str) -> str:
    missing = self.fields - set(values)
    if missing:
      raise KeyError(f"template {self.path}: no value for {sorted(missing)}")
    return self.text.format(**{k: v for k, v in values.items() if k in self.fields})


def _fields(text: str, path: str) -> FrozenSet[str]:
  try:
    names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
  except ValueError as e:
    raise ValueError(f"template {path}: {e} (write literal braces as '{{{{' and '}}}}')") from None
  bad = [n for n in names if not n.isidentifier()]
  if bad:
    raise ValueError(f"template {path}: placeholders must be plain names, got {bad}")
  return frozenset(names)


def resolve_template_path(name_or_path: str) -> str:
  """A shipped template's stem (``"judge"``) or a path to a file."""
  if os.sep in name_or_path or name_or_path.endswith(".txt") or os.path.exists(name_or_path):
    return name_or_path
  path = os.path.join(TEMPLATE_DIR, name_or_path + ".txt")
  if not os.path.exists(path):
    shipped = sorted(f[:-4] for f in os.listdir(TEMPLATE_DIR) if f.endswith(".txt"))
    raise FileNotFoundError(f"no template named {name_or_path!r}; shipped: {shipped}, "
                            "or give a path to a .txt file")
  return path


def load_template(name_or_path: str, kind: str | None = None,
                  required: Iterable[str] | None = None) -> Template:
  """Loads and validates a template.

  Args:
    name_or_path: shipped stem or file path.
    kind: "judge", "self_instruct" or "self_instruct_example": checks the fields that kind needs.
    required: explicit required fields (overrides ``kind``).

  Raises:
    FileNotFoundError naming the path; ValueError naming the path and the missing/unknown fields.
  """
  path = resolve_template_path(name_or_path)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"template file not found: {path}") from None
  if text.endswith("\n") and not text.endswith("\n\n"):
    text = text[:-1]  # the file's final newline is not part of the prompt
  fields = _fields(text, path)
  need = frozenset(required) if required is not None else REQUIRED_FIELDS.get(kind or "", frozenset())
  if need:
    if need - fields:
      raise ValueError(f"template {path}: missing placeholder(s) {sorted(need - fields)}; "
                       f"a {kind or 'this'} template needs {sorted(need)}")
    if fields - need:
      raise ValueError(f"template {path}: unknown placeholder(s) {sorted(fields - need)}; "
                       f"allowed: {sorted(need)}")
  return Template(text=text, path=path, fields=fields)
