"""JetStream ``Engine`` (google-jetstream 0.2.2 contract) for the Llama of ``model/llama.py``.

One engine serves both JetStream's orchestrator (``serve.py``) and the in-process offline
``Sampler``. Shapes: l layers, b decode slots (``max_concurrent_decodes``), s cache length
(``max_cache_length``), t prefill bucket length, k kv heads, h head dim, v vocab.

Lifecycle of a request::

  prefix = engine.prefill(params=p, padded_tokens=tokens_t, true_length=n)   # jitted per bucket t
  state = engine.insert(prefix, state, slot)                                 # jitted, state donated
  state, result = engine.generate(p, state)          # one token per slot per call, state donated

First token: ``prefill`` returns no token (JetStream 0.2.2 expects none). The prefix carries the
f32 logits of the last prompt position; ``insert`` stores them as the slot's *pending* logits.
Every ``generate`` call first samples each slot's token from its pending logits, then runs the
model on that token (writing its K/V at the token's position) to get the next pending logits. So
the first ``generate`` after ``insert`` returns the first generated token, with no special case.

Decode state (``DecodeState``): the slot KV cache [l, b, k, s, h] (stacked or per layer), pending
logits [b, v], and per slot: position of the next token, tokens generated so far, token budget,
done flag, temperature, top-p, top-k and rng key. Slot b's token number n (0-based) is drawn with key
``fold_in(key_b, n)``: a fresh key every call, and a function of the request only, never of the
slot or the other slots. ``key_b`` comes from ``insert(..., rng=key)`` when given (the offline
sampler derives it from (seed, prompt, sample)), else from splitting the state's own ``rng``
(serving: every request gets fresh randomness).

Numerics of a 16-bit compute dtype: ``sampling_params`` casts the params to the compute dtype once
(the ``Sampler`` does so once per ``generate`` call, ``load_params`` once for JetStream), so the
decode loop never re-reads and converts float32 weights; the values are those the model's per-layer
cast gives, so the tokens are unchanged. The CPU slot cache is float32 (``cache_dtype``): XLA:CPU
converts a 16-bit scatter and batched dot to float32 whole on every step; the float32 cache holds
the compute-dtype K/V exactly, and attention over it runs in float32 (bf16 tokens may differ from a
bf16 cache's in near-ties, as any change of rounding can).

Per-layer decode (``per_layer``, the CPU default): the caches are tuples of per-layer arrays and
``sampling_params`` unstacks the layer weights into per-layer dicts (one copy per ``generate``
call), so ``llama.forward`` runs the layers unrolled and a decode step reads each layer's weights
and cache where they lie. Under the layer scan XLA:CPU copies every layer's slice of the stacked
cache and weights on every step (a 16-bit stack was even converted whole); measured at the
benchmark size (60M params, 32 slots, 160 positions): 43 -> 33 ms per float32 step, 37 -> 27 ms
in bf16. Accelerators keep the stacked caches and the scan (XLA fuses those slices there, and
compile time stays flat in depth). Both layouts give the same float32 tokens and log-probs
(tested; in bf16 the greedy tokens, sampled ones may differ in near-ties as XLA fuses the casts
differently).

Layout: everything lives on ``mesh`` (the training mesh when the params come from the trainer):
slots over the batch axes (data, fsdp), kv heads over tensor when divisible, through
``sharding.logical_to_spec`` (an axis that does not divide a dimension is dropped). Parameters are
used with whatever sharding they have (no copy). Sampling is float32 and on device; ``generate``
makes no host round trip.

Validity: a slot's token is valid while the slot is not done; a slot is done after a stop id (only
the offline sampler passes stop ids; JetStream stops on its tokenizer's stop tokens itself), after
its budget of new tokens, or when its next position would fall outside the cache (so a sequence
never exceeds ``max_cache_length`` tokens and the cache is never written out of range).

Over-long prompts from JetStream: its ``token_utils.pad_tokens`` keeps the *last*
``max_prefill_length`` tokens but reports the untruncated length. ``prefill`` then clamps
``true_length`` to the bucket (documented left-truncation), logs a warning and counts it in
``truncated_prompts``. The offline sampler raises instead.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jetstream.engine import engine_api
from jetstream.engine import token_utils
from jetstream.engine import tokenizer_pb2

from selfreward_jax import sharding as shd
from selfreward_jax.model import llama
from selfreward_jax.sampling import ops

log = logging.getLogger(__name__)

# JetStream's token_utils only pads to these bucket lengths (and asserts pad_id == 0).
PREFILL_BUCKETS = tuple(2 ** i for i in range(4, 16))
MAX_STOP_IDS = 8
# default token budget of one batched prefill (``Sampler(prefill_tokens=)``; the memory planner)
PREFILL_BATCH_TOKENS = 1024
_CACHE_AXES = ("layers", "batch", "kv_heads", "cache_seq", "head_dim")
_PREFIX_CACHE_AXES = ("layers", None, "kv_heads", "cache_seq", "head_dim")


class Prefix(NamedTuple):
  """Result of ``prefill`` for one prompt (owned by the caller; ``insert`` does not consume it, so
  one prefix can be inserted into several slots).

  cache: ``KVCache`` of [l, 1, k, t, h] (t = bucket length; slots >= true_length hold padding).
  logits_v: f32 [v], logits at position ``true_length - 1`` (the first token's distribution).
  true_length: int32 [], number of real prompt tokens (the position of the first new token).
  temperature, top_p: f32 []; top_k: int32 []; max_new_tokens: int32 [] (0 = until the cache is
  full): the request's sampling settings, copied into the slot by ``insert``.
  """

  cache: llama.KVCache
  logits_v: jax.Array
  true_length: jax.Array
  temperature: jax.Array
  top_p: jax.Array
  top_k: jax.Array
  max_new_tokens: jax.Array


class PrefixBatch(NamedTuple):
  """Result of ``prefill_batch``: n prompts of one bucket length t prefilled together (owned by
  the caller; ``insert_many`` does not consume it). The fields of ``Prefix`` with a leading n.

  cache: ``KVCache`` of [l, n, k, t, h]; logits_nv: f32 [n, v]; true_length_n: int32 [n];
  temperature_n, top_p_n: f32 [n]; top_k_n, max_new_tokens_n: int32 [n].
  """

  cache: llama.KVCache
  logits_nv: jax.Array
  true_length_n: jax.Array
  temperature_n: jax.Array
  top_p_n: jax.Array
  top_k_n: jax.Array
  max_new_tokens_n: jax.Array


class DecodeState(NamedTuple):
  """Everything ``generate`` transforms (b = slots, s = cache length). Owned by the engine's
  caller and donated to ``insert``/``generate``: never reuse a state after passing it in."""

  cache: llama.KVCache     # [l, b, k, s, h] in the engine's cache_dtype (stacked or per layer)
  logits_bv: jax.Array     # f32, pending next-token logits of each slot
  pos_b: jax.Array         # int32, position (cache slot) of each slot's next token
  length_b: jax.Array      # int32, tokens generated so far
  budget_b: jax.Array      # int32, max new tokens
  done_b: jax.Array        # bool, True for free or finished slots
  temperature_b: jax.Array  # f32
  top_p_b: jax.Array       # f32
  top_k_b: jax.Array       # int32
  key_b2: jax.Array        # uint32 raw threefry key data
  rng: jax.Array           # uint32 [2], split by insert for requests without their own key


def _is_power_of_two_bucket(n: int) -> bool:
  return n in PREFILL_BUCKETS


def bucket_length(n: int, max_prefill_length: int) -> int:
  """The prefill bucket (power of two, >= 16) for a prompt of ``n`` tokens, capped at
  ``max_prefill_length``."""
  for b in PREFILL_BUCKETS:
    if b >= n or b >= max_prefill_length:
      return min(b, max_prefill_length)
  return max_prefill_length


def _stop_array(stop_ids: Sequence[int]) -> np.ndarray:
  stop_ids = sorted(set(int(i) for i in stop_ids))
  if len(stop_ids) > MAX_STOP_IDS:
    raise ValueError(f"at most {MAX_STOP_IDS} stop ids are supported, got {len(stop_ids)}")
  return np.array(stop_ids + [-1] * (MAX_STOP_IDS - len(stop_ids)), np.int32)


class JetStreamTokenizer(token_utils.SentencePieceTokenizer):
  """JetStream's tokenizer API over ``selfreward_jax.tokenizer.Tokenizer`` (plain SentencePiece;
  no seqio/TensorFlow vocabulary at request time).

  Subclasses JetStream's ``SentencePieceTokenizer`` so the orchestrator uses its streaming path:
  ``decode([id], is_streaming=True)`` returns the piece with "▁" as a space (a byte piece such as
  "<0xE5>" is returned as is and assembled into UTF-8 by the orchestrator). Control pieces
  (BOS/EOS) stream as "". ``stop_tokens`` is {eos_id, pad_id} (JetStream's default; pad = unk = 0).
  """

  def __init__(self, metadata: tokenizer_pb2.TokenizerParameters):  # pylint: disable=super-init-not-called
    from selfreward_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    self.tokenizer = Tokenizer(metadata.path)
    if self.tokenizer.pad_id != 0:
      raise ValueError(f"JetStream requires pad_id == 0, the tokenizer has {self.tokenizer.pad_id}")

  def encode(self, s: str, **kwargs):
    """(padded tokens [bucket], true_length): JetStream's ``pad_tokens`` over our ids."""
    tokens = np.array(self.tokenizer.encode(s), np.int32)
    return token_utils.pad_tokens(
        tokens, self.bos_id, self.pad_id, is_bos=kwargs.pop("is_bos", True),
        prefill_lengths=kwargs.pop("prefill_lengths", None),
        max_prefill_length=kwargs.pop("max_prefill_length", None),
        jax_padding=kwargs.pop("jax_padding", True))

  def decode(self, token_ids: list[int], **kwargs) -> str:
    if kwargs.pop("is_streaming", False):
      i = int(token_ids[0])
      if self.tokenizer.processor.is_control(i):
        return ""
      return self.tokenizer.id_to_piece(i).replace("\u2581", " ")
    return self.tokenizer.decode(token_ids)

  @property
  def pad_id(self) -> int:
    return self.tokenizer.pad_id

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def bos_id(self) -> int:
    return self.tokenizer.bos_id


class Engine(engine_api.Engine):
  """Llama prefill / insert / generate over a slot KV cache, for JetStream and the ``Sampler``.

  Args:
    config: the model's ``LlamaConfig``.
    params: parameters (any sharding; used as they are). ``load_params`` returns them.
    max_concurrent_decodes: number of decode slots b.
    max_prefill_length: longest prompt; a power of two in [16, 32768] (JetStream's buckets).
    max_cache_length: s, the longest prompt + continuation (default ``config.max_seq_len``); at
      least ``max_prefill_length`` and at most ``config.max_seq_len``.
    mesh: (data, fsdp, tensor) mesh; default: the params' mesh, else one device.
    tokenizer_path: SentencePiece model for ``get_tokenizer`` / ``build_tokenizer`` (serving).
    temperature, top_p, top_k, max_new_tokens: default request settings (``DecodeRequest`` has no
      sampling fields, so served requests all use these); ``max_new_tokens=0``: until the cache is
      full (JetStream applies the request's ``max_tokens`` itself).
    seed: seed of the state's rng (keys of requests inserted without their own).
    cache_dtype: dtype of the KV caches (slot cache and prefixes); default the compute dtype,
      float32 on CPU devices (see the module docstring).
    per_layer: lay the caches out per layer and run the decode with the layers unrolled over
      per-layer weights (``sampling_params`` unstacks them); default: on CPU devices only (see
      the module docstring). False keeps the stacked caches and the layer scan (compile time
      flat in depth, which matters for deep models on accelerators).
  """

  def __init__(self, config: llama.LlamaConfig, params: Any, *, max_concurrent_decodes: int,
               max_prefill_length: int, max_cache_length: Optional[int] = None,
               mesh: Optional[jax.sharding.Mesh] = None, tokenizer_path: Optional[str] = None,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
               max_new_tokens: int = 0, seed: int = 0, cache_dtype: Optional[str] = None,
               per_layer: Optional[bool] = None):
    s = int(max_cache_length or config.max_seq_len)
    _check_sizes(config, max_concurrent_decodes, max_prefill_length, s)
    check_settings(temperature, top_p, top_k)
    self.config = config
    self._params = params
    self._slots = int(max_concurrent_decodes)
    self._max_prefill = int(max_prefill_length)
    self.max_cache_length = s
    self._mesh = mesh if mesh is not None else _infer_mesh(params)
    self._on_cpu = all(d.platform == "cpu" for d in self._mesh.devices.flat)
    if cache_dtype is None:
      cache_dtype = "float32" if self._on_cpu else config.compute_dtype
    self.cache_dtype = jnp.dtype(cache_dtype)
    self.per_layer = self._on_cpu if per_layer is None else bool(per_layer)
    self._tokenizer_path = tokenizer_path
    self.defaults = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                         max_new_tokens=int(max_new_tokens))
    self._seed = int(seed)
    self.truncated_prompts = 0  # prompts JetStream cut to their last max_prefill_length tokens
    self._no_stop = _stop_array(())
    self._build_jitted()

  # ---- jitted functions ------------------------------------------------------------------------

  def _build_jitted(self):
    state_sh = self.decode_state_shardings()
    rep = NamedSharding(self._mesh, P())  # host-read outputs: every process holds all of them
    c, s, cd, pl = self.config, self.max_cache_length, self.cache_dtype, self.per_layer
    self._prefill_jit = jax.jit(functools.partial(_prefill, c, cd, pl),
                                out_shardings=self.get_prefix_destination_sharding())
    self._insert_jit = jax.jit(_insert, donate_argnums=(1,), out_shardings=state_sh)
    self._generate_jit = jax.jit(functools.partial(_generate, c, s), donate_argnums=(1,),
                                 out_shardings=(state_sh, rep, rep))
    self._generate_steps_jit = jax.jit(functools.partial(_generate_steps, c, s),
                                       static_argnames=("num_steps",), donate_argnums=(1,),
                                       out_shardings=(state_sh, rep, rep, rep, rep, rep))
    self._prefill_batch_jits = {}  # n -> jitted batched prefill (its out shardings depend on n)
    self._insert_many_jit = jax.jit(_insert_many, donate_argnums=(1,), out_shardings=state_sh)
    self._init_jit = jax.jit(functools.partial(_init_state, c, self._slots, cd, pl),
                             static_argnums=(0,), out_shardings=state_sh)
    # not donated: the old cache buffers cannot hold the longer cache (the caller drops them)
    self._grow_jit = jax.jit(_grow_cache, static_argnums=(1,), out_shardings=state_sh)

  def _sharding(self, logical, shape) -> NamedSharding:
    return NamedSharding(self._mesh, shd.logical_to_spec(logical, shape, self._mesh))

  def _cache_sharding(self, logical, shape):
    """Sharding of one stacked cache [L, ...], or the tuple of per-layer shardings."""
    if not self.per_layer:
      return self._sharding(logical, shape)
    return (self._sharding(logical[1:], shape[1:]),) * shape[0]

  def decode_state_shardings(self) -> DecodeState:
    """``NamedSharding`` of every ``DecodeState`` field: slots over the batch axes, kv heads over
    tensor when divisible, vocab of the pending logits replicated (sampling sorts along it)."""
    c, b, s = self.config, self._slots, self.max_cache_length
    cache_sh = self._cache_sharding(_CACHE_AXES, (c.n_layers, b, c.n_kv_heads, s, c.hd))
    vec = self._sharding(("batch",), (b,))
    return DecodeState(
        cache=llama.KVCache(cache_sh, cache_sh),
        logits_bv=self._sharding(("batch", None), (b, c.vocab_size)),
        pos_b=vec, length_b=vec, budget_b=vec, done_b=vec, temperature_b=vec, top_p_b=vec,
        top_k_b=vec, key_b2=self._sharding(("batch", None), (b, 2)),
        rng=NamedSharding(self._mesh, P()))

  # ---- JetStream API ---------------------------------------------------------------------------

  def prefill(self, *, params: Any, existing_prefix: Optional[Prefix] = None,
              padded_tokens: Union[jax.Array, np.ndarray], true_length: int,
              temperature: Optional[float] = None, top_p: Optional[float] = None,
              top_k: Optional[int] = None, max_new_tokens: Optional[int] = None) -> Prefix:
    """Runs the prompt through the model (one jitted forward per bucket length t).

    Called by JetStream's prefill thread, or by the ``Sampler`` once per prompt.

    Args:
      params: model parameters.
      existing_prefix: unsupported (raises ``NotImplementedError`` if given).
      padded_tokens: int [t], the prompt followed by pad ids; t is a bucket length <= the max.
      true_length: number of real tokens (>= 1). If > t (JetStream's over-long input, already cut
        to its last t tokens), it is clamped to t and counted in ``truncated_prompts``.
      temperature, top_p, top_k, max_new_tokens: this request's settings (default: the engine's).

    Returns:
      A new ``Prefix`` (cache [l, 1, k, t, h], logits at true_length - 1, settings).
    """
    if existing_prefix is not None:
      raise NotImplementedError("Engine.prefill: existing_prefix (multi-turn caching) is not "
                                "supported; send the whole prompt")
    tokens_t = np.asarray(padded_tokens, np.int32) if isinstance(padded_tokens, np.ndarray) \
        else jnp.asarray(padded_tokens, jnp.int32)
    t = int(tokens_t.shape[0])
    if tokens_t.ndim != 1 or t > self._max_prefill or t > self.max_cache_length:
      raise ValueError(f"prefill: padded_tokens must be 1-D with length <= max_prefill_length="
                       f"{self._max_prefill}, got shape {tuple(tokens_t.shape)}")
    true_length = self._checked_true_length(int(true_length), t)
    settings = self._settings(temperature, top_p, top_k, max_new_tokens)
    with jax.set_mesh(self._mesh):
      return self._prefill_jit(params, tokens_t, np.int32(true_length), *settings)

  def _checked_true_length(self, true_length: int, t: int) -> int:
    if true_length < 1:
      raise ValueError(f"prefill: true_length={true_length}; a prompt needs at least one token")
    if true_length > t:
      self.truncated_prompts += 1
      log.warning("prompt of %d tokens is longer than max_prefill_length=%d: JetStream kept its "
                  "last %d tokens (truncated_prompts=%d)", true_length, t, t,
                  self.truncated_prompts)
      return t
    return true_length

  def _settings(self, temperature, top_p, top_k, max_new_tokens):
    d = self.defaults
    temperature = d["temperature"] if temperature is None else float(temperature)
    top_p = d["top_p"] if top_p is None else float(top_p)
    top_k = d["top_k"] if top_k is None else int(top_k)
    max_new_tokens = d["max_new_tokens"] if max_new_tokens is None else int(max_new_tokens)
    check_settings(temperature, top_p, top_k)
    return (np.float32(temperature), np.float32(top_p), np.int32(top_k),
            np.int32(max_new_tokens))

  def prefill_batch(self, *, params: Any, padded_tokens_nt: np.ndarray,
                    true_lengths_n: Sequence[int], temperature: Optional[float] = None,
                    top_p: Optional[float] = None, top_k: Optional[int] = None,
                    max_new_tokens: Optional[int] = None) -> PrefixBatch:
    """Prefills n prompts of one bucket length t in one forward [n, t] (jitted per (n, t)).

    Not part of JetStream's API (its prefill thread sends one prompt at a time); the ``Sampler``
    uses it to prefill the prompts of a refill together, so the weights are read once per batch
    instead of once per prompt. Each row's K/V and logits are those ``prefill`` computes for it
    alone (the forward is row-independent; float rounding of the batched matmuls aside).

    Args:
      params: model parameters.
      padded_tokens_nt: int [n, t], each prompt followed by pad ids; t a bucket length <= the max.
      true_lengths_n: real tokens of each row, each in [1, t] (no truncation here).
      temperature, top_p, top_k, max_new_tokens: the settings of every row (default: the
        engine's).

    Returns:
      A ``PrefixBatch`` (cache [l, n, k, t, h], logits at each row's true_length - 1, settings).
    """
    tokens_nt = np.asarray(padded_tokens_nt, np.int32)
    lengths_n = np.asarray(true_lengths_n, np.int32)
    if tokens_nt.ndim != 2 or tokens_nt.shape[0] < 1:
      raise ValueError(f"prefill_batch: padded_tokens_nt must be [n >= 1, t], got shape "
                       f"{tokens_nt.shape}")
    n, t = tokens_nt.shape
    if t > self._max_prefill or t > self.max_cache_length:
      raise ValueError(f"prefill_batch: bucket length {t} > max_prefill_length="
                       f"{self._max_prefill}")
    if lengths_n.shape != (n,) or np.any(lengths_n < 1) or np.any(lengths_n > t):
      raise ValueError(f"prefill_batch: true_lengths_n must be {n} lengths in [1, {t}], got "
                       f"{lengths_n.tolist()}")
    settings = self._settings(temperature, top_p, top_k, max_new_tokens)
    fn = self._prefill_batch_jits.get(n)
    if fn is None:
      c = self.config
      shape = (c.n_layers, n, c.n_kv_heads, self._max_prefill, c.hd)
      cache_sh = self._cache_sharding(_CACHE_AXES, shape)  # rows over the batch axes
      rep = NamedSharding(self._mesh, P())
      out_sh = PrefixBatch(llama.KVCache(cache_sh, cache_sh), rep, rep, rep, rep, rep, rep)
      fn = jax.jit(functools.partial(_prefill_batch, c, self.cache_dtype, self.per_layer),
                   out_shardings=out_sh)
      self._prefill_batch_jits[n] = fn
    with jax.set_mesh(self._mesh):
      return fn(params, tokens_nt, lengths_n, *settings)

  def insert_many(self, prefixes: PrefixBatch, decode_state: DecodeState,
                  rows: Sequence[int], slots: Sequence[int], rngs: np.ndarray) -> DecodeState:
    """Places row ``rows[m]`` of ``prefixes`` in decode slot ``slots[m]`` for every m, in one
    jitted call (``decode_state`` donated; ``prefixes`` not consumed, and a row may go to several
    slots). What ``insert`` does per slot, with the slot keys given: ``rngs`` uint32 [m, 2].
    The slots must be distinct free slots. The number of inserts is padded to a power of two
    (one compilation per count bucket); padding entries write nothing.
    """
    rows_m = np.asarray(rows, np.int32)
    slots_m = np.asarray(slots, np.int32)
    rngs_m2 = np.asarray(rngs, np.uint32)
    m, n, b = rows_m.shape[0], prefixes.logits_nv.shape[0], self._slots
    if (slots_m.shape != (m,) or rngs_m2.shape != (m, 2) or m < 1 or m > b
        or len(set(slots_m.tolist())) != m):
      raise ValueError(f"insert_many: rows, slots (distinct) and rngs [m, 2] must have one entry "
                       f"per insert, 1 <= m <= {b}; got {rows_m.shape}, {slots_m.tolist()}, "
                       f"{rngs_m2.shape}")
    if np.any(rows_m < 0) or np.any(rows_m >= n) or np.any(slots_m < 0) or np.any(slots_m >= b):
      raise ValueError(f"insert_many: rows must be in [0, {n}) and slots in [0, {b}); got "
                       f"{rows_m.tolist()}, {slots_m.tolist()}")
    if prefixes.cache.length > decode_state.cache.length:
      raise ValueError(f"insert_many: prefixes of {prefixes.cache.length} cache slots do not fit "
                       f"the decode state's {decode_state.cache.length} (grow_cache first)")
    pad = _pow2(m) - m  # padding inserts target slot b: out of range, dropped by the scatter
    rows_m = np.concatenate([rows_m, np.zeros((pad,), np.int32)])
    slots_m = np.concatenate([slots_m, np.full((pad,), b, np.int32)])
    rngs_m2 = np.concatenate([rngs_m2, np.zeros((pad, 2), np.uint32)])
    with jax.set_mesh(self._mesh):
      return self._insert_many_jit(prefixes, decode_state, rows_m, slots_m, rngs_m2,
                                   np.int32(self.max_cache_length))

  def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int, *,
             rng: Optional[jax.Array] = None) -> DecodeState:
    """Places ``prefix`` in decode slot ``slot`` (jitted; ``decode_state`` is donated).

    Copies the prefix K/V into cache rows [0, t) of the slot, sets the slot's pending logits,
    position (= true_length), settings, a zero token count and a fresh budget. The slot key is
    ``rng`` (uint32 [2] raw key data) if given, else split off the state's rng. ``prefix`` is not
    consumed. Called by JetStream's generate thread between steps, or by the ``Sampler``.
    """
    if prefix.cache.length > decode_state.cache.length:
      raise ValueError(f"insert: a prefix of {prefix.cache.length} cache slots does not fit the "
                       f"decode state's {decode_state.cache.length} (grow_cache first)")
    has_rng = rng is not None
    rng = np.zeros((2,), np.uint32) if rng is None else np.asarray(rng, np.uint32)
    with jax.set_mesh(self._mesh):
      return self._insert_jit(prefix, decode_state, np.int32(slot), rng, np.bool_(has_rng),
                              np.int32(self.max_cache_length))

  def generate(self, params: Any, decode_state: DecodeState
               ) -> tuple[DecodeState, engine_api.ResultTokens]:
    """One decode step for every slot (jitted; ``decode_state`` is donated).

    Samples each slot's token from its pending logits with the slot's own settings and key
    (``fold_in(key_b, tokens so far)``), then runs the model on the b tokens at their positions.
    Free and finished slots run too (their results are marked invalid).

    Returns:
      (new state, ``ResultTokens``) with ``data`` int32 [b, 3] = token | valid | length, where
      length counts the slot's generated tokens including this one (JetStream's convention).
      Stays on device (JetStream copies it to host asynchronously).
    """
    with jax.set_mesh(self._mesh):
      state, data_b3, _ = self._generate_jit(params, decode_state, self._no_stop)
    return state, engine_api.ResultTokens(data=data_b3, tokens_idx=(0, 1), valid_idx=(1, 2),
                                          length_idx=(2, 3), samples_per_slot=1)

  def generate_steps(self, params: Any, decode_state: DecodeState, *, num_steps: int,
                     stop_ids: Sequence[int] = (), exit_on_finish: bool = False):
    """Up to ``num_steps`` ``generate`` steps in one jitted ``lax.while_loop`` (state donated).

    Used by the offline ``Sampler`` to amortise dispatch and host syncs. A slot becomes done on
    a token in ``stop_ids`` (the stop token itself is returned as valid), on its budget, or at the
    end of the cache; done slots idle. The loop ends early when every slot is done, or, with
    ``exit_on_finish``, as soon as a slot that was running finishes (so its slot can be refilled),
    or when a running slot reaches the end of a growing state's allocated cache (see
    ``init_decode_state``; ``grow_cache`` and call again). A step attends over the allocated
    cache slots only, so a state grown with its sequences costs per step what their length needs.

    Returns:
      (state, tokens_kb int32, valid_kb bool, logprobs_kb f32, n_steps int32 [], done_b bool):
      rows >= n_steps are unused; ``done_b`` is ``state.done_b`` after the steps. logprobs are
      ``log_softmax`` of the raw logits at the token (see ``ops``). All but the state are
      replicated, so every process of a multi-host mesh can read them.
    """
    with jax.set_mesh(self._mesh):
      return self._generate_steps_jit(params, decode_state, _stop_array(stop_ids),
                                      np.bool_(exit_on_finish), num_steps=int(num_steps))

  def init_decode_state(self, *args, cache_length: Optional[int] = None, **kwargs
                        ) -> DecodeState:
    """A fresh ``DecodeState``: zero cache, every slot free (done). Called once by JetStream's
    generate thread / by the ``Sampler`` per ``generate`` call. Laid out by
    ``decode_state_shardings``.

    ``cache_length``: allocate only this many cache slots per sequence (a ``cache_buckets`` value;
    default ``max_cache_length``), to be grown with ``grow_cache`` as sequences get longer; a
    decode step's attention reads the allocated slots only. Slots still finish at
    ``max_cache_length``: whoever decodes must grow the cache before a running sequence reaches
    its allocated end (``generate_steps`` stops early rather than run past it).
    """
    del args, kwargs
    s = self._checked_cache_length(cache_length)
    with jax.set_mesh(self._mesh):
      # a host value (not an array on this process's first device): multi-host meshes accept it
      return self._init_jit(s, np.asarray(jax.random.key_data(jax.random.key(self._seed))))

  def cache_buckets(self) -> tuple:
    """The cache lengths a growing decode state steps through: powers of two from 64 below
    ``max_cache_length``, then ``max_cache_length`` (one compilation of the decode loop each)."""
    out, b = [], 64
    while b < self.max_cache_length:
      out.append(b)
      b *= 2
    return tuple(out) + (self.max_cache_length,)

  def cache_bucket(self, n: int) -> int:
    """The smallest ``cache_buckets`` length >= n (``max_cache_length`` if none)."""
    return next((b for b in self.cache_buckets() if b >= n), self.max_cache_length)

  def grow_cache(self, decode_state: DecodeState, cache_length: int) -> DecodeState:
    """``decode_state`` with its cache extended to ``cache_length`` slots (zeros appended; jitted
    per length; drop the old state). Positions, tokens and settings are unchanged."""
    s = self._checked_cache_length(cache_length)
    if s < decode_state.cache.length:
      raise ValueError(f"grow_cache: {s} < the state's cache length {decode_state.cache.length}")
    if s == decode_state.cache.length:
      return decode_state
    with jax.set_mesh(self._mesh):
      return self._grow_jit(decode_state, s)

  def _checked_cache_length(self, cache_length: Optional[int]) -> int:
    s = self.max_cache_length if cache_length is None else int(cache_length)
    if not 1 <= s <= self.max_cache_length:
      raise ValueError(f"cache_length={s}: must be in [1, max_cache_length="
                       f"{self.max_cache_length}]")
    return s

  def load_params(self, *args, **kwargs) -> Any:
    """The params given at construction (or by ``update_params``) through ``sampling_params``:
    JetStream calls this once per engine and passes the result to every prefill and generate."""
    del args, kwargs
    return self.sampling_params(self._params)

  @property
  def params(self) -> Any:
    """The params given at construction or by ``update_params``, as they are."""
    return self._params

  def update_params(self, params: Any) -> None:
    """Replaces the params (e.g. after a training step)."""
    self._params = params

  def sampling_params(self, params: Any) -> Any:
    """``params`` as the decode loop reads them: cast to the compute dtype once, and with
    ``per_layer`` (the CPU default) the layer stack unstacked into per-layer dicts.

    ``llama.forward`` casts every weight to the compute dtype where it uses it, i.e. on every
    decode step; casting here once gives the same values without that per-step pass over the
    float32 weights. Host (numpy) leaves are put on the mesh, replicated, first (a jitted call
    would otherwise copy them in on every call). Params already in this form come back as the same
    object; leaves already in the compute dtype are reused. The result holds a copy of each cast or
    unstacked leaf (e.g. bf16 next to the float32 master params, which are not touched). With the
    stacked layout on CPU the layer stack is left as it is (see the module docstring).
    """
    cd = self.config.cdtype
    layers = params.get("layers")
    unstacked = isinstance(layers, (tuple, list))
    names = ("embed", "lm_head", "final_norm") + (
        ("layers",) if self.per_layer or not self._on_cpu else ())
    leaves = jax.tree.leaves(params)
    on_host = not all(isinstance(w, jax.Array) for w in leaves)
    todo = [n for n in names if n in params and any(
        jnp.dtype(w.dtype) != cd for w in jax.tree.leaves(params[n]))]
    relayout = layers is not None and self.per_layer != unstacked
    if not todo and not on_host and not relayout:
      return params
    if on_host:
      rep = NamedSharding(self._mesh, P())
      params = jax.tree.map(lambda w: w if isinstance(w, jax.Array) else jax.device_put(w, rep),
                            params)
    with jax.set_mesh(self._mesh):
      out = {**params, **{n: jax.tree.map(lambda w: w.astype(cd), params[n]) for n in todo
                          if n != "layers"}}
      cast_layers = "layers" in todo
      if self.per_layer:
        return llama.unstack_layers(out, cd if cast_layers else None)
      if unstacked:
        out["layers"] = jax.tree.map(lambda *ws: jnp.stack(ws), *out["layers"])
      if cast_layers:
        out["layers"] = jax.tree.map(lambda w: w.astype(cd), out["layers"])
      return out

  def get_prefix_destination_sharding(self) -> Prefix:
    """``Prefix`` of ``NamedSharding``s: cache kv heads over tensor when divisible, the rest
    replicated. (The t dimension is unsharded, so one tree fits every bucket.)"""
    c = self.config
    shape = (c.n_layers, 1, c.n_kv_heads, self._max_prefill, c.hd)
    cache_sh = self._cache_sharding(_PREFIX_CACHE_AXES, shape)
    rep = NamedSharding(self._mesh, P())
    return Prefix(llama.KVCache(cache_sh, cache_sh), rep, rep, rep, rep, rep, rep)

  def get_tokenizer(self) -> tokenizer_pb2.TokenizerParameters:
    """JetStream tokenizer metadata: the SentencePiece model path given at construction."""
    if not self._tokenizer_path:
      raise ValueError("Engine was built without tokenizer_path; serving needs one")
    return tokenizer_pb2.TokenizerParameters(path=self._tokenizer_path)

  def build_tokenizer(self, metadata: tokenizer_pb2.TokenizerParameters) -> JetStreamTokenizer:
    """A ``JetStreamTokenizer`` over ``metadata.path``."""
    return JetStreamTokenizer(metadata)

  @property
  def max_concurrent_decodes(self) -> int:
    return self._slots

  @property
  def samples_per_slot(self) -> int:
    return 1

  @property
  def max_prefill_length(self) -> int:
    return self._max_prefill

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self._mesh

  @property
  def colocated_cpus(self) -> None:
    """None: the engine uses no colocated CPU devices."""
    return None


