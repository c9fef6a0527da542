"""Reward-modelling metrics, validated against scipy and hand-computed cases."""

import numpy as np
import pytest
from scipy import stats

from selfreward_jax.eval.reward_metrics import kendall_tau_b, reward_metrics, spearman


def test_correlations_match_scipy():
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = rng.integers(2, 8)
    x = rng.integers(0, 4, n).astype(float)  # many ties
    y = rng.integers(0, 5, n).astype(float)
    ref_rho = stats.spearmanr(x, y).statistic
    ref_tau = stats.kendalltau(x, y).statistic  # tau-b
    rho, tau = spearman(x, y), kendall_tau_b(x, y)
    if np.isnan(ref_rho):
      assert rho is None
    else:
      assert rho == pytest.approx(ref_rho, abs=1e-12)
    if np.isnan(ref_tau):
      assert tau is None
    else:
      assert tau == pytest.approx(ref_tau, abs=1e-12)


def test_reward_metrics_hand_computed():
  scores = [
      [5.0, 3.0, 1.0],    # perfect order
      [2.0, 2.0, 4.0],    # tie on the top pair; reversed elsewhere
      [5.0, None, 0.0],   # a missing score
  ]
  ranks = [[0, 1, 2], [0, 1, 2], [1, 0, 2]]
  m = reward_metrics(scores, ranks)
  # pairs: prompt0 3/3 correct; prompt1: (0,1) tie ->no, (0,2) 2<4 ->no, (1,2) no -> 0/3;
  # prompt2: (0,1) missing ->no, (0,2) rank1 vs rank2: 5>0 -> yes, (1,2) missing -> no
  assert m["pairwise_accuracy"] == pytest.approx(4 / 9)
  # perfect scores: prompt0 resp0 (rank 0: best), prompt2 resp0 (rank 1: not best)
  assert m["five_best"] == pytest.approx(1 / 2)
  assert m["exact_match"] == pytest.approx(1 / 3)
  rhos = [stats.spearmanr([5, 3, 1], [0, -1, -2]).statistic,
          stats.spearmanr([2, 2, 4], [0, -1, -2]).statistic,
          stats.spearmanr([5, 0], [-1, -2]).statistic]
  assert m["spearman"] == pytest.approx(np.mean(rhos))
  taus = [stats.kendalltau([5, 3, 1], [0, -1, -2]).statistic,
          stats.kendalltau([2, 2, 4], [0, -1, -2]).statistic,
          stats.kendalltau([5, 0], [-1, -2]).statistic]
  assert m["kendall_tau"] == pytest.approx(np.mean(taus))
  assert (m["prompts"], m["pairs"], m["responses"], m["scored"], m["perfect"]) == (3, 9, 9, 8, 2)


def test_reference_ties_are_not_pairs_but_must_match_for_exact():
  m = reward_metrics([[3.0, 3.0, 1.0], [3.0, 2.0, 1.0]], [[0, 0, 1], [0, 0, 1]])
  assert m["pairs"] == 4 and m["pairwise_accuracy"] == 1.0
  assert m["exact_match"] == 0.5  # the second prompt breaks the reference tie


def test_undefined_and_errors():
  m = reward_metrics([[None, None]], [[0, 1]])
  assert m["pairwise_accuracy"] == 0.0 and m["five_best"] is None and m["spearman"] is None
  with pytest.raises(ValueError, match="prompt 0 has 2 scores but 3 ranks"):
    reward_metrics([[1.0, 2.0]], [[0, 1, 2]])
