"""The sampling function draws from the right distribution (chi-square at a fixed seed), greedy
is argmax, log-probs are the raw model's, and a row's draw does not depend on other rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from selfreward_jax.sampling import ops

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], np.float32)
DRAWS = 20000


def _expected(logits, temperature, top_p=1.0, top_k=0):
  """Reference filtered softmax, written independently in numpy."""
  z = logits.astype(np.float64) / temperature
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p, kind="stable")
  keep = np.zeros_like(p, bool)
  if top_k:
    keep[order[:top_k]] = True
  else:
    keep[:] = True
  q = np.where(keep, p, 0)
  q /= q.sum()
  mass = 0.0
  final = np.zeros_like(keep)
  for i in order:
    if not keep[i] or mass >= top_p:
      continue
    final[i] = True
    mass += q[i]
  r = np.where(final, p, 0)
  return r / r.sum()


def _draw(logits, temperature, top_p, top_k, n=DRAWS, seed=0):
  b = n
  keys = jax.random.key_data(jax.random.split(jax.random.key(seed), b))
  logits_bv = jnp.broadcast_to(jnp.asarray(logits), (b, logits.size))
  toks = jax.jit(ops.sample_tokens)(keys, logits_bv, jnp.full((b,), temperature, jnp.float32),
                                    jnp.full((b,), top_p, jnp.float32),
                                    jnp.full((b,), top_k, jnp.int32))
  return np.bincount(np.asarray(toks), minlength=logits.size)


@pytest.mark.parametrize("temperature,top_p,top_k", [
    (1.0, 1.0, 0), (0.7, 1.0, 0), (1.5, 1.0, 0), (0.7, 0.9, 0), (1.0, 0.6, 0),
    (1.0, 1.0, 3), (0.7, 0.9, 4), (2.0, 0.5, 5),
])
def test_empirical_frequencies_match_filtered_softmax(temperature, top_p, top_k):
  counts = _draw(LOGITS, temperature, top_p, top_k)
  expected = _expected(LOGITS, temperature, top_p, top_k)
  assert np.all(counts[expected == 0] == 0), (counts, expected)
  kept = expected > 0
  if kept.sum() > 1:
    _, p_value = stats.chisquare(counts[kept], expected[kept] / expected[kept].sum() * counts.sum())
    assert p_value > 1e-3, (counts, expected * DRAWS, p_value)
  else:
    assert counts[kept][0] == DRAWS


def test_filter_keeps_expected_sets():
  # top-p 0.9 at T=0.7 on LOGITS keeps exactly the tokens the reference keeps
  out = ops.sampling_logits(jnp.asarray(LOGITS)[None], jnp.array([0.7]), jnp.array([0.9]),
                            jnp.array([0], jnp.int32))
  np.testing.assert_array_equal(np.isfinite(np.asarray(out[0])), _expected(LOGITS, 0.7, 0.9) > 0)
  # a tiny top_p keeps only the most probable token; top_k=1 too
  for p, k in [(1e-6, 0), (1.0, 1)]:
    out = ops.sampling_logits(jnp.asarray(LOGITS)[None], jnp.array([1.0]), jnp.array([p]),
                              jnp.array([k], jnp.int32))
    assert np.isfinite(np.asarray(out[0])).sum() == 1


def test_greedy_is_argmax_and_ignores_key():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 50)).astype(np.float32)
  for seed in range(3):
    keys = jax.random.key_data(jax.random.split(jax.random.key(seed), 6))
    toks = ops.sample_tokens(keys, jnp.asarray(logits), jnp.zeros(6), jnp.full(6, 0.9),
                             jnp.full(6, 5, jnp.int32))
    np.testing.assert_array_equal(np.asarray(toks), logits.argmax(-1))


def test_rows_are_independent_of_their_neighbours():
  """A row's draw depends only on its own key, logits and settings, not on the batch."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(5, 64)).astype(np.float32) * 3)
  keys = jax.random.key_data(jax.random.split(jax.random.key(7), 5))
  temp = jnp.array([0.7, 1.0, 0.0, 0.7, 1.3])
  top_p = jnp.array([0.9, 1.0, 1.0, 1.0, 0.8])
  top_k = jnp.array([0, 0, 0, 10, 3], jnp.int32)
  together = np.asarray(ops.sample_tokens(keys, logits, temp, top_p, top_k))
  for i in range(5):
    alone = ops.sample_tokens(keys[i:i + 1], logits[i:i + 1], temp[i:i + 1], top_p[i:i + 1],
                              top_k[i:i + 1])
    assert int(alone[0]) == together[i]
  # a row without filtering gives the same draw whether or not another row needs the sort
  plain = ops.sample_tokens(keys[1:2], logits[1:2], temp[1:2], top_p[1:2], top_k[1:2])
  assert int(plain[0]) == together[1]


