"""Building blocks of the synthetic task world: the answer format, prompt templates, grading.

Answer format
-------------
Every task has one canonical response: ``"The answer is {value}."`` (``ANSWER_PREFIX``), where
``value`` is a number (``42``), a word (``elppa``), a comma-separated list (``3, 5, 9``), a pair
(``4 and 7``) or a run of words (``cat cat cat``). It is short (the tiny model's answers stay under
~20 tokens), uniform across families (one format to learn, one a judge can check) and parseable.

Grading (one rule for all families)
-----------------------------------
``extract_answer`` takes the text after the first ``"the answer is"`` (case-insensitive) up to the
next ``.``/newline; without that phrase, the whole stripped response (trailing ``.`` removed) is the
answer (a bare ``42`` is accepted, but is not canonical). The family's ``credit(params, answer)``
gives content credit ``c`` in [0, 1] with ``c == 1`` exactly when the answer is correct (for the
generate/verify-gap families: when it passes the direct check). The response is *canonical* when it
is exactly ``"The answer is {answer}."`` and the answer matches the family's answer pattern. Then

* correct and canonical:      score 1.0
* correct, not canonical:     score 0.9   (extraneous text, missing frame)
* not correct:                score 0.8 * c * (1.0 if canonical else 0.85)  (< 0.8)

so every correct response outscores every incorrect one, a near miss in the right format lands in
(0, 0.8), and ``score == 1`` means "right and concise". ``is_correct`` is ``c == 1`` (format
ignored), i.e. ``score >= 0.9``.

Templates
---------
A template is text with ``{name}`` or ``{name:type}`` placeholders plus *fixed* params it implies
(``"Sort ... from largest to smallest: {xs}."`` fixes ``order="desc"``). Field types render a value
to text and back through a regex, so a prompt parses back to exactly the task that wrote it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

ANSWER_PREFIX = "The answer is "
"""Canonical responses are ``ANSWER_PREFIX + value + "."``."""

_ANSWER_RE = re.compile(r"the answer is\s*:?\s*([^.\n]*)", re.IGNORECASE)
_CANONICAL_RE = re.compile(r"The answer is ([^.\n]+)\.")
_INT_RE = re.compile(r"-?\d+")


def format_response(answer: str) -> str:
  """The canonical response for an answer value: ``"The answer is {answer}."``."""
  return f"{ANSWER_PREFIX}{answer}."


def extract_answer(response: str) -> Optional[str]:
  """The answer span of a response (see the module docstring), or ``None`` if it is empty."""
  if not isinstance(response, str):
    return None
  m = _ANSWER_RE.search(response)
  span = m.group(1) if m else response.strip().rstrip(".")
  span = span.strip()
  return span or None


# ---- credit helpers -----------------------------------------------------------------------------


def numeric_credit(x: Optional[int], ref: int) -> float:
  """1 if ``x == ref``; else ``0.75 / (1 + (|x - ref| - 1) / s)`` with ``s = 1 + |ref| / 10``: an
  off-by-one earns 0.75, and the scale grows with the magnitude (off by 10 from 420 is a nearer
  miss than off by 10 from 5). 0 for ``None``."""
  if x is None:
    return 0.0
  if x == ref:
    return 1.0
  s = 1.0 + abs(ref) / 10.0
  return 0.75 / (1.0 + (abs(x - ref) - 1.0) / s)


def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions), O(len(a) * len(b))."""
  if len(a) < len(b):
    a, b = b, a
  prev = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    cur = [i]
    for j, cb in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
    prev = cur
  return prev[-1]


def string_credit(x: Optional[str], ref: str) -> float:
  """``1 - edit_distance / max(len)``: 1 iff ``x == ref`` (case-sensitive), 0 for ``None``."""
  if x is None:
    return 0.0
  n = max(len(x), len(ref))
  return 1.0 - levenshtein(x, ref) / n if n else 1.0


def parse_int(text: Optional[str]) -> Optional[int]:
  """The integer in ``text`` if it holds exactly one (``"42"``, ``"x = 42"``), else ``None``."""
  if text is None:
    return None
  found = _INT_RE.findall(text)
  return int(found[0]) if len(found) == 1 else None


def parse_ints(text: Optional[str]) -> List[int]:
  """All integers in ``text``, in order."""
  return [int(t) for t in _INT_RE.findall(text or "")]


def list_credit(items: Sequence[Any], ref: Sequence[Any]) -> float:
  """Per-position agreement: ``#{i: items[i] == ref[i]} / max(len(items), len(ref))``."""
  n = max(len(items), len(ref))
  if n == 0:
    return 1.0
  return sum(a == b for a, b in zip(items, ref)) / n


# ---- field types and templates -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldType:
  """How one template field is written and read back.

  ``regex`` matches exactly the texts ``render`` produces for valid values (and ``parse`` inverts
  ``render`` on them): ``parse(render(v)) == v``.
  """
  name: str
  regex: str
  render: Callable[[Any], str]
  parse: Callable[[str], Any]


