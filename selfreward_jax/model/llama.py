"""Llama 2 as plain functions over a pytree of parameters.

Shapes are named by letters in variable names (Tunix style):
  b batch, t query time, s key time (cache slots), d model dim, n query heads,
  k kv heads, g query heads per kv head (n = k * g), h head dim, f ffn dim, v vocab,
  l layers.

Parameters (a plain dict; layers stacked on a leading axis and run with ``lax.scan``)::

  embed        [v, d]
  layers/attn_norm [l, d]        layers/wq [l, d, n, h]   layers/wk [l, d, k, h]
  layers/wv    [l, d, k, h]      layers/wo [l, n, h, d]   layers/mlp_norm [l, d]
  layers/w_gate [l, d, f]        layers/w_up [l, d, f]    layers/w_down [l, f, d]
  final_norm   [d]
  lm_head      [d, v]            (absent when ``tie_embeddings``)

Attention uses rotate-half rotary embeddings (the pairing of HF-layout q/k weights; Meta's
``consolidated.*.pth`` weights are permuted on import, see ``checkpoint/meta.py``).

Numerics: parameters are stored in ``param_dtype`` and cast to ``compute_dtype`` inside the
layer; every matmul accumulates in float32 (``preferred_element_type``); RMSNorm, softmax, RoPE
and the logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from selfreward_jax import sharding as shd

Params = Mapping[str, Any]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture and numerics of a Llama 2 model (frozen; build presets with the classmethods).

  Attributes:
    vocab_size: V, number of token ids.
    dim: D, model width.
    n_layers: L.
    n_heads: N, query heads.
    n_kv_heads: K, key/value heads (K == N is MHA; K < N is grouped-query attention).
    ffn_dim: F, SwiGLU hidden width.
    head_dim: H; defaults to dim // n_heads.
    norm_eps: RMSNorm epsilon.
    rope_theta: rotary base.
    max_seq_len: longest position the model is used at (KV caches are sized from it).
    tie_embeddings: use ``embed.T`` as the output projection (no ``lm_head``).
    param_dtype: storage dtype of the parameters ("float32" master weights for training).
    compute_dtype: activation/matmul-input dtype ("bfloat16" or "float32"); matmuls accumulate
      in float32 regardless.
    dropout_rate: dropout on each residual branch output and the attention probabilities, only
      when ``forward`` gets a ``dropout_rng`` (the paper fine-tunes with 0.1).
    remat: activation checkpointing of each layer: "none", "full" (save nothing),
      "dots" (save matmul outputs), "dots_no_batch" (save matmul outputs without batch dims).
  """

  vocab_size: int = 32000
  dim: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 32
  ffn_dim: int = 11008
  head_dim: Optional[int] = None
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  max_seq_len: int = 4096
  tie_embeddings: bool = False
  param_dtype: str = "float32"
  compute_dtype: str = "bfloat16"
  dropout_rate: float = 0.0
  remat: str = "none"

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f"LlamaConfig.{field}={getattr(self, field)!r}: {why}")

    for field in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
      if int(getattr(self, field)) <= 0:
        bad(field, "must be a positive integer")
    if self.n_heads % self.n_kv_heads:
      bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
    if self.head_dim is None and self.dim % self.n_heads:
      bad("dim", f"must be divisible by n_heads={self.n_heads} (or set head_dim)")
    if self.hd % 2:
      bad("head_dim", "must be even for rotary embeddings")
    for field in ("param_dtype", "compute_dtype"):
      if getattr(self, field) not in _DTYPES:
        bad(field, f"allowed: {sorted(_DTYPES)}")
    if self.remat not in REMAT_POLICIES:
      bad("remat", f"allowed: {REMAT_POLICIES}")
    if not 0.0 <= self.dropout_rate < 1.0:
      bad("dropout_rate", "must be in [0, 1)")

  @property
  def hd(self) -> int:
    """Head dim H."""
    return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

  @property
  def pdtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def cdtype(self):
    return _DTYPES[self.compute_dtype]

  def replace(self, **kw) -> "LlamaConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, f, l, v = self.dim, self.ffn_dim, self.n_layers, self.vocab_size
    attn = d * self.hd * (2 * self.n_heads + 2 * self.n_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + l * per_layer + d

  # ---- presets -------------------------------------------------------------------------------
  @classmethod
  def llama2_7b(cls, **kw) -> "LlamaConfig":
    return cls(**{**dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008), **kw})

  @classmethod
  def llama2_13b(cls, **kw) -> "LlamaConfig":
    return cls(**{**dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, ffn_dim=13824), **kw})

  @classmethod
  def llama2_70b(cls, **kw) -> "LlamaConfig":
    return cls(**{**dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672), **kw})

  @classmethod
  def tiny(cls, **kw) -> "LlamaConfig":
    """A few-hundred-thousand-parameter model for tests and the embedded default (GQA 4:2)."""
    base = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176,
                max_seq_len=512, compute_dtype="float32")
    return cls(**{**base, **kw})

  @classmethod
  def preset(cls, name: str, **kw) -> "LlamaConfig":
    presets = {"llama2_7b": cls.llama2_7b, "llama2_13b": cls.llama2_13b,
               "llama2_70b": cls.llama2_70b, "tiny": cls.tiny}
    if name not in presets:
      raise ValueError(f"unknown model preset {name!r}; allowed: {sorted(presets)}")
    return presets[name](**kw)