def test_token_logprobs_are_raw_log_softmax():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 20)).astype(np.float32))
  toks = jnp.array([0, 7, 19])
  want = jax.nn.log_softmax(logits, -1)[jnp.arange(3), toks]
  np.testing.assert_allclose(np.asarray(ops.token_logprobs(logits, toks)), np.asarray(want),
                             rtol=1e-6)


def test_step_keys_differ_per_step_and_row():
  keys = jax.random.key_data(jax.random.split(jax.random.key(0), 2))
  a = np.asarray(ops.step_keys(keys, jnp.array([0, 0])))
  b = np.asarray(ops.step_keys(keys, jnp.array([1, 1])))
  assert not np.array_equal(a[0], a[1]) and not np.array_equal(a, b)


@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (1.0, 7), (0.95, 40), (0.999, 0)])
def test_top_cap_fast_path_equals_full_sort(top_p, top_k):
  """The lax.top_k path (kept set within the cap) and the exact bisection fallback keep the set of
  the full-sort reference."""
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(6, 300)).astype(np.float32) * np.array(
      [[0.3], [1.0], [3.0], [6.0], [0.05], [2.0]], np.float32))
  temp, p, k = jnp.full(6, 0.8), jnp.full(6, top_p), jnp.full(6, top_k, jnp.int32)
  full = jax.vmap(ops.filter_logits)(logits / 0.8, p, k)
  for cap in (8, 300):
    got = jax.jit(ops.sampling_logits, static_argnames="top_cap")(logits, temp, p, k, top_cap=cap)
    np.testing.assert_array_equal(np.isfinite(np.asarray(got)), np.isfinite(np.asarray(full)))


def test_top_cap_path_taken_for_peaked_rows_and_skipped_only_where_it_cannot_resolve():
  """sampling_logits skips lax.top_k when _exceeds_cap flags a row; it flags only rows the top_cap
  path leaves unresolved (so skipping never changes which rows could take the fast path), and a
  batch of peaked rows takes the fast path and keeps the sort reference's sets."""
  rng = np.random.default_rng(8)
  scales = np.array([0.02, 0.1, 0.3, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0], np.float32)
  x = jnp.asarray(rng.normal(size=(9, 2000)).astype(np.float32) * scales[:, None])
  for top_p, top_k in [(0.9, 0), (0.5, 0), (0.99, 0), (1.0, 10), (1.0, 100), (0.9, 100)]:
    p, k = jnp.full(9, top_p), jnp.full(9, top_k, jnp.int32)
    flagged = np.asarray(ops._exceeds_cap(x, p, k, 64))
    _, resolved = ops._thresholds_from_top(x, p, k, 64)
    assert not np.any(flagged & np.asarray(resolved)), (top_p, top_k, flagged, resolved)
  p, k = jnp.full(9, 0.9), jnp.zeros(9, jnp.int32)
  flagged = np.asarray(ops._exceeds_cap(x, p, k, 64))
  assert flagged[:3].all() and not flagged[-3:].any(), flagged  # near-uniform / peaked rows
  peaked, pp, kk = x[-3:], p[:3], k[:3]
  assert np.asarray(ops._thresholds_from_top(peaked, pp, kk, 64)[1]).all()
  want = jax.vmap(ops.filter_logits)(peaked, pp, kk)
  got = ops.sampling_logits(peaked, jnp.ones(3), pp, kk)
  np.testing.assert_array_equal(np.isfinite(np.asarray(got)), np.isfinite(np.asarray(want)))
  assert 1 < np.isfinite(np.asarray(got)).sum(-1).max() < 64


def _wide_logits(rows, vocab, seed, ties=False):
  x = np.random.default_rng(seed).normal(size=(rows, vocab)).astype(np.float32)
  return np.round(x * 2) / 2 if ties else x * 0.3  # ties (and -0.0) / a nucleus ~ the vocabulary


@pytest.mark.parametrize("ties", [False, True])
def test_bisection_path_keeps_the_sort_reference_sets(ties):
  """Nuclei and top-k wider than the top_cap: the exact bisection keeps what the sort keeps,
  ties at the threshold and -inf logits included."""
  logits = _wide_logits(12, 500, seed=4, ties=ties)
  logits[::3, :100] = -np.inf
  temp = jnp.full(12, 0.7)
  p = jnp.array([0.9, 0.5, 0.999, 1e-6, 1.0, 0.3, 0.95, 1.0, 0.7, 0.9, 1.0, 0.2], jnp.float32)
  k = jnp.array([0, 0, 0, 0, 200, 300, 450, 499, 500, 650, 0, 150], jnp.int32)
  want = jax.vmap(ops.filter_logits)(jnp.asarray(logits) / 0.7, p, k)
  got = jax.jit(ops.sampling_logits, static_argnames="top_cap")(logits, temp, p, k, top_cap=16)
  np.testing.assert_array_equal(np.isfinite(np.asarray(got)), np.isfinite(np.asarray(want)))
  kept = np.isfinite(np.asarray(got))
  np.testing.assert_allclose(np.asarray(got)[kept], (logits / np.float32(0.7))[kept], rtol=1e-6)


