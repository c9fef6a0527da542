"""Training losses as plain functions: token and sequence log-probabilities, SFT, DPO (+ IPO, RPO).

Conventions (shared by every function here):

* A loss mask is aligned with the tokens: ``loss_mask_bt[b, t] = 1`` means token ``tokens_bt[b, t]``
  is a target, predicted from the logits at position ``t - 1`` (logits are shifted against labels).
  Position 0 has no prediction and is never a target, whatever the mask says.
  ``Tokenizer.encode_chat_example`` produces exactly such masks (1 on the response and its EOS).
* Log-probabilities are computed in float32 with a logsumexp over the vocabulary, whatever the
  model's compute dtype (``llama.forward`` returns float32 logits).
* Reductions are explicit: ``*_sum`` / per-sequence values for gradient accumulation, and the
  batch-mean losses that the paper's formulas describe.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from selfreward_jax.model import llama

LOSS_TYPES = ("sigmoid", "ipo")


def token_logps(logits_btv: jax.Array, tokens_bt: jax.Array) -> jax.Array:
  """log p(tokens_bt[b, t] | tokens_bt[b, :t]) for t >= 1, aligned with the tokens.

  Args:
    logits_btv: [B, T, V] logits (any float dtype; promoted to float32).
    tokens_bt: int [B, T].

  Returns:
    float32 [B, T]; column 0 is 0 (no prediction for the first token).
  """
  logits = logits_btv[:, :-1].astype(jnp.float32)
  labels_bt = tokens_bt[:, 1:].astype(jnp.int32)
  lse_bt = jax.nn.logsumexp(logits, axis=-1)
  # A one-hot select rather than a gather: it partitions cleanly over a vocab-sharded axis and
  # XLA fuses it into a reduction (no [B, T, V] one-hot is materialised).
  vocab_v = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  label_logit_bt = jnp.sum(jnp.where(vocab_v == labels_bt[..., None], logits, 0.0), axis=-1)
  logps_bt = label_logit_bt - lse_bt
  return jnp.pad(logps_bt, ((0, 0), (1, 0)))


def masked_sequence_logps(logits_btv: jax.Array, tokens_bt: jax.Array,
                          loss_mask_bt: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Per-sequence sum of target-token log-probs from precomputed logits.

  Returns ``(logps_b, counts_b)``: float32 [B] sums over targets and float32 [B] number of targets
  (position 0 excluded).
  """
  mask_bt = jnp.asarray(loss_mask_bt, jnp.float32).at[:, 0].set(0.0)
  logps_bt = token_logps(logits_btv, tokens_bt)
  return jnp.sum(logps_bt * mask_bt, axis=-1), jnp.sum(mask_bt, axis=-1)


def sequence_logps(
    params,
    config: llama.LlamaConfig,
    tokens_bt: jax.Array,
    loss_mask_bt: jax.Array,
    *,
    positions_bt: Optional[jax.Array] = None,
    segment_ids_bt: Optional[jax.Array] = None,
    attention_mask_bt: Optional[jax.Array] = None,
    dropout_rng: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array]:
  """Runs the model and sums the log-probs of the target (response) tokens of each sequence.

  Args:
    params, config: the model (``llama.forward``).
    tokens_bt: int [B, T] prompt + response (+ padding).
    loss_mask_bt: [B, T], 1 on target tokens (aligned with the tokens; see the module docstring).
      Padding must have mask 0.
    positions_bt, segment_ids_bt, attention_mask_bt, dropout_rng: passed to ``llama.forward``
      (packing, padding, dropout).

  Returns:
    ``(logps_b, counts_b)``: float32 [B] log p(response | prompt) = sum of target-token log-probs,
    and float32 [B] target-token counts (for per-token averages, e.g. IPO).

  For a packed row (several segments) this is the sum over all segments of the row; use
  ``token_logps`` with per-segment masks to split it.
  """
  logits_btv = llama.forward(params, tokens_bt, config, positions_bt=positions_bt,
                             segment_ids_bt=segment_ids_bt, attention_mask_bt=attention_mask_bt,
                             dropout_rng=dropout_rng)
  return masked_sequence_logps(logits_btv, tokens_bt, loss_mask_bt)


def sft_loss(params, config: llama.LlamaConfig, tokens_bt: jax.Array, loss_mask_bt: jax.Array,
             **forward_kw) -> Tuple[jax.Array, jax.Array]:
  """Mean negative log-likelihood over the target tokens of the whole batch.

  Every target token weighs the same (a long response counts more than a short one), as in
  standard SFT. ``forward_kw`` are ``sequence_logps``'s keyword arguments.

  Returns ``(loss, n_targets)``; the loss is 0 when the batch has no target token.
  """
  logps_b, counts_b = sequence_logps(params, config, tokens_bt, loss_mask_bt, **forward_kw)
  n = jnp.sum(counts_b)
  return -jnp.sum(logps_b) / jnp.maximum(n, 1.0), n