# ---- checks and defaults ---------------------------------------------------------------------------

def check_settings(temperature: float, top_p: float, top_k: int) -> None:
  """Raises ``ValueError`` unless temperature >= 0, 0 < top_p <= 1 and top_k >= 0."""
  if not temperature >= 0:
    raise ValueError(f"temperature={temperature}: must be >= 0 (0 = greedy)")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p={top_p}: must be in (0, 1]")
  if top_k < 0:
    raise ValueError(f"top_k={top_k}: must be >= 0 (0 = no limit)")


def _check_sizes(config, slots: int, max_prefill: int, s: int) -> None:
  if slots < 1:
    raise ValueError(f"max_concurrent_decodes={slots}: must be >= 1")
  if not _is_power_of_two_bucket(max_prefill):
    raise ValueError(f"max_prefill_length={max_prefill}: must be one of JetStream's prefill "
                     f"buckets {PREFILL_BUCKETS} (powers of two)")
  if not max_prefill <= s <= config.max_seq_len:
    raise ValueError(f"cache length {s}: must be >= max_prefill_length={max_prefill} and <= "
                     f"config.max_seq_len={config.max_seq_len}")


def _infer_mesh(params) -> jax.sharding.Mesh:
  leaf = jax.tree.leaves(params)[0]
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, jax.sharding.Mesh):
    return sharding.mesh
  device = next(iter(sharding.device_set)) if sharding is not None else jax.devices()[0]
  return shd.make_mesh(shd.MeshConfig(1, 1, 1), devices=[device])