def _render_sterm(b: int) -> str:
  return f"+ {b}" if b >= 0 else f"- {-b}"


def _parse_sterm(t: str) -> int:
  sign, num = t.split()
  return int(num) if sign == "+" else -int(num)


_ORDINALS = {2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}
_ORDINAL_VALUES = {v: k for k, v in _ORDINALS.items()}

FIELD_TYPES: Dict[str, FieldType] = {t.name: t for t in [
    FieldType("int", r"-?\d+", str, int),
    FieldType("word", r"[a-z]+", str, str),
    FieldType("letter", r"[a-z]", str, str),
    FieldType("ints", r"-?\d+(?:, -?\d+)+", lambda v: ", ".join(map(str, v)),
              lambda t: tuple(int(x) for x in t.split(", "))),
    FieldType("words", r"[a-z]+(?:, [a-z]+)+", ", ".join, lambda t: tuple(t.split(", "))),
    FieldType("opsym", r"[+-]", str, str),
    FieldType("opname", r"plus|minus", lambda v: {"+": "plus", "-": "minus"}[v],
              lambda t: {"plus": "+", "minus": "-"}[t]),
    FieldType("opverb", r"add|subtract", lambda v: {"+": "add", "-": "subtract"}[v],
              lambda t: {"add": "+", "subtract": "-"}[t]),
    FieldType("sterm", r"[+-] \d+", _render_sterm, _parse_sterm),
    FieldType("ordinal", "|".join(_ORDINALS.values()), lambda k: _ORDINALS[k],
              lambda t: _ORDINAL_VALUES[t]),
]}
"""Field types by name: ``int``, ``word``, ``letter``, ``ints``/``words`` (>= 2 items, ``", "``
separated), ``opsym`` (``+``/``-``), ``opname`` (plus/minus), ``opverb`` (add/subtract), ``sterm``
(signed term ``+ 5`` / ``- 5``), ``ordinal`` (second .. sixth)."""

_PLACEHOLDER = re.compile(r"\{(\w+)(?::(\w+))?\}")


@functools.lru_cache(maxsize=None)
def _compile(text: str, default_types: Tuple[Tuple[str, str], ...]) -> "re.Pattern[str]":
  types = dict(default_types)
  out, pos = [], 0
  for m in _PLACEHOLDER.finditer(text):
    out.append(re.escape(text[pos:m.start()]))
    out.append(f"(?P<{m.group(1)}>{FIELD_TYPES[m.group(2) or types[m.group(1)]].regex})")
    pos = m.end()
  out.append(re.escape(text[pos:]))
  return re.compile("".join(out))


@dataclasses.dataclass(frozen=True)
class Template:
  """One phrasing of a family's instruction.

  ``text``: literal text with ``{name}`` / ``{name:type}`` placeholders (``type`` defaults to the
  family's declared type for ``name``); ``fixed``: params this phrasing implies (e.g. the sort
  order), as ``((name, value), ...)``.
  """
  text: str
  fixed: Tuple[Tuple[str, Any], ...] = ()

  @property
  def fixed_params(self) -> Dict[str, Any]:
    return dict(self.fixed)

  def fields(self, default_types: Mapping[str, str]) -> List[Tuple[str, FieldType]]:
    """The ``(param name, FieldType)`` of each placeholder, in order."""
    return [(m.group(1), FIELD_TYPES[m.group(2) or default_types[m.group(1)]])
            for m in _PLACEHOLDER.finditer(self.text)]

  def render(self, params: Mapping[str, Any], default_types: Mapping[str, str]) -> str:
    """The prompt text for ``params``."""
    types = dict(self.fields(default_types))
    return _PLACEHOLDER.sub(lambda m: types[m.group(1)].render(params[m.group(1)]), self.text)

  def compile(self, default_types: Mapping[str, str]) -> "re.Pattern[str]":
    """A regex that fully matches exactly the texts ``render`` can produce (cached)."""
    return _compile(self.text, tuple(sorted(default_types.items())))

  def parse(self, text: str, default_types: Mapping[str, str]) -> Optional[Dict[str, Any]]:
    """The params (fields + fixed) if ``text`` fully matches this template, else ``None``."""
    m = self.compile(default_types).fullmatch(text)
    if m is None:
      return None
    types = dict(self.fields(default_types))
    params = {name: types[name].parse(value) for name, value in m.groupdict().items()}
    params.update(self.fixed_params)
    return params


# ---- grading -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grade:
  """The oracle's reading of one response.

  ``answer``: the extracted answer span (``None`` if there is none); ``canonical``: the response
  is exactly ``"The answer is {answer}."`` with a well-formed answer; ``content``: content credit in
  [0, 1]; ``correct``: ``content == 1``; ``score``: the final score (see the module docstring).
  """
  answer: Optional[str]
  canonical: bool
  content: float
  correct: bool
  score: float