def dpo_loss_per_pair(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_counts: Optional[jax.Array] = None,
    rejected_counts: Optional[jax.Array] = None,
    nll_alpha: float = 0.0,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Per-pair DPO losses and metrics (see ``dpo_loss`` for the contract); everything is [B]."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type={loss_type!r}; allowed: {LOSS_TYPES}")
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 0.5)")
  if beta <= 0:
    raise ValueError(f"beta={beta} must be positive")
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  pi_w, pi_l = f32(policy_chosen_logps), f32(policy_rejected_logps)
  ref_w, ref_l = f32(ref_chosen_logps), f32(ref_rejected_logps)
  ratio_w, ratio_l = pi_w - ref_w, pi_l - ref_l

  if loss_type == "sigmoid":
    z = beta * (ratio_w - ratio_l)
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
  else:  # ipo
    if label_smoothing:
      raise ValueError("label_smoothing is not defined for the IPO loss")
    if (chosen_counts is None) != (rejected_counts is None):
      raise ValueError("IPO: pass both chosen_counts and rejected_counts, or neither")
    if chosen_counts is not None:
      avg_w = ratio_w / jnp.maximum(f32(chosen_counts), 1.0)
      avg_l = ratio_l / jnp.maximum(f32(rejected_counts), 1.0)
    else:  # the caller passed per-token-averaged log-probs
      avg_w, avg_l = ratio_w, ratio_l
    losses = (avg_w - avg_l - 1.0 / (2.0 * beta)) ** 2

  if nll_alpha:
    if chosen_counts is None:
      raise ValueError("nll_alpha > 0 needs chosen_counts (the NLL is normalised by its length)")
    losses = losses + nll_alpha * (-pi_w / jnp.maximum(f32(chosen_counts), 1.0))

  chosen_rewards = jax.lax.stop_gradient(beta * ratio_w)
  rejected_rewards = jax.lax.stop_gradient(beta * ratio_l)
  metrics = {
      "chosen_reward": chosen_rewards,
      "rejected_reward": rejected_rewards,
      "reward_margin": chosen_rewards - rejected_rewards,
      "reward_accuracy": (chosen_rewards > rejected_rewards).astype(jnp.float32),
  }
  return losses, metrics


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
    chosen_counts: Optional[jax.Array] = None,
    rejected_counts: Optional[jax.Array] = None,
    nll_alpha: float = 0.0,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Direct Preference Optimization loss (Rafailov et al. 2023) and its IPO / RPO variants.

  Inputs are [B] sequence log-probs (``sequence_logps``) of the chosen (w) and rejected (l)
  responses under the policy and the frozen reference. With
  ``delta = (pi_w - ref_w) - (pi_l - ref_l)``:

  * ``loss_type="sigmoid"`` (DPO, with conservative label smoothing eps):
    ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)``.
  * ``loss_type="ipo"`` (Azar et al. 2023): ``(delta_avg - 1 / (2 beta))^2`` where delta_avg uses
    *per-token-averaged* log-ratios, ``(pi_w - ref_w) / n_w - (pi_l - ref_l) / n_l``. Pass the
    summed log-probs with ``chosen_counts``/``rejected_counts`` (target-token counts, the second
    output of ``sequence_logps``) and they are divided here; without counts the log-probs given
    must already be divided by the token counts.
  * ``nll_alpha`` > 0 adds Iterative RPO's term (Pang et al. 2024):
    ``alpha * (-pi_w / n_w)``, the chosen response's NLL normalised by its length (needs
    ``chosen_counts``).

  Returns:
    ``(loss, metrics)``: ``loss`` is the batch mean (float32 scalar); ``metrics`` holds batch means
    of the implicit rewards ``chosen_reward = beta (pi_w - ref_w)``, ``rejected_reward =
    beta (pi_l - ref_l)``, ``reward_margin`` (their difference) and ``reward_accuracy`` (share of
    pairs with chosen_reward > rejected_reward; ties count as wrong). Metrics carry no gradient.
  """
  losses_b, metrics_b = dpo_loss_per_pair(
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
      beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
      chosen_counts=chosen_counts, rejected_counts=rejected_counts, nll_alpha=nll_alpha)
  return jnp.mean(losses_b), {k: jnp.mean(v) for k, v in metrics_b.items()}
