"""Reward-modelling metrics: how well the model's judge scores reproduce a reference ranking
(human ranks on OASST, the oracle's ranks in the synthetic world). Definitions follow PAPER.md:

  pairwise accuracy  over all response pairs of a prompt with different reference ranks, the share
                     whose order the model's scores reproduce (a model tie, or a missing score, does
                     not reproduce an order)
  5-best %           of the responses the model scores a perfect 5, the share ranked best (rank 0)
  exact match %      the share of prompts whose full ranking by model score equals the reference
                     ranking (ties must match too; a missing score fails the prompt)
  Spearman, Kendall  per prompt, between model scores and the reference ranking (higher score ~
                     better rank; Kendall is tau-b), averaged over prompts where defined (at least
                     two scored responses and neither side constant); responses without a score
                     are left out of these two

Reference ranks: 0 = best; equal ranks are ties. Scores: floats, None for "no parsable score".
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np


def _rankdata(x: np.ndarray) -> np.ndarray:
  """Average ranks (1-based), ties get the mean of their positions (as scipy.stats.rankdata)."""
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  xs = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and xs[j + 1] == xs[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
  a, b = a - a.mean(), b - b.mean()
  den = math.sqrt(float((a * a).sum() * (b * b).sum()))
  return None if den == 0.0 else float((a * b).sum() / den)


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
  """Spearman's rho (Pearson correlation of average ranks); None when undefined."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2:
    return None
  return _pearson(_rankdata(x), _rankdata(y))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
  """Kendall's tau-b (tie-corrected); None when undefined."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  n = len(x)
  if n < 2:
    return None
  iu = np.triu_indices(n, 1)
  dx = np.sign(x[:, None] - x[None, :])[iu]
  dy = np.sign(y[:, None] - y[None, :])[iu]
  n0 = len(dx)
  n1 = int((dx == 0).sum())
  n2 = int((dy == 0).sum())
  den = math.sqrt(float((n0 - n1) * (n0 - n2)))
  return None if den == 0.0 else float((dx * dy).sum() / den)


def reward_metrics(scores: Sequence[Sequence[Optional[float]]], ranks: Sequence[Sequence[int]],
                   max_score: float = 5.0) -> Dict[str, Optional[float]]:
  """Reward-modelling metrics over prompts.

  Args:
    scores: per prompt, the model's score of each response (None = unparsable).
    ranks: per prompt, the reference rank of each response (0 = best; ties allowed).
    max_score: the score counted as "perfect" for 5-best.

  Returns:
    dict with pairwise_accuracy, five_best, exact_match (fractions in [0, 1], None if undefined),
    spearman, kendall_tau (means over prompts where defined), and counts: prompts, pairs,
    responses, scored (responses with a score), perfect (responses scored max_score).
  """
  if len(scores) != len(ranks):
    raise ValueError(f"reward_metrics: {len(scores)} score lists vs {len(ranks)} rank lists")
  pairs = correct = 0
  perfect = perfect_best = 0
  exact = 0
  n_resp = n_scored = 0
  rhos, taus = [], []
  for i, (s, r) in enumerate(zip(scores, ranks)):
    if len(s) != len(r):
      raise ValueError(f"reward_metrics: prompt {i} has {len(s)} scores but {len(r)} ranks")
    n_resp += len(s)
    n_scored += sum(v is not None for v in s)
    all_match = all(v is not None for v in s)
    for a in range(len(s)):
      if s[a] is not None and s[a] >= max_score:
        perfect += 1
        perfect_best += int(r[a] == min(r))
      for b in range(a + 1, len(s)):
        ref = np.sign(r[b] - r[a])  # +1 when a is ranked better
        model = None if s[a] is None or s[b] is None else np.sign(s[a] - s[b])
        if ref != 0:
          pairs += 1
          correct += int(model == ref)
        if model != ref:
          all_match = False
    exact += int(all_match)
    scored = [(v, -rk) for v, rk in zip(s, r) if v is not None]
    if len(scored) >= 2:
      xs, ys = zip(*scored)
      rho, tau = spearman(xs, ys), kendall_tau_b(xs, ys)
      if rho is not None:
        rhos.append(rho)
      if tau is not None:
        taus.append(tau)
  n = len(scores)
  return {
      "pairwise_accuracy": correct / pairs if pairs else None,
      "five_best": perfect_best / perfect if perfect else None,
      "exact_match": exact / n if n else None,
      "spearman": float(np.mean(rhos)) if rhos else None,
      "kendall_tau": float(np.mean(taus)) if taus else None,
      "prompts": n, "pairs": pairs, "responses": n_resp, "scored": n_scored, "perfect": perfect,
  }
