"""Preference pairs from self-judged candidates (AIFT data).

Per prompt (PAPER.md): chosen = the candidate with the highest mean judge score, rejected = the
one with the lowest; the prompt is dropped when they are equal. Candidates without any parsable
judgement take no part (they are neither chosen nor rejected), and a prompt with fewer than two
scored candidates is dropped, and so is a pair whose chosen and rejected texts are identical
(the same text judged differently: nothing for DPO to learn, and DPO would skip it); each drop
reason is counted.

Length control (Meta-Rewarding, Wu et al. 2024): with ``length_control=rho > 0``, the chosen
response is the *shortest* among the candidates whose score is within the top ``rho`` fraction of
the prompt's score range, and the rejected one the *longest* within the bottom ``rho`` fraction;
a pair is kept only if chosen's score is still strictly above rejected's.

Tie-breaking among equal scores is deterministic: the lower candidate index wins (for chosen and
for rejected), so a fixed seed gives identical pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One sampled response with its judgement (``score`` None = no parsable judgement)."""

  prompt_id: str
  candidate_id: int
  response: str
  score: Optional[float]
  judge_texts: Tuple[str, ...] = ()
  judge_scores: Tuple[Optional[float], ...] = ()


@dataclasses.dataclass
class PairStats:
  prompts: int = 0
  pairs: int = 0
  dropped_tie: int = 0
  dropped_too_few_scored: int = 0
  dropped_empty_response: int = 0
  dropped_identical: int = 0

  def to_dict(self) -> Dict[str, int]:
    return dataclasses.asdict(self)


def select_pair(cands: Sequence[Candidate], length_control: float = 0.0
                ) -> Tuple[Optional[Tuple[Candidate, Candidate]], str]:
  """Chooses (chosen, rejected) among one prompt's candidates, or (None, reason)."""
  usable = [c for c in cands if c.score is not None and c.response.strip()]
  if len(usable) < 2:
    if any(c.score is not None and not c.response.strip() for c in cands):
      return None, "empty_response"
    return None, "too_few_scored"
  hi = max(c.score for c in usable)
  lo = min(c.score for c in usable)
  if hi == lo:
    return None, "tie"
  if length_control > 0:
    span = hi - lo
    top = [c for c in usable if c.score >= hi - length_control * span]
    bottom = [c for c in usable if c.score <= lo + length_control * span]
    chosen = min(top, key=lambda c: (len(c.response), -c.score, c.candidate_id))
    rejected = max(bottom, key=lambda c: (len(c.response), -c.score, -c.candidate_id))
    if chosen.score <= rejected.score:
      return None, "tie"
  else:
    chosen = min((c for c in usable if c.score == hi), key=lambda c: c.candidate_id)
    rejected = min((c for c in usable if c.score == lo), key=lambda c: c.candidate_id)
  if chosen.response.strip() == rejected.response.strip():
    return None, "identical"
  return (chosen, rejected), "ok"


def build_pairs(groups: Dict[str, Tuple[str, Sequence[Candidate]]], length_control: float = 0.0
                ) -> Tuple[List[Dict], PairStats]:
  """Builds DPO pairs with provenance.

  Args:
    groups: {prompt_id: (prompt_text, candidates)} in a deterministic order.
    length_control: Meta-Rewarding margin rho in [0, 1); 0 = the paper's max-vs-min rule.

  Returns:
    (pairs, stats); each pair is a dict with prompt, chosen, rejected and the provenance fields
    prompt_id, chosen_id, rejected_id, chosen_score, rejected_score, chosen_judge_texts,
    rejected_judge_texts, chosen_judge_scores, rejected_judge_scores.
  """
  if not 0.0 <= length_control < 1.0:
    raise ValueError(f"length_control={length_control}: must be in [0, 1)")
  stats = PairStats()
  pairs = []
  for prompt_id, (prompt, cands) in groups.items():
    stats.prompts += 1
    picked, reason = select_pair(cands, length_control)
    if picked is None:
      setattr(stats, f"dropped_{reason}", getattr(stats, f"dropped_{reason}") + 1)
      continue
    chosen, rejected = picked
    stats.pairs += 1
    pairs.append({
        "prompt_id": prompt_id, "prompt": prompt,
        "chosen": chosen.response, "rejected": rejected.response,
        "chosen_id": chosen.candidate_id, "rejected_id": rejected.candidate_id,
        "chosen_score": chosen.score, "rejected_score": rejected.score,
        "chosen_judge_texts": list(chosen.judge_texts), "rejected_judge_texts": list(rejected.judge_texts),
        "chosen_judge_scores": list(chosen.judge_scores),
        "rejected_judge_scores": list(rejected.judge_scores),
    })
  return pairs, stats