# ---- parameters ----------------------------------------------------------------------------------

def param_shapes(config: LlamaConfig) -> dict:
  """Shapes of every parameter, as a pytree of tuples (same structure as ``init_params``)."""
  c = config
  l, d, n, k, h, f, v = c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.hd, c.ffn_dim, c.vocab_size
  shapes = {
      "embed": (v, d),
      "layers": {
          "attn_norm": (l, d), "wq": (l, d, n, h), "wk": (l, d, k, h), "wv": (l, d, k, h),
          "wo": (l, n, h, d), "mlp_norm": (l, d),
          "w_gate": (l, d, f), "w_up": (l, d, f), "w_down": (l, f, d),
      },
      "final_norm": (d,),
  }
  if not c.tie_embeddings:
    shapes["lm_head"] = (d, v)
  return shapes


def param_axes(config: LlamaConfig) -> dict:
  """Logical axis names of every parameter (mapped to mesh axes by ``sharding.RULES``)."""
  axes = {
      # The embedding table gets its own names: sharding it (fsdp, tensor) avoids the full
      # rematerialisation XLA falls into with (tensor, fsdp) and a (data, fsdp) batch.
      "embed": ("table_vocab", "table_embed"),
      "layers": {
          "attn_norm": ("layers", "norm"),
          "wq": ("layers", "embed", "heads", "head_dim"),
          "wk": ("layers", "embed", "kv_heads", "head_dim"),
          "wv": ("layers", "embed", "kv_heads", "head_dim"),
          "wo": ("layers", "heads", "head_dim", "embed"),
          "mlp_norm": ("layers", "norm"),
          "w_gate": ("layers", "embed", "mlp"),
          "w_up": ("layers", "embed", "mlp"),
          "w_down": ("layers", "mlp", "embed"),
      },
      "final_norm": ("norm",),
  }
  if not config.tie_embeddings:
    axes["lm_head"] = ("embed", "vocab")
  return axes


def init_params(config: LlamaConfig, rng: jax.Array) -> dict:
  """Random parameters (normal, std 0.02 as in HF ``initializer_range``; norms at 1).

  Returns a plain pytree in ``config.param_dtype``, computed by one jitted program (on the default
  device). To create them directly sharded on a mesh, use ``sharding.init_sharded_params``.
  """
  return _init_params_jit(config, rng)


def _init_params(config: LlamaConfig, rng: jax.Array) -> dict:
  shapes = param_shapes(config)
  flat, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda x: isinstance(x, tuple))[0]]
  keys = jax.random.split(rng, len(flat))
  leaves = []
  for path, shape, key in zip(paths, flat, keys):
    if "norm" in path:
      leaves.append(jnp.ones(shape, config.pdtype))
    else:
      leaves.append((0.02 * jax.random.normal(key, shape, jnp.float32)).astype(config.pdtype))
  return jax.tree.unflatten(treedef, leaves)


