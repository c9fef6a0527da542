"""Oracle-side judging helpers: graded candidate responses, oracle rankings, and an oracle version
of the additive 0-5 rubric.

* ``candidate_responses`` plays the role of OASST's several human-ranked responses per prompt: a mix
  of correct, near-miss, clearly wrong, badly formatted and off-topic responses, each with its
  oracle score (the "human" judgement).
* ``oracle_rank`` turns scores into ranks (0 = best, ties share a rank), like OASST's ranks.
* ``oracle_judgement`` maps the oracle score onto the paper's additive rubric. It is meant for
  evaluation and as a documented fallback (e.g. EFT targets when no SFT baseline is available); the
  self-rewarding loop itself must judge with the model, never with this.
"""

from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple, Union

from selfreward_jax.synthetic.base import format_response
from selfreward_jax.synthetic.tasks import Task

EXTRANEOUS = (
    "I hope this helps!",
    "Let me know if you have more questions.",
    "This was a fun one to work out.",
    "Thanks for asking such a nice question.",
)
"""Sentences appended to an otherwise correct answer (costs the rubric's fifth point)."""

OFF_TOPIC = (
    "I am not sure how to answer that.",
    "Sorry, I cannot help with that.",
    "Here is a short poem about the sea.",
    "Let me think about it later.",
)
"""Responses that answer nothing (oracle score 0)."""

CANDIDATE_KINDS = ("correct", "near", "near", "far", "bare", "verbose", "near_bare", "off_topic")
"""The pool ``candidate_responses`` draws kinds from (without replacement, in random order)."""

RUBRIC_THRESHOLDS = (0.0, 0.3, 0.55, 0.9, 1.0)
"""``oracle_judgement`` points: ``#{thresholds passed}`` where the first threshold is passed by any
score > 0 and the others by scores >= them (so 1.0 earns 5, any correct answer >= 4)."""

RUBRIC_TEXT = (
    "does not answer the question",
    "is related to the question but far from correct",
    "is partly right but has substantial errors",
    "is close but not exactly right",
    "is correct, but the response is not in the concise expected form",
    "is correct and stated concisely in the expected form",
)


def _rng(rng: Union[random.Random, int, None]) -> random.Random:
  return rng if isinstance(rng, random.Random) else random.Random(rng)


def candidate_response(task: Task, kind: str, rng: random.Random) -> str:
  """One response of ``kind`` (see ``CANDIDATE_KINDS``) to ``task``."""
  fam, p = task.family_obj, task.params
  if kind == "correct":
    return format_response(rng.choice(fam.valid_answers(p)))
  if kind == "near":
    return format_response(fam.wrong_answer(p, rng, near=True))
  if kind == "far":
    return format_response(fam.wrong_answer(p, rng, near=False))
  if kind == "bare":
    return task.reference
  if kind == "verbose":
    return f"{task.response} {rng.choice(EXTRANEOUS)}"
  if kind == "near_bare":
    return fam.wrong_answer(p, rng, near=True)
  if kind == "off_topic":
    return rng.choice(OFF_TOPIC)
  raise ValueError(f"unknown candidate kind {kind!r}; known: {sorted(set(CANDIDATE_KINDS))}")


def candidate_responses(task: Task, rng: Union[random.Random, int, None] = None,
                        n: int = 4) -> List[Tuple[str, float]]:
  """``n`` distinct responses to ``task`` with their oracle scores, ``[(response, score), ...]``.

  Kinds are drawn without replacement from ``CANDIDATE_KINDS`` in random order (correct canonical,
  near miss, far miss, correct but bare, correct but verbose, bare near miss, off-topic), so a set
  usually spans several score levels; beyond 8, extra near and far misses are added while distinct
  ones can be found (the result may then be shorter than ``n``). ``rng``: a ``random.Random`` or a
  seed; deterministic given it.
  """
  rng = _rng(rng)
  kinds = list(CANDIDATE_KINDS)
  rng.shuffle(kinds)
  out: List[Tuple[str, float]] = []
  seen = set()
  extra = 0
  while len(out) < n and extra < 50:
    if kinds:
      kind = kinds.pop()
    else:
      kind = rng.choice(("near", "far"))
      extra += 1
    text = candidate_response(task, kind, rng)
    if text in seen:
      continue
    seen.add(text)
    out.append((text, task.score(text)))
  return out


def oracle_rank(scores: Sequence[float], tol: float = 1e-9) -> List[int]:
  """Dense ranks of ``scores``: 0 for the best, equal scores (within ``tol``) share a rank, the next
  lower score gets the next integer. ``[0.9, 1.0, 0.9, 0.2] -> [1, 0, 1, 2]``."""
  levels: List[float] = []
  for s in sorted(scores, reverse=True):
    if not levels or levels[-1] - s > tol:
      levels.append(s)
  return [next(i for i, v in enumerate(levels) if v - s <= tol) for s in scores]


def rubric_points(score: float) -> int:
  """The additive 0-5 rubric points of an oracle score (see ``RUBRIC_THRESHOLDS``); monotone
  non-decreasing in ``score``."""
  if score <= 0:
    return 0
  return 1 + sum(score >= t for t in RUBRIC_THRESHOLDS[1:])


def oracle_judgement(task: Task, response: str) -> Tuple[str, int]:
  """``(justification, points)``: the paper's additive 0-5 rubric applied by the oracle.

  Points (a monotone step function of ``task.score(response)``): +1 the response gives a related
  answer (score > 0); +1 it addresses a substantial part (>= 0.3); +1 it is close to right
  (>= 0.55, e.g. an off-by-one in the right format); +1 the answer is correct (>= 0.9); +1 correct
  and concise in the canonical format with nothing extraneous (== 1.0). The justification is one or
  two short sentences naming the answer found (and a correct one when it is wrong); it does not
  include the ``Score:`` line, which the judge template adds. Evaluation and fallback use only.
  """
  grade = task.grade(response)
  points = rubric_points(grade.score)
  if grade.answer is None:
    return "The response is empty and does not answer the question.", 0
  answer = grade.answer if len(grade.answer) <= 40 else grade.answer[:37] + "..."
  if points == 0:
    text = f"The response ({answer}) {RUBRIC_TEXT[0]}. A correct answer is {task.reference}."
  elif points < 4:
    text = (f"The response's answer, {answer}, {RUBRIC_TEXT[points]}. "
            f"A correct answer is {task.reference}.")
  else:
    text = f"The answer, {answer}, {RUBRIC_TEXT[points]}."
  return text, points


def rank_agreement(model_scores: Sequence[Optional[float]], oracle_scores: Sequence[float]) -> bool:
  """True iff the model's scores order the responses exactly as the oracle does (same dense ranks;
  ``None`` = unparsable judgement never agrees). The EFT filter of the paper: keep an example only
  where the generated scores' ranking agrees with the human (here: oracle) ranking."""
  if any(s is None for s in model_scores):
    return False
  return oracle_rank(list(model_scores)) == oracle_rank(list(oracle_scores))
