"""Token sampling from logits: temperature, top-k, top-p (nucleus), greedy; per-row settings.

Pure JAX, no JetStream import. All arithmetic is float32. Shapes: b rows (decode slots), v vocab.

The sampling distribution of one row, in HF ``generate`` order:

  1. ``temperature == 0``: greedy, ``argmax(logits)`` (first index on ties); the rng is unused.
  2. scale: ``logits / temperature``.
  3. top-k (``top_k > 0``): keep the tokens whose scaled logit is >= the k-th largest (ties at the
     threshold are all kept, as HF's ``TopKLogitsWarper`` does).
  4. top-p (``top_p < 1``): on the renormalised top-k distribution, keep the smallest prefix of
     tokens sorted by probability whose mass reaches ``top_p`` (a token is kept when the mass of the
     tokens strictly more probable than it is < ``top_p``; the most probable token is always kept;
     ties at the threshold are all kept).
  5. draw from the softmax of the kept scaled logits (Gumbel-max via ``jax.random.categorical``).

Each row's draw depends only on its own key and logits, so a row's sample does not depend on the
other rows of the batch (the property the offline sampler's batch-independence rests on).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MIN_TEMPERATURE = 1e-6


def filter_logits(scaled_v: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
  """Masks one row of temperature-scaled logits to -inf outside its top-k / top-p set.

  Args:
    scaled_v: f32 [V], logits already divided by the temperature.
    top_p: f32 [] in (0, 1]; 1 disables.
    top_k: int32 [] >= 0; 0 (or >= V) disables.

  Returns:
    f32 [V]: ``scaled_v`` where kept, -inf elsewhere (at least one token is always kept).
  """
  v = scaled_v.shape[-1]
  sorted_v = -jnp.sort(-scaled_v)  # descending
  k = jnp.where((top_k > 0) & (top_k < v), top_k, v)
  in_top_k_v = jnp.arange(v) < k
  kth = sorted_v[k - 1]
  sorted_k_v = jnp.where(in_top_k_v, sorted_v, -jnp.inf)
  probs_v = jax.nn.softmax(sorted_k_v)
  mass_before_v = jnp.cumsum(probs_v) - probs_v
  keep_sorted_v = in_top_k_v & ((mass_before_v < top_p) | (top_p >= 1.0))
  n_keep = jnp.maximum(jnp.sum(keep_sorted_v), 1)
  threshold = jnp.maximum(sorted_v[n_keep - 1], kth)
  return jnp.where(scaled_v >= threshold, scaled_v, -jnp.inf)


def _thresholds_from_top(scaled_bv: jax.Array, top_p_b: jax.Array, top_k_b: jax.Array,
                         cap: int):
  """Per-row keep thresholds from the ``cap`` largest logits only (``lax.top_k``, far cheaper
  than sorting the vocabulary). Returns (threshold_b, resolved_b): a row is resolved when its
  kept set provably lies within its ``cap`` largest logits; then ``scaled >= threshold`` is
  exactly the set ``filter_logits`` keeps (-inf threshold for rows without filtering)."""
  v = scaled_bv.shape[-1]
  vals_bc, _ = jax.lax.top_k(scaled_bv, cap)  # descending
  no_k_b = (top_k_b <= 0) | (top_k_b >= v)
  k_b = jnp.where(no_k_b, v, top_k_b)
  in_k_bc = jnp.arange(cap)[None, :] < k_b[:, None]
  lse_all_b = jax.nn.logsumexp(scaled_bv, axis=-1)
  lse_k_b = jax.nn.logsumexp(jnp.where(in_k_bc, vals_bc, -jnp.inf), axis=-1)
  probs_bc = jnp.where(in_k_bc, jnp.exp(vals_bc - jnp.where(no_k_b, lse_all_b, lse_k_b)[:, None]), 0)
  mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
  keep_bc = in_k_bc & ((mass_before_bc < top_p_b[:, None]) | (top_p_b[:, None] >= 1.0))
  n_keep_b = jnp.maximum(jnp.sum(keep_bc, axis=-1), 1)
  threshold_b = jnp.take_along_axis(vals_bc, (n_keep_b - 1)[:, None], axis=-1)[:, 0]
  unfiltered_b = (top_p_b >= 1.0) & no_k_b
  resolved_b = unfiltered_b | (n_keep_b < cap) | (k_b <= cap)
  return jnp.where(unfiltered_b, -jnp.inf, threshold_b), resolved_b


def sampling_logits(logits_bv: jax.Array, temperature_b: jax.Array, top_p_b: jax.Array,
                    top_k_b: jax.Array, *, top_cap: int = 64) -> jax.Array:
  """The logits each row is drawn from (steps 2-4 above): f32 [B, V], -inf outside the kept set.

  No row uses top-k/top-p: no filtering at all. Otherwise the keep thresholds come from the
  ``top_cap`` largest logits (``lax.top_k``) when every row's kept set fits in them (the common
  case: a 0.9 nucleus of a language model is rarely 64 tokens wide), else from a full sort
  (``filter_logits``). Both give the same set; a row with ``top_p=1, top_k=0`` is never changed.
  """
  scaled_bv = logits_bv.astype(jnp.float32) / jnp.maximum(temperature_b, _MIN_TEMPERATURE)[:, None]
  cap = min(top_cap, scaled_bv.shape[-1])

  def filtered(x):
    threshold_b, resolved_b = _thresholds_from_top(x, top_p_b, top_k_b, cap)
    fast = lambda: jnp.where(x >= threshold_b[:, None], x, -jnp.inf)
    slow = lambda: jax.vmap(filter_logits)(x, top_p_b, top_k_b)
    return jax.lax.cond(jnp.all(resolved_b), fast, slow)

  needs_filter = jnp.any((top_p_b < 1.0) | (top_k_b > 0))
  return jax.lax.cond(needs_filter, filtered, lambda x: x, scaled_bv)


def sample_tokens(keys_b2: jax.Array, logits_bv: jax.Array, temperature_b: jax.Array,
                  top_p_b: jax.Array, top_k_b: jax.Array) -> jax.Array:
  """Draws one token per row with that row's own settings and key.

  Args:
    keys_b2: uint32 [B, 2] raw threefry key data, one key per row (``jax.random.key_data``).
    logits_bv: [B, V] raw next-token logits (any float dtype; computed in f32).
    temperature_b: f32 [B]; 0 = greedy for that row.
    top_p_b: f32 [B] in (0, 1].
    top_k_b: int32 [B] >= 0.

  Returns:
    int32 [B] token ids.
  """
  logits_bv = logits_bv.astype(jnp.float32)
  filtered_bv = sampling_logits(logits_bv, temperature_b, top_p_b, top_k_b)
  keys = jax.random.wrap_key_data(keys_b2)
  drawn_b = jax.vmap(jax.random.categorical)(keys, filtered_bv)
  greedy_b = jnp.argmax(logits_bv, axis=-1)
  return jnp.where(temperature_b > 0, drawn_b, greedy_b).astype(jnp.int32)


def token_logprobs(logits_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  """f32 [B]: ``log_softmax(logits)[token]`` of the raw (unscaled, unfiltered) logits, i.e. the
  token's log-probability under the model itself, not under the tempered/truncated distribution."""
  logp_bv = jax.nn.log_softmax(logits_bv.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp_bv, tokens_b[:, None].astype(jnp.int32), axis=-1)[:, 0]


def step_keys(keys_b2: jax.Array, steps_b: jax.Array) -> jax.Array:
  """uint32 [B, 2]: each row's key folded with its step (``fold_in(key_b, step_b)``)."""
  def one(k2, n):
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k2), n))
  return jax.vmap(one)(keys_b2, steps_b)
