"""The SFT and DPO objectives of the shared train step (``step.Objective``), over the batch layouts
built by ``data.batching``:

SFT batch (``collate_sft``), int32 ``[M, b, T]``: ``tokens``, ``loss_mask`` (1 on response tokens),
``segment_ids`` (1.. per packed example, 0 = padding), ``positions`` (restarting per segment).

DPO batch (``collate_pairs``): int32 ``[M, b, T]`` ``chosen_tokens``, ``chosen_loss_mask``,
``chosen_attention_mask`` and the same for ``rejected_*``; with precomputed reference log-probs
also float32 ``[M, b]`` ``ref_chosen_logps`` and ``ref_rejected_logps``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from selfreward_jax.model import llama
from selfreward_jax.train import losses
from selfreward_jax.train.step import Objective


def _dropout_rng(config: llama.LlamaConfig, rng):
  return rng if config.dropout_rate > 0 else None


def sft_objective(config: llama.LlamaConfig) -> Objective:
  """Token-level NLL on target tokens: the step's loss is the mean NLL over all target tokens of
  the batch (``losses.sft_loss`` of the whole batch)."""

  def loss_fn(params, micro, rng, extra):
    del extra
    logps_b, counts_b = losses.sequence_logps(
        params, config, micro["tokens"], micro["loss_mask"], positions_bt=micro["positions"],
        segment_ids_bt=micro["segment_ids"], dropout_rng=_dropout_rng(config, rng))
    aux = {"n_target_tokens": jnp.sum(counts_b),
           "n_tokens": jnp.sum(micro["segment_ids"] > 0).astype(jnp.float32)}
    return -jnp.sum(logps_b), aux

  def denominator_fn(batch):
    return jnp.sum(batch["loss_mask"][..., 1:]).astype(jnp.float32)

  return Objective(loss_fn, denominator_fn)


def pair_logps(params, config: llama.LlamaConfig, micro, dropout_rng=None):
  """Policy log-probs of both sides of each pair in one forward over ``[2b, T]``.

  Returns ``(logps_w, logps_l, counts_w, counts_l)``, each float32 [b].
  """
  b = micro["chosen_tokens"].shape[0]
  cat = lambda k: jnp.concatenate([micro[f"chosen_{k}"], micro[f"rejected_{k}"]], axis=0)
  logps, counts = losses.sequence_logps(params, config, cat("tokens"), cat("loss_mask"),
                                        attention_mask_bt=cat("attention_mask"),
                                        dropout_rng=dropout_rng)
  return logps[:b], logps[b:], counts[:b], counts[b:]


def dpo_objective(config: llama.LlamaConfig, *, beta: float = 0.1, label_smoothing: float = 0.0,
                  loss_type: str = "sigmoid", nll_alpha: float = 0.0,
                  in_step_reference: bool = False) -> Objective:
  """DPO (``losses.dpo_loss``) over pairs; the step's loss is the mean over the batch's pairs.

  Reference log-probs come from the batch (precomputed once before training, the default) or,
  with ``in_step_reference``, from the reference params passed to the step as ``extra``
  (deterministic forward, no gradient). Dropout, if any, applies to the policy only.
  """

  def loss_fn(params, micro, rng, ref_params):
    pi_w, pi_l, n_w, n_l = pair_logps(params, config, micro, _dropout_rng(config, rng))
    if in_step_reference:
      ref_w, ref_l, _, _ = jax.lax.stop_gradient(pair_logps(ref_params, config, micro))
    else:
      ref_w, ref_l = micro["ref_chosen_logps"], micro["ref_rejected_logps"]
    losses_b, metrics_b = losses.dpo_loss_per_pair(
        pi_w, pi_l, ref_w, ref_l, beta=beta, label_smoothing=label_smoothing, loss_type=loss_type,
        chosen_counts=n_w, rejected_counts=n_l, nll_alpha=nll_alpha)
    aux = {k: jnp.sum(v) for k, v in metrics_b.items()}
    aux["policy_chosen_logps"] = jnp.sum(jax.lax.stop_gradient(pi_w))
    aux["policy_rejected_logps"] = jnp.sum(jax.lax.stop_gradient(pi_l))
    aux["n_target_tokens"] = jnp.sum(n_w) + jnp.sum(n_l)
    aux["n_tokens"] = (jnp.sum(micro["chosen_attention_mask"] > 0)
                       + jnp.sum(micro["rejected_attention_mask"] > 0)).astype(jnp.float32)
    return jnp.sum(losses_b), aux

  def denominator_fn(batch):
    m, b = batch["chosen_tokens"].shape[:2]
    return jnp.asarray(m * b, jnp.float32)

  return Objective(loss_fn, denominator_fn)