CORRECT_SCORE = 1.0
CORRECT_UNFORMATTED_SCORE = 0.9
WRONG_SCALE = 0.8
UNFORMATTED_FACTOR = 0.85


def combine(content: float, canonical: bool) -> float:
  """The final score from content credit and format (see the module docstring)."""
  if content >= 1.0:
    return CORRECT_SCORE if canonical else CORRECT_UNFORMATTED_SCORE
  return WRONG_SCALE * max(0.0, content) * (1.0 if canonical else UNFORMATTED_FACTOR)


class Family:
  """A task family: templates, a generator, an exact oracle and plausible mistakes.

  Subclasses set ``name``, ``category``, ``fields`` (param name -> default field type),
  ``templates``, ``answer_regex`` (what a well-formed answer looks like) and implement:

  * ``generate(rng, difficulty, fixed) -> params``: random valid params consistent with ``fixed``
    (the chosen template's fixed params); ``difficulty`` is 1 (easy) .. 3 (hard).
  * ``validate(params) -> bool``: the params describe a solvable task (also guards parsed prompts).
  * ``reference(params) -> str``: one correct answer value (rendered as it appears after
    ``"The answer is "``).
  * ``credit(params, answer) -> float``: content credit in [0, 1], exactly 1 iff ``answer`` is a
    correct answer; ``answer`` may be ``None``.
  * ``near_miss(params, rng) -> str``: a plausible wrong answer (off by one, wrong operation,
    partial reversal, ...). May occasionally be right; callers check and retry.
  * ``far_miss(params, rng) -> str``: a clearly wrong answer of the right type.

  Optionally ``valid_answers(params)``: several correct answers (the generate/verify-gap families
  accept many).
  """

  name: str = ""
  category: str = ""
  fields: Mapping[str, str] = {}
  templates: Tuple[Template, ...] = ()
  answer_regex: str = r".+"
  gap: str = ""  # how checking compares with producing an answer (docs and reports)

  def generate(self, rng: random.Random, difficulty: int,
               fixed: Mapping[str, Any]) -> Dict[str, Any]:
    raise NotImplementedError

  def validate(self, params: Mapping[str, Any]) -> bool:
    raise NotImplementedError

  def reference(self, params: Mapping[str, Any]) -> str:
    raise NotImplementedError

  def credit(self, params: Mapping[str, Any], answer: Optional[str]) -> float:
    raise NotImplementedError

  def near_miss(self, params: Mapping[str, Any], rng: random.Random) -> str:
    raise NotImplementedError

  def far_miss(self, params: Mapping[str, Any], rng: random.Random) -> str:
    raise NotImplementedError

  def valid_answers(self, params: Mapping[str, Any]) -> List[str]:
    return [self.reference(params)]

  # ---- shared machinery ----

  def render(self, params: Mapping[str, Any], template: int) -> str:
    """The prompt text of ``params`` under template number ``template``."""
    return self.templates[template].render(params, self.fields)

  def parse(self, text: str) -> Optional[Tuple[Dict[str, Any], int]]:
    """``(params, template id)`` of the first template that fully matches ``text`` with valid
    params, else ``None``."""
    for i, t in enumerate(self.templates):
      try:
        params = t.parse(text, self.fields)
      except (ValueError, KeyError):
        params = None
      if params is not None and self.validate(params):
        return params, i
    return None

  def grade(self, params: Mapping[str, Any], response: str) -> Grade:
    """The full ``Grade`` of ``response`` (see the module docstring)."""
    answer = extract_answer(response)
    canonical = False
    if answer is not None:
      m = _CANONICAL_RE.fullmatch(response.strip())
      canonical = bool(m) and re.fullmatch(self.answer_regex, m.group(1)) is not None
    content = float(min(1.0, max(0.0, self.credit(params, answer))))
    return Grade(answer, canonical, content, content >= 1.0, combine(content, canonical))

  def wrong_answer(self, params: Mapping[str, Any], rng: random.Random, near: bool = True) -> str:
    """A near (or far) miss that the oracle does not accept; falls back to far misses, then to a
    fixed placeholder."""
    for attempt in range(20):
      cand = self.near_miss(params, rng) if near and attempt < 10 else self.far_miss(params, rng)
      if self.credit(params, cand) < 1.0:
        return cand
    return "unknown"


def pick_other(rng: random.Random, pool: Sequence[Any], avoid: Any) -> Any:
  """A random element of ``pool`` different from ``avoid`` (``pool`` must hold one)."""
  while True:
    x = rng.choice(pool)
    if x != avoid:
      return x


def is_composite(n: int) -> bool:
  return n >= 4 and any(n % d == 0 for d in range(2, math.isqrt(n) + 1))