# ---- device functions (jitted by the Engine) -----------------------------------------------------

def _init_state(config, b: int, cache_dtype, per_layer: bool, s: int, rng2: jax.Array
                ) -> DecodeState:
  zeros_b = jnp.zeros((b,), jnp.int32)
  return DecodeState(
      cache=llama.init_cache(config, b, s, cache_dtype, per_layer=per_layer),
      logits_bv=jnp.zeros((b, config.vocab_size), jnp.float32),
      pos_b=zeros_b, length_b=zeros_b, budget_b=zeros_b, done_b=jnp.ones((b,), bool),
      temperature_b=jnp.zeros((b,), jnp.float32), top_p_b=jnp.ones((b,), jnp.float32),
      top_k_b=zeros_b, key_b2=jnp.zeros((b, 2), jnp.uint32), rng=rng2)


def _prefill(config, cache_dtype, per_layer: bool, params, tokens_t, true_length, temperature,
             top_p, top_k, max_new_tokens) -> Prefix:
  t = tokens_t.shape[0]
  cache = llama.init_cache(config, 1, t, cache_dtype, per_layer=per_layer)
  logits_11v, cache = llama.forward(params, tokens_t[None], config, cache=cache,
                                    logits_at_b=(true_length - 1)[None])
  logits_v = logits_11v[0, 0]
  return Prefix(cache, logits_v.astype(jnp.float32), true_length, temperature, top_p, top_k,
                max_new_tokens)