_init_params_jit = jax.jit(_init_params, static_argnums=0)


# ---- building blocks -----------------------------------------------------------------------------

def rms_norm(x_btd: jax.Array, w_d: jax.Array, eps: float) -> jax.Array:
  """RMSNorm in float32, returned in the input dtype (HF: normalise in f32, cast, then scale)."""
  x32 = x_btd.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (w_d.astype(jnp.float32) * y.astype(x_btd.dtype).astype(jnp.float32)).astype(x_btd.dtype)


def rope(x_btnh: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """Rotate-half rotary embedding: pairs dimension i with i + H/2 (HF layout), in float32."""
  h = x_btnh.shape[-1]
  inv_freq_j = 1.0 / (theta ** (np.arange(0, h, 2, dtype=np.float32) / h))
  angles_btj = positions_bt.astype(jnp.float32)[..., None] * inv_freq_j
  cos_bt1j, sin_bt1j = jnp.cos(angles_btj)[:, :, None, :], jnp.sin(angles_btj)[:, :, None, :]
  x = x_btnh.astype(jnp.float32)
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  out = jnp.concatenate([x1 * cos_bt1j - x2 * sin_bt1j, x2 * cos_bt1j + x1 * sin_bt1j], axis=-1)
  return out.astype(x_btnh.dtype)


def _dot(spec: str, a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
  """``_dot_f32acc`` with its output named for the remat policies: "attn_dot" for the two
  attention products (dot_generals with a batch dimension), "proj_dot" for the weight matmuls.
  (``jax.checkpoint``'s dot policies cannot see inside a ``custom_vjp``; names can.)"""
  name = "attn_dot" if spec.split(",")[1][0] == "b" else "proj_dot"
  if name == "proj_dot" and a.shape[0] * a.shape[1] == 1 and jnp.dtype(a.dtype).itemsize == 2:
    # one 16-bit row (a prefill's logits at the last prompt token, a one-slot decode): XLA:CPU's
    # bf16 matrix-vector product runs ~10x slower than a two-row product ([1, 512] x [512, 32000]:
    # 22.9 vs 2.0 ms), so multiply two rows (the second zero) and keep the first
    a2 = jnp.concatenate([a, jnp.zeros_like(a)], axis=0)
    return checkpoint_name(_dot_f32acc(spec, a2, b, out_dtype)[:1], name)
  return checkpoint_name(_dot_f32acc(spec, a, b, out_dtype), name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _dot_f32acc(spec: str, a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
  """einsum with float32 accumulation, cast to ``out_dtype``.

  Its gradient is two einsums of the same kind: the cotangent is cast to the inputs' dtype and
  both products accumulate in float32. (Autodiff of ``preferred_element_type`` would instead
  multiply the float32 cotangent by the upcast bf16 operand: every backward matmul in float32,
  ~4x slower than bf16-in/f32-accumulate on CPUs with bf16 dot units and TPUs/GPUs alike.)
  """
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _dot_fwd(spec, a, b, out_dtype):
  return _dot_f32acc(spec, a, b, out_dtype), (a, b)


def _dot_bwd(spec, out_dtype, res, g):
  del out_dtype
  a, b = res
  a_spec, b_spec, out_spec = re.split(",|->", spec)
  g = g.astype(jnp.promote_types(a.dtype, b.dtype))
  da = jnp.einsum(f"{out_spec},{b_spec}->{a_spec}", g, b, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{a_spec},{out_spec}->{b_spec}", a, g, preferred_element_type=jnp.float32)
  return da.astype(a.dtype), db.astype(b.dtype)


_dot_f32acc.defvjp(_dot_fwd, _dot_bwd)


def _dropout(x: jax.Array, rate: float, rng: Optional[jax.Array]) -> jax.Array:
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class KVCache(NamedTuple):
  """Per-layer key/value cache, in one of two layouts.

  Stacked: k_lbksh, v_lbksh are arrays [L, B, K, S, H]; the layer scan scatters into them in
  place. Per layer: they are tuples of L arrays [B, K, S, H] (``init_cache(..., per_layer=True)``);
  ``forward`` then runs the layers unrolled and each layer reads and writes its own array, so no
  layer slice of a stack is copied per decode step (what bounds the stacked layout's decode on
  XLA:CPU; see ``forward``). Slot s holds the key/value of position s, in the cache dtype.
  (Heads before slots: each (row, kv head) is a contiguous [S, H] matrix, the layout decode
  attention reads fastest; XLA:CPU ran the [B, S, K, H] layout's batched dots ~7x slower.)
  The attention of a query at position p sees slots 0..p, so a cache is valid as long as every
  slot below the current position was written (prefill writes 0..T-1, each decode step writes
  its own position; stale slots above a sequence's length are never attended to).
  """

  k_lbksh: Any
  v_lbksh: Any

  @property
  def per_layer(self) -> bool:
    return isinstance(self.k_lbksh, (tuple, list))

  @property
  def length(self) -> int:
    """S, the number of cache slots per sequence."""
    return (self.k_lbksh[0] if self.per_layer else self.k_lbksh).shape[-2]


def init_cache(config: LlamaConfig, batch: int, max_len: Optional[int] = None,
               dtype=None, per_layer: bool = False) -> KVCache:
  """Zeroed KV cache for ``batch`` sequences of up to ``max_len`` (default ``config.max_seq_len``)
  in ``dtype`` (default the compute dtype): stacked [L, B, K, S, H], or with ``per_layer`` tuples of
  L arrays [B, K, S, H]."""
  s = max_len or config.max_seq_len
  dtype = config.cdtype if dtype is None else dtype
  if per_layer:
    shape = (batch, config.n_kv_heads, s, config.hd)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
    return KVCache(zeros(), zeros())
  shape = (config.n_layers, batch, config.n_kv_heads, s, config.hd)
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def unstack_layers(params: Params, dtype=None) -> Params:
  """``params`` with ``layers`` as a tuple of L per-layer dicts (each leaf copied out of the stack,
  cast to ``dtype`` if given). ``forward`` runs such params with the layers unrolled; the leaves
  outside the stack are shared, not copied. Params already unstacked are returned as they are
  (cast if needed)."""
  layers = params["layers"]
  cast = (lambda w: w) if dtype is None else (lambda w: w.astype(dtype))
  if isinstance(layers, (tuple, list)):
    return {**params, "layers": tuple(jax.tree.map(cast, lp) for lp in layers)}
  n = jax.tree.leaves(layers)[0].shape[0]
  return {**params, "layers": tuple(jax.tree.map(lambda w: cast(w[i]), layers) for i in range(n))}


NEG_INF = -1e30


def _attention(q_btnh, k_bskh, v_bskh, mask_bts, config, rng, heads_major: bool = False):
  """Grouped-query attention; softmax in float32. ``mask_bts`` True where a key is visible.
  ``heads_major``: keys and values are laid out [B, K, S, H] (the KV cache) instead of
  [B, S, K, H]."""
  b, t, n, h = q_btnh.shape
  kv = "bksh" if heads_major else "bskh"
  k_heads = k_bskh.shape[1 if heads_major else 2]
  q_btkgh = q_btnh.reshape(b, t, k_heads, n // k_heads, h)
  scores_bkgts = _dot(f"btkgh,{kv}->bkgts", q_btkgh, k_bskh, jnp.float32) / np.sqrt(h).astype(
      np.float32)
  scores_bkgts = jnp.where(mask_bts[:, None, None, :, :], scores_bkgts, NEG_INF)
  probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1)
  probs_bkgts = _dropout(probs_bkgts, config.dropout_rate, rng)
  out_btkgh = _dot(f"bkgts,{kv}->btkgh", probs_bkgts.astype(v_bskh.dtype), v_bskh, q_btnh.dtype)
  return out_btkgh.reshape(b, t, n, h)


def _write_layer_cache(cache: jax.Array, layer: Optional[jax.Array], new_btkh: jax.Array,
                       positions_bt: jax.Array) -> jax.Array:
  """Writes row b's T new entries at slots positions_bt[b]: into layer ``layer`` of a stack
  [L, B, K, S, H], or (``layer`` None) into one layer's array [B, K, S, H]. A scatter, in place
  under a loop carry / donation; positions must lie in the cache."""
  b_b1 = jnp.arange(new_btkh.shape[0])[:, None]
  # advanced indices (layer, b, positions) around the K slice: the update is laid out [B, T, K, H]
  idx = (b_b1, slice(None), positions_bt) if layer is None else (layer, b_b1, slice(None),
                                                                  positions_bt)
  return cache.at[idx].set(new_btkh.astype(cache.dtype), mode="drop")


def _layer(config, x_btd, lp, positions_bt, mask_bts, rng, cache_k, cache_v, layer=None):
  """One transformer block. Returns (x_btd, new_cache_k, new_cache_v).

  With a cache: either the whole stacks [L, B, K, S, H] with ``layer`` this block's index (the
  new K/V are scattered into layer ``layer``, in place as a loop carry, and attention reads that
  layer), or (``layer`` None) this block's own arrays [B, K, S, H]. Without, they are None."""
  c = config
  cd = c.cdtype
  lp = jax.tree.map(lambda w: w.astype(cd), lp)
  rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))

  h_btd = rms_norm(x_btd, lp["attn_norm"], c.norm_eps)
  q_btnh = rope(_dot("btd,dnh->btnh", h_btd, lp["wq"], cd), positions_bt, c.rope_theta)
  k_btkh = rope(_dot("btd,dkh->btkh", h_btd, lp["wk"], cd), positions_bt, c.rope_theta)
  v_btkh = _dot("btd,dkh->btkh", h_btd, lp["wv"], cd)
  q_btnh = shd.constrain(q_btnh, ("batch", "seq", "act_heads", None))

  if cache_k is not None:
    cache_k = _write_layer_cache(cache_k, layer, k_btkh, positions_bt)
    cache_v = _write_layer_cache(cache_v, layer, v_btkh, positions_bt)
    if layer is None:
      k_bksh, v_bksh = cache_k, cache_v
    else:
      k_bksh = jax.lax.dynamic_index_in_dim(cache_k, layer, keepdims=False)
      v_bksh = jax.lax.dynamic_index_in_dim(cache_v, layer, keepdims=False)
    attn_btnh = _attention(q_btnh, k_bksh, v_bksh, mask_bts, c, rngs[0], heads_major=True)
  else:
    attn_btnh = _attention(q_btnh, k_btkh, v_btkh, mask_bts, c, rngs[0])
  attn_btd = _dot("btnh,nhd->btd", attn_btnh, lp["wo"], cd)
  x_btd = x_btd + _dropout(attn_btd, c.dropout_rate, rngs[1])
  x_btd = shd.constrain(x_btd, ("batch", "seq", None))

  h_btd = rms_norm(x_btd, lp["mlp_norm"], c.norm_eps)
  gate_btf = _dot("btd,df->btf", h_btd, lp["w_gate"], cd)
  up_btf = _dot("btd,df->btf", h_btd, lp["w_up"], cd)
  act_btf = (jax.nn.silu(gate_btf.astype(jnp.float32)) * up_btf.astype(jnp.float32)).astype(cd)
  act_btf = shd.constrain(act_btf, ("batch", "seq", "act_mlp"))
  mlp_btd = _dot("btf,fd->btd", act_btf, lp["w_down"], cd)
  x_btd = x_btd + _dropout(mlp_btd, c.dropout_rate, rngs[2])
  x_btd = shd.constrain(x_btd, ("batch", "seq", None))
  return x_btd, cache_k, cache_v


def _remat(fn, policy: str):
  if policy == "none":
    return fn
  policies = {
      "full": jax.checkpoint_policies.nothing_saveable,
      "dots": jax.checkpoint_policies.save_only_these_names("proj_dot", "attn_dot"),
      "dots_no_batch": jax.checkpoint_policies.save_only_these_names("proj_dot"),
  }
  return jax.checkpoint(fn, policy=policies[policy], static_argnums=(0,))


def forward(
    params: Params,
    tokens_bt: jax.Array,
    config: LlamaConfig,
    *,
    positions_bt: Optional[jax.Array] = None,
    segment_ids_bt: Optional[jax.Array] = None,
    attention_mask_bt: Optional[jax.Array] = None,
    dropout_rng: Optional[jax.Array] = None,
    cache: Optional[KVCache] = None,
    return_hidden: bool = False,
    logits_at_b: Optional[jax.Array] = None,
):
  """Runs the model. The same function serves training, prefill and one-token decode.

  Args:
    params: pytree from ``init_params`` / ``load_hf_checkpoint``; ``layers`` stacked (the layers
      run under one ``lax.scan``: compile time flat in depth) or a tuple of per-layer dicts
      (``unstack_layers``: the layers run unrolled, as with a per-layer cache).
    tokens_bt: int32 [B, T].
    config: the model's ``LlamaConfig`` (static under jit).
    positions_bt: int32 [B, T] rotary positions; default 0..T-1 on every row. With a cache, row b's
      token t is written to cache slot positions_bt[b, t] (positions must lie in the cache; the
      cache is updated in place, one scatter per layer) and a query at position p attends to
      slots 0..p.
    segment_ids_bt: int32 [B, T] for packed sequences (no cache): a token attends only to earlier
      tokens of the same segment; pass ``positions_bt`` restarting at 0 per segment. Segment 0 is
      padding by convention only if ``attention_mask_bt`` says so.
    attention_mask_bt: bool/int [B, T], False for padding keys (no cache). Padding queries still get
      (meaningless) logits; mask them out of losses.
    dropout_rng: enables dropout at ``config.dropout_rate`` (training); None = deterministic.
    cache: a ``KVCache`` (stacked [L, B, K, S, H] or per layer L x [B, K, S, H]); enables
      prefill/decode and changes the return value. A per-layer cache runs the layers unrolled:
      on XLA:CPU the scan's per-layer slice of a stacked cache (and of stacked weights) is a copy
      every decode step, which made decode ~25% slower at 160 cache slots.
    return_hidden: also return the final normalised hidden states [B, T, D] (compute dtype).
    logits_at_b: int32 [B]: compute the logits only at position ``logits_at_b[b]`` of each row
      (e.g. a prompt's last token in prefill: the output projection of the other positions is
      skipped); the logits are then [B, 1, V].

  Returns:
    logits_btv float32 [B, T, V] ([B, 1, V] with ``logits_at_b``); ``(logits_btv, new_cache)``
    when a cache is given;
    with ``return_hidden`` the hidden states are appended to the returned tuple.
  """
  c = config
  b, t = tokens_bt.shape
  tokens_bt = tokens_bt.astype(jnp.int32)
  if positions_bt is None:
    positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  positions_bt = positions_bt.astype(jnp.int32)

  if cache is not None:
    if segment_ids_bt is not None or attention_mask_bt is not None:
      raise ValueError("forward: segment_ids_bt/attention_mask_bt are not supported with a cache; "
                       "cache visibility is by position")
    s = cache.length
    mask_bts = jnp.arange(s, dtype=jnp.int32)[None, None, :] <= positions_bt[:, :, None]
  else:
    idx_t = jnp.arange(t)
    mask_bts = jnp.broadcast_to(idx_t[None, :, None] >= idx_t[None, None, :], (b, t, t))
    if segment_ids_bt is not None:
      mask_bts = mask_bts & (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])
    if attention_mask_bt is not None:
      mask_bts = mask_bts & attention_mask_bt.astype(bool)[:, None, :]

  x_btd = jnp.take(params["embed"], tokens_bt, axis=0).astype(c.cdtype)
  x_btd = shd.constrain(x_btd, ("batch", "seq", None))

  layer_fn = _remat(_layer, c.remat)
  layer_rngs = (jax.random.split(dropout_rng, c.n_layers)
                if dropout_rng is not None and c.dropout_rate > 0 else None)

  per_layer = isinstance(params["layers"], (tuple, list)) or (cache is not None
                                                               and cache.per_layer)
  ck = cv = None
  if per_layer:
    # unrolled: layer i reads its own weights (and cache arrays), nothing sliced out of a stack
    layers = unstack_layers(params)["layers"]
    if len(layers) != c.n_layers:
      raise ValueError(f"forward: {len(layers)} per-layer param dicts, config.n_layers="
                       f"{c.n_layers}")
    if cache is not None:
      ck, cv = (list(cache.k_lbksh), list(cache.v_lbksh)) if cache.per_layer else (
          cache.k_lbksh, cache.v_lbksh)
    for i, lp in enumerate(layers):
      rng_l = None if layer_rngs is None else layer_rngs[i]
      if cache is None:
        x_btd, _, _ = layer_fn(c, x_btd, lp, positions_bt, mask_bts, rng_l, None, None)
      elif cache.per_layer:
        x_btd, ck[i], cv[i] = layer_fn(c, x_btd, lp, positions_bt, mask_bts, rng_l, ck[i], cv[i])
      else:
        x_btd, ck, cv = layer_fn(c, x_btd, lp, positions_bt, mask_bts, rng_l, ck, cv, i)
    if cache is not None and cache.per_layer:
      ck, cv = tuple(ck), tuple(cv)
  elif cache is None:
    def body(x, xs):
      lp, rng_l = xs
      x, _, _ = layer_fn(c, x, lp, positions_bt, mask_bts, rng_l, None, None)
      return x, None

    x_btd, _ = jax.lax.scan(body, x_btd, (params["layers"], layer_rngs))
  else:
    # the caches ride in the carry and each layer scatters its new K/V into them in place (as
    # scan inputs/outputs they would be sliced out and stacked anew: a full copy every call)
    def body(carry, xs):
      x, ck, cv = carry
      lp, rng_l, i = xs
      x, ck, cv = layer_fn(c, x, lp, positions_bt, mask_bts, rng_l, ck, cv, i)
      return (x, ck, cv), None

    (x_btd, ck, cv), _ = jax.lax.scan(
        body, (x_btd, cache.k_lbksh, cache.v_lbksh),
        (params["layers"], layer_rngs, jnp.arange(c.n_layers, dtype=jnp.int32)))

  h_btd = rms_norm(x_btd, params["final_norm"].astype(c.cdtype), c.norm_eps)
  hl_btd = h_btd
  if logits_at_b is not None:
    hl_btd = jnp.take_along_axis(h_btd, logits_at_b.astype(jnp.int32)[:, None, None], axis=1)
  if c.tie_embeddings:
    logits_btv = _dot("btd,vd->btv", hl_btd, params["embed"].astype(c.cdtype), jnp.float32)
  else:
    logits_btv = _dot("btd,dv->btv", hl_btd, params["lm_head"].astype(c.cdtype), jnp.float32)
  logits_btv = shd.constrain(logits_btv, ("batch", "seq", "act_vocab"))

  out = (logits_btv,)
  if cache is not None:
    out += (KVCache(ck, cv),)
  if return_hidden:
    out += (h_btd,)
  return out[0] if len(out) == 1 else out


def flops_per_token(config: LlamaConfig, seq_len: int, training: bool = True) -> float:
  """Model FLOPs per token: 2 per matmul weight (the output projection included, the embedding
  lookup not) plus causal attention (QK^T and PV, averaged over positions), times 3 for training."""
  c = config
  attn_w = c.dim * c.hd * (2 * c.n_heads + 2 * c.n_kv_heads)
  n_matmul = c.n_layers * (attn_w + 3 * c.dim * c.ffn_dim) + c.vocab_size * c.dim
  attn = 2 * c.n_layers * seq_len * c.n_heads * c.hd  # 2 matmuls x 2 FLOPs x (seq_len / 2) keys
  return (3 if training else 1) * (2 * n_matmul + attn)