@pytest.mark.parametrize("top_p,top_k", [(0.9, 0), (1.0, 150), (0.8, 200)])
def test_wide_nucleus_frequencies_match_filtered_softmax(top_p, top_k):
  """Chi-square of draws whose kept set (~150-270 tokens) exceeds the top_cap (the bisection
  path), against the independent numpy reference."""
  logits = _wide_logits(1, 300, seed=5)[0]
  n = 40000
  keys = jax.random.key_data(jax.random.split(jax.random.key(11), n))
  toks = jax.jit(ops.sample_tokens)(keys, jnp.broadcast_to(jnp.asarray(logits), (n, 300)),
                                    jnp.full((n,), 0.7), jnp.full((n,), top_p),
                                    jnp.full((n,), top_k, jnp.int32))
  counts = np.bincount(np.asarray(toks), minlength=300)
  expected = _expected(logits, 0.7, top_p, top_k)
  assert (expected > 0).sum() > 64
  assert np.all(counts[expected == 0] == 0)
  kept = expected > 0
  _, p_value = stats.chisquare(counts[kept], expected[kept] * n)
  assert p_value > 1e-3, p_value


def test_mixed_greedy_and_sampled_rows_and_all_greedy_skip():
  """All-greedy batches skip the draw (same argmax); a greedy row next to sampled rows is argmax."""
  logits = jnp.asarray(_wide_logits(3, 100, seed=6))
  keys = jax.random.key_data(jax.random.split(jax.random.key(0), 3))
  greedy = ops.sample_tokens(keys, logits, jnp.zeros(3), jnp.full(3, 0.9), jnp.zeros(3, jnp.int32))
  np.testing.assert_array_equal(np.asarray(greedy), np.asarray(logits).argmax(-1))
  mixed = ops.sample_tokens(keys, logits, jnp.array([0.0, 0.7, 1.0]), jnp.full(3, 0.9),
                            jnp.zeros(3, jnp.int32))
  assert int(mixed[0]) == int(np.asarray(logits)[0].argmax())


def test_inverse_cdf_draw_across_blocks_matches_softmax():
  """``draw_from_logits`` over a vocabulary of several 256-token blocks (the last one padded):
  chi-square against the exact softmax, -inf entries never drawn, single-token rows exact."""
  rs = np.random.RandomState(0)
  v, n = 700, 60000
  logits = rs.normal(size=v).astype(np.float32) * 2
  logits[rs.rand(v) < 0.5] = -np.inf   # half the vocabulary excluded, in every block
  logits[[0, 255, 256, 511, 699]] = [3.0, 2.5, 2.5, 3.5, 3.0]  # block edges and the last token
  p = np.exp(logits.astype(np.float64) - logits[np.isfinite(logits)].max())
  p /= p.sum()
  keys = jax.random.key_data(jax.random.split(jax.random.key(7), n))
  toks = np.asarray(jax.jit(ops.draw_from_logits)(keys, jnp.broadcast_to(jnp.asarray(logits),
                                                                          (n, v))))
  counts = np.bincount(toks, minlength=v)
  assert counts[~np.isfinite(logits)].sum() == 0
  common = p * n >= 20
  rest = ~common & (p > 0)
  observed = np.append(counts[common], counts[rest].sum())
  expected = np.append(p[common], p[rest].sum()) * n
  _, p_value = stats.chisquare(observed, expected)
  assert p_value > 1e-3, p_value
  for only in (0, 255, 256, 699):  # one token with mass: always that one
    row = np.full((4, v), -np.inf, np.float32)
    row[:, only] = 0.0
    got = ops.draw_from_logits(keys[:4], jnp.asarray(row))
    assert np.all(np.asarray(got) == only), (only, got)


def test_argmax_first_equals_jnp_argmax_with_ties_and_infinities():
  """The two-level greedy argmax: the first index of the maximum, as ``jnp.argmax``, across
  block edges, with ties inside and across blocks, -inf rows parts and a vocabulary that is not a
  multiple of the block."""
  rs = np.random.RandomState(1)
  x = rs.normal(size=(12, 700)).astype(np.float32)
  x[1, [10, 300, 650]] = 9.0           # ties across blocks: the first wins
  x[2, [256, 257]] = 9.0               # tie at a block edge
  x[3, :] = 1.0                        # all equal
  x[4, :699] = -np.inf                 # only the last (padded block) entry is finite
  x[5, [255, 511]] = [7.0, 7.0]
  x[6] = np.round(x[6])                # many ties
  got = np.asarray(jax.jit(ops.argmax_first)(jnp.asarray(x)))
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
  assert got[1] == 10 and got[2] == 256 and got[3] == 0 and got[4] == 699