def _prefill_batch(config, cache_dtype, per_layer: bool, params, tokens_nt, true_length_n,
                   temperature, top_p, top_k, max_new_tokens) -> PrefixBatch:
  n, t = tokens_nt.shape
  cache = llama.init_cache(config, n, t, cache_dtype, per_layer=per_layer)
  logits_n1v, cache = llama.forward(params, tokens_nt, config, cache=cache,
                                    logits_at_b=true_length_n - 1)
  full = lambda x: jnp.full((n,), x)
  return PrefixBatch(cache, logits_n1v[:, 0].astype(jnp.float32), true_length_n,
                     full(temperature), full(top_p), full(top_k), full(max_new_tokens))


def _insert_many(prefixes: PrefixBatch, state: DecodeState, rows_m, slots_m, rng_m2, s
                 ) -> DecodeState:
  """``_insert`` for m (row, slot) pairs in one scatter per field; entries whose slot is out of
  range (the padding) are dropped."""
  t = prefixes.cache.length

  def put(cache, new):
    if isinstance(cache, (tuple, list)):  # per layer: [b, k, s, h] <- [n, k, t, h]
      return tuple(c.at[slots_m, :, :t].set(x[rows_m].astype(c.dtype), mode="drop")
                   for c, x in zip(cache, new))
    return cache.at[:, slots_m, :, :t].set(new[:, rows_m].astype(cache.dtype), mode="drop")

  def set_(x_b, v_n):
    return x_b.at[slots_m].set(v_n[rows_m].astype(x_b.dtype), mode="drop")

  budget_n = jnp.where(prefixes.max_new_tokens_n > 0, prefixes.max_new_tokens_n, s)
  return state._replace(
      cache=llama.KVCache(put(state.cache.k_lbksh, prefixes.cache.k_lbksh),
                          put(state.cache.v_lbksh, prefixes.cache.v_lbksh)),
      logits_bv=set_(state.logits_bv, prefixes.logits_nv),
      pos_b=set_(state.pos_b, prefixes.true_length_n),
      length_b=state.length_b.at[slots_m].set(0, mode="drop"),
      budget_b=set_(state.budget_b, budget_n),
      done_b=set_(state.done_b, prefixes.true_length_n >= s),
      temperature_b=set_(state.temperature_b, prefixes.temperature_n),
      top_p_b=set_(state.top_p_b, prefixes.top_p_n),
      top_k_b=set_(state.top_k_b, prefixes.top_k_n),
      key_b2=state.key_b2.at[slots_m].set(rng_m2, mode="drop"))


