"""LLM-as-a-Judge: building judge prompts, parsing "Score: X", aggregating K judgements.

Unparsable judgements are "no score": they are counted and excluded from the mean, never scored
as 0 (which would silently turn a formatting failure into a strong negative preference).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Sequence

from selfreward_jax.selfreward.templates import Template

MAX_SCORE = 5.0

_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
# "score" as a word, optionally wrapped in markdown emphasis, then a separator.
_MARKER = re.compile(r"(?<![A-Za-z])score(?![A-Za-z])\s*(?:[*_`]+\s*)?[:=：]", re.IGNORECASE)
_NUM = r"(\d+(?:\.\d+)?|zero|one|two|three|four|five)"
_VALUE = re.compile(
    rf"^[\s*_`\"'\[(]*{_NUM}"                         # the value (markdown/quotes/brackets allowed)
    rf"(?:\s*(?:/|out\s+of)\s*{_NUM})?"               # optional denominator: 4/5, 4 out of 5
    r"(?:\s*points?)?"                                # optional unit
    r"[\s*_`\"'\])]*"                                 # closing markdown/quotes/brackets
    r"(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)
# after the value: nothing, sentence punctuation, or a new line/sentence (not another number)
_AMBIGUOUS_REST = re.compile(
    r"^\s*(?:-|–|—|~|or\b|to\b|and\b|point\b|hundred|thousand|half|,\s*\d|\d|\.\d|/)", re.IGNORECASE)


_PAREN_SCALE = re.compile(rf"^\s*\(\s*out\s+of\s+{_NUM}", re.IGNORECASE)


def _as_number(token: str) -> float:
  token = token.lower()
  return float(_NUMBER_WORDS[token]) if token in _NUMBER_WORDS else float(token)


def parse_judge_score(text: str) -> Optional[float]:
  """The score of a judgement: the value after the last "Score:" marker, in [0, 5].

  Tolerated: "Score: 4", "score: 4.", "**Score:** 4", "Score: **4**", "Score: 4/5",
  "Score: 4 out of 5", "Score: 4 points", "Score = 4", "Score: four", decimals ("Score: 4.5").

  Returns None (no score) when: there is no marker; the last marker is not followed by a number;
  the value is outside [0, 5]; the denominator is not 5 ("4/10"); or the value is ambiguous
  ("3-4", "3 or 4", "3 to 4"). Only the last marker counts, because judges restate the scale
  earlier in their reasoning.
  """
  if not isinstance(text, str):
    return None
  markers = list(_MARKER.finditer(text))
  if not markers:
    return None
  m = _VALUE.match(text[markers[-1].end():])
  if m is None:
    return None
  value = _as_number(m.group(1))
  denom = m.group(2)
  if denom is not None and _as_number(denom) != MAX_SCORE:
    return None
  rest = m.group("rest")
  if _AMBIGUOUS_REST.match(rest):
    return None
  scale = _PAREN_SCALE.match(rest)
  if scale is not None and _as_number(scale.group(1)) != MAX_SCORE:
    return None
  if not 0.0 <= value <= MAX_SCORE:
    return None
  return value


def judge_prompt(template: Template, prompt: str, response: str) -> str:
  """The judge's input text for one (prompt, response)."""
  return template.render(prompt=prompt.strip(), response=response.strip())


@dataclasses.dataclass(frozen=True)
class Judgement:
  """K judgements of one candidate: the texts, their parsed scores (None = unparsable) and the
  mean over the parsable ones (None when none parsed)."""

  texts: tuple
  scores: tuple

  @property
  def mean(self) -> Optional[float]:
    valid = [s for s in self.scores if s is not None]
    return sum(valid) / len(valid) if valid else None

  @property
  def n_parsed(self) -> int:
    return sum(s is not None for s in self.scores)

  def to_dict(self) -> Dict:
    return {"judge_texts": list(self.texts), "judge_scores": list(self.scores), "score": self.mean}


def aggregate(texts: Sequence[str]) -> Judgement:
  """Parses K judgement texts into a ``Judgement``."""
  return Judgement(texts=tuple(texts), scores=tuple(parse_judge_score(t) for t in texts))


def score_histogram(scores: Sequence[Optional[float]]) -> Dict[str, int]:
  """Counts of each integer score 0..5 (rounded) plus "none" for unparsable judgements."""
  hist: Dict[str, int] = {str(i): 0 for i in range(6)}
  hist["none"] = 0
  for s in scores:
    if s is None:
      hist["none"] += 1
    else:
      hist[str(int(round(s)))] += 1
  return hist


def parse_stats(judgements: Sequence[Judgement]) -> Dict[str, float]:
  """Parse rate over all judgement texts and the share of candidates with no parsable score."""
  n_texts = sum(len(j.scores) for j in judgements)
  n_parsed = sum(j.n_parsed for j in judgements)
  n_unscored = sum(j.mean is None for j in judgements)
  return {
      "judgements": n_texts,
      "parsed": n_parsed,
      "unparsable": n_texts - n_parsed,
      "parse_rate": n_parsed / n_texts if n_texts else 0.0,
      "candidates_without_score": n_unscored,
  }


def all_scores(judgements: Sequence[Judgement]) -> List[Optional[float]]:
  return [s for j in judgements for s in j.scores]