def _pow2(n: int) -> int:
  """The smallest power of two >= n (n >= 1)."""
  return 1 << (int(n) - 1).bit_length()


def _grow_cache(state: DecodeState, s: int) -> DecodeState:
  def grow(c):  # [..., s_old, h] -> [..., s, h]
    return jnp.pad(c, [(0, 0)] * (c.ndim - 2) + [(0, s - c.shape[-2]), (0, 0)])
  return state._replace(cache=jax.tree.map(grow, state.cache))


def _insert(prefix: Prefix, state: DecodeState, slot, rng2, has_rng, s) -> DecodeState:
  def put(cache, new):
    if isinstance(cache, (tuple, list)):  # per layer: [b, k, s, h] <- [1, k, t, h]
      return tuple(jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (slot, 0, 0, 0))
                   for c, n in zip(cache, new))
    return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, slot, 0, 0, 0))

  next_rng, split_key = jax.random.split(jax.random.wrap_key_data(state.rng))
  key2 = jnp.where(has_rng, rng2, jax.random.key_data(split_key))
  budget = jnp.where(prefix.max_new_tokens > 0, prefix.max_new_tokens, s)
  return DecodeState(
      cache=llama.KVCache(put(state.cache.k_lbksh, prefix.cache.k_lbksh),
                          put(state.cache.v_lbksh, prefix.cache.v_lbksh)),
      logits_bv=state.logits_bv.at[slot].set(prefix.logits_v),
      pos_b=state.pos_b.at[slot].set(prefix.true_length),
      length_b=state.length_b.at[slot].set(0),
      budget_b=state.budget_b.at[slot].set(budget),
      done_b=state.done_b.at[slot].set(prefix.true_length >= s),
      temperature_b=state.temperature_b.at[slot].set(prefix.temperature),
      top_p_b=state.top_p_b.at[slot].set(prefix.top_p),
      top_k_b=state.top_k_b.at[slot].set(prefix.top_k),
      key_b2=state.key_b2.at[slot].set(key2),
      rng=jnp.where(has_rng, state.rng, jax.random.key_data(next_rng)))


def _step(config, s: int, params, state: DecodeState, stop_ids):
  """Sample from the pending logits, then feed the sampled tokens. Returns (state, token_b,
  valid_b, logprob_b). ``s`` is ``max_cache_length`` (where sequences end); the state's cache may
  hold fewer slots (a growing state): positions past it are clamped for idle slots only (the
  callers never step a running slot past the allocated cache)."""
  s_alloc = state.cache.length
  keys_b2 = ops.step_keys(state.key_b2, state.length_b)
  token_b = ops.sample_tokens(keys_b2, state.logits_bv, state.temperature_b, state.top_p_b,
                              state.top_k_b)
  logprob_b = ops.token_logprobs(state.logits_bv, token_b)
  valid_b = ~state.done_b & (state.pos_b < s)
  pos_b1 = jnp.minimum(state.pos_b, s_alloc - 1)[:, None]
  logits_b1v, cache = llama.forward(params, token_b[:, None], config, positions_bt=pos_b1,
                                    cache=state.cache)
  length_b = state.length_b + 1
  is_stop_b = jnp.any(token_b[:, None] == stop_ids[None, :], axis=-1)
  done_b = state.done_b | is_stop_b | (length_b >= state.budget_b) | (state.pos_b + 1 >= s)
  state = state._replace(cache=cache, logits_bv=logits_b1v[:, 0].astype(jnp.float32),
                         pos_b=state.pos_b + 1, length_b=length_b, done_b=done_b)
  return state, token_b, valid_b, logprob_b


def _generate(config, s: int, params, state: DecodeState, stop_ids):
  state, token_b, valid_b, logprob_b = _step(config, s, params, state, stop_ids)
  data_b3 = jnp.stack([token_b, valid_b.astype(jnp.int32), state.length_b], axis=-1)
  return state, data_b3, logprob_b


def _generate_steps(config, s: int, params, state: DecodeState, stop_ids, exit_on_finish, *,
                    num_steps: int):
  b = state.pos_b.shape[0]
  s_alloc = state.cache.length
  done0_b = state.done_b

  def cond(carry):
    i, st = carry[0], carry[1]
    finished = jnp.any(st.done_b & ~done0_b)
    # a running slot at the end of a growing state's allocated cache: stop, the caller grows it
    at_end = jnp.any(~st.done_b & (st.pos_b >= s_alloc))
    return (i < num_steps) & ~jnp.all(st.done_b) & ~(exit_on_finish & finished) & ~at_end

  def body(carry):
    i, st, tokens_kb, valid_kb, logprobs_kb = carry
    st, token_b, valid_b, logprob_b = _step(config, s, params, st, stop_ids)
    return (i + 1, st, tokens_kb.at[i].set(token_b), valid_kb.at[i].set(valid_b),
            logprobs_kb.at[i].set(logprob_b))

  carry = (jnp.int32(0), state, jnp.zeros((num_steps, b), jnp.int32),
           jnp.zeros((num_steps, b), bool), jnp.zeros((num_steps, b), jnp.float32))
  n, state, tokens_kb, valid_kb, logprobs_kb = jax.lax.while_loop(cond, body, carry)
  return state, tokens_kb, valid_kb, logprobs_kb, n, state.done_b
