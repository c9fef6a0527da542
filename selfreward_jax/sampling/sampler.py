"""Offline continuous-batching sampler over the JetStream ``Engine``, in process.

One Python loop calls the engine directly (no orchestrator threads, no gRPC): whenever a decode
slot is free, the next (prompt, sample) is inserted into it; the decode steps run
``steps_per_sync`` at a time inside one jitted ``lax.while_loop`` (``Engine.generate_steps``), and
the loop fetches their tokens with one host sync. A slot that finishes mid-chunk idles until the
chunk ends; while requests are waiting, the chunk ends as soon as any running slot finishes, so
its slot is refilled at once (continuous batching).

Sharing and determinism:

* The N samples of a prompt share one prefill: the prefix is computed once and inserted into N
  slots (over several rounds if N exceeds the slots; ``num_samples > max_concurrent`` is fine).
* The prompts a refill of the slots needs are prefilled together (``Engine.prefill_batch``, one
  [n, t] forward per bucket length t, up to ``prefill_tokens`` tokens) and placed with one
  ``insert_many`` per batch: the weights are read once per batch, not once per prompt (on the
  benchmark's CPU, 32 prompts of 32 tokens: 0.71 -> 0.40 s f32, 0.62 -> 0.30 s bf16).
* Sample j of a prompt draws token n with the key ``fold_in(fold_in(fold_in(fold_in(key(seed),
  h), r), j), n)`` where h is a hash of the prompt's token ids and r counts earlier identical
  prompts in the same call. So a sample depends only on (seed, prompt, its occurrence, j), never
  on the slot it lands in, its neighbours, the order of the prompts or ``max_concurrent``
  (up to float rounding of the batched forward: the decode step is exact on CPU in the tests;
  a batched prefill's rows differ from one-by-one prefills by ~1e-7 in float32, which the tests
  show gives the same tokens, while bfloat16 near-ties can go either way).

The sampler uses the params it is given in place (same shardings, no host copy), so training and
generation can alternate in one process: ``update_params`` after each training step, or pass
``params=`` per call. (If the trainer donates its params, the sampler must get the new ones.) Each
``generate`` call casts them to the compute dtype once (``Engine.sampling_params``; the master
params are not touched), so the decode steps do not re-convert float32 weights.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from selfreward_jax.model import llama
from selfreward_jax.sampling import engine as engine_lib


@dataclasses.dataclass
class SamplerStats:
  """Counters of the last ``Sampler.generate`` call."""

  new_tokens: int = 0      # tokens returned (stop tokens excluded)
  prefills: int = 0        # prompts prefilled
  prefill_calls: int = 0   # batched prefill forwards (several prompts each, see prefill_tokens)
  decode_steps: int = 0    # generate steps run (each advances every slot)
  host_syncs: int = 0
  cache_length: int = 0    # cache slots per sequence allocated at the end (see grow_cache)
  cache_growths: int = 0
  seconds: float = 0.0


class Sampler:
  """Continuous-batching sampling of a Llama on a mesh.

  Args:
    config: the model's ``LlamaConfig``.
    params: current parameters (any sharding, used in place).
    max_concurrent: decode slots (sequences decoded together).
    max_prefill_length: longest prompt, a power of two >= 16 (prompts are padded to power-of-two
      buckets 16, 32, ... up to it, so at most log2(max/8) prefill compilations).
    max_decode_length: the KV cache length: the longest prompt + continuation of one sequence
      (<= ``config.max_seq_len``, >= ``max_prefill_length``).
    mesh: default: the params' mesh.
    steps_per_sync: decode steps per jitted chunk / host sync.
    grow_cache: start each ``generate`` call with a KV cache just long enough for its prompts and
      the first chunk, and grow it through ``Engine.cache_buckets`` (64, 128, ... then
      ``max_decode_length``) as the sequences get longer, so a decode step's attention reads the
      cache the sequences use, not ``max_decode_length`` slots (one decode compilation per bucket
      reached). False allocates ``max_decode_length`` from the start.
    prefill_tokens: most tokens (rows x bucket length) per prefill forward: the prompts that a
      refill of the slots needs are prefilled together, grouped by bucket length, in batches of a
      power-of-two size n with n x bucket <= this (one compilation per (n, bucket) reached).
      Default ``max(max_prefill_length, engine.PREFILL_BATCH_TOKENS)`` (1024), so a batch never
      holds more than a longest prompt or 1024 tokens; 1 (or any value < 16) prefills one prompt
      per forward.
  """

  def __init__(self, config: llama.LlamaConfig, params: Any, *, max_concurrent: int,
               max_prefill_length: int, max_decode_length: int,
               mesh: Optional[jax.sharding.Mesh] = None, steps_per_sync: int = 16,
               grow_cache: bool = True, prefill_tokens: Optional[int] = None):
    if steps_per_sync < 1:
      raise ValueError(f"steps_per_sync={steps_per_sync}: must be >= 1")
    if prefill_tokens is not None and prefill_tokens < 1:
      raise ValueError(f"prefill_tokens={prefill_tokens}: must be >= 1 (None = the default)")
    self.engine = engine_lib.Engine(
        config, params, max_concurrent_decodes=max_concurrent,
        max_prefill_length=max_prefill_length, max_cache_length=max_decode_length, mesh=mesh)
    self.config = config
    self.steps_per_sync = int(steps_per_sync)
    self.grow_cache = bool(grow_cache)
    self.prefill_tokens = int(prefill_tokens or max(max_prefill_length,
                                                    engine_lib.PREFILL_BATCH_TOKENS))
    self.stats = SamplerStats()

  @property
  def params(self) -> Any:
    """The current params, as given (not cast)."""
    return self.engine.params

  def update_params(self, params: Any) -> None:
    """Uses ``params`` from now on (no copy; e.g. the trainer's params after a DPO step)."""
    self.engine.update_params(params)

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               num_samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, stop_ids: Sequence[int] = (), seed: int = 0,
               return_logprobs: bool = False, params: Any = None):
    """Samples ``num_samples`` continuations of every prompt.

    Args:
      prompts: token-id sequences (include BOS yourself), each 1..max_prefill_length long.
      max_new_tokens: >= 1; prompt length + max_new_tokens must fit ``max_decode_length``.
      num_samples: continuations per prompt (any number; they share one prefill).
      temperature: 0 = greedy; top_p in (0, 1]; top_k >= 0 (0 = off). See ``sampling.ops``.
      stop_ids: up to 8 ids that end a continuation (the stop token is not returned).
      seed: with the prompts, determines every sample (see the module docstring).
      return_logprobs: also return each token's log-probability under the model itself, i.e.
        ``log_softmax`` of the raw logits (not the tempered / truncated sampling distribution).
      params: use these instead of the sampler's params for this call.

    Returns:
      ``tokens[i][j]``: list of ids of sample j of prompt i (continuation only, stop token
      excluded); with ``return_logprobs``, ``(tokens, logprobs)`` with matching float lists.

    Raises:
      ValueError: empty or over-long prompt, ids outside the vocabulary, max_new_tokens < 1,
        prompt + max_new_tokens beyond the cache, bad sampling settings, more than 8 stop ids.
    """
    prompts = [self._checked_prompt(i, p, max_new_tokens) for i, p in enumerate(prompts)]
    self._check_call(max_new_tokens, num_samples, temperature, top_p, top_k, stop_ids)
    start = time.perf_counter()
    params = self.engine.sampling_params(self.params if params is None else params)
    self.stats = SamplerStats()
    run = _Run(self, params, prompts, num_samples, _sample_keys(prompts, num_samples, seed),
               dict(temperature=temperature, top_p=top_p, top_k=top_k,
                    max_new_tokens=max_new_tokens), tuple(stop_ids), return_logprobs)
    tokens, logprobs = run.loop()
    self.stats.seconds = time.perf_counter() - start
    self.stats.new_tokens = sum(len(s) for per in tokens for s in per)
    return (tokens, logprobs) if return_logprobs else tokens

  # ---- validation ------------------------------------------------------------------------------

  def _checked_prompt(self, i: int, prompt: Sequence[int], max_new_tokens: int) -> np.ndarray:
    p = np.asarray(prompt)
    if p.ndim != 1 or p.size == 0:
      raise ValueError(f"prompt {i} is empty (or not a flat id list); a prompt needs at least one "
                       "token, e.g. BOS")
    if not np.issubdtype(p.dtype, np.integer) or p.min() < 0 or p.max() >= self.config.vocab_size:
      raise ValueError(f"prompt {i}: ids must be integers in [0, {self.config.vocab_size})")
    if p.size > self.engine.max_prefill_length:
      raise ValueError(f"prompt {i} has {p.size} tokens > max_prefill_length="
                       f"{self.engine.max_prefill_length} (the sampler does not truncate)")
    if p.size + max_new_tokens > self.engine.max_cache_length:
      raise ValueError(f"prompt {i}: {p.size} tokens + max_new_tokens={max_new_tokens} exceeds the "
                       f"cache length max_decode_length={self.engine.max_cache_length}")
    return p.astype(np.int32)

  def _check_call(self, max_new_tokens, num_samples, temperature, top_p, top_k, stop_ids):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if num_samples < 1:
      raise ValueError(f"num_samples={num_samples}: must be >= 1")
    engine_lib.check_settings(temperature, top_p, top_k)
    engine_lib._stop_array(stop_ids)  # pylint: disable=protected-access


class _Run:
  """State of one ``Sampler.generate`` call (host side)."""

  def __init__(self, sampler: Sampler, params, prompts, num_samples, keys_pn2, settings,
               stop_ids, return_logprobs):
    self.s, self.engine, self.params = sampler, sampler.engine, params
    self.prompts, self.keys_pn2, self.settings = prompts, keys_pn2, settings
    self.stop_ids, self.return_logprobs = stop_ids, return_logprobs
    self.queue = collections.deque((i, j) for i in range(len(prompts)) for j in range(num_samples))
    self.prefixes = {}  # prompt index -> [PrefixBatch, row, inserts left]
    self.slots = [None] * self.engine.max_concurrent_decodes  # (i, j, tokens, logprobs) or None
    self.tokens = [[None] * num_samples for _ in prompts]
    self.logprobs = [[None] * num_samples for _ in prompts]

  def loop(self):
    state = self.engine.init_decode_state(cache_length=self._first_cache_length())
    while True:
      state = self._fill(state)
      if all(x is None for x in self.slots):
        self.s.stats.cache_length = state.cache.length
        return self.tokens, self.logprobs
      state = self._grown(state)
      state = self._decode_chunk(state)

  def _first_cache_length(self) -> int:
    """Room for every prompt's prefix (its prefill bucket) and for a first chunk of steps."""
    if not self.s.grow_cache:
      return self.engine.max_cache_length
    need = max((max(engine_lib.bucket_length(p.size, self.engine.max_prefill_length),
                    p.size + self.s.steps_per_sync) for p in self.prompts), default=1)
    return self.engine.cache_bucket(need)

  def _grown(self, state):
    """Grows the cache when a running sequence could reach its end within the next chunk (its
    next position is prompt length + tokens so far)."""
    s = state.cache.length
    if s >= self.engine.max_cache_length:
      return state
    need = max(self.prompts[o[0]].size + len(o[2]) for o in self.slots if o is not None)
    need += self.s.steps_per_sync
    if need <= s:
      return state
    self.s.stats.cache_growths += 1
    return self.engine.grow_cache(state, self.engine.cache_bucket(need))

  def _fill(self, state):
    """Fills the free slots from the queue. Prompts with a prefix left from an earlier refill are
    inserted first; the others are prefilled in batches (by bucket length) and each batch's
    samples inserted before the next batch is prefilled, so one batch of prefixes is alive at a
    time (besides those of prompts with samples still queued)."""
    free = [b for b, occupant in enumerate(self.slots) if occupant is None]
    taken = [(b,) + self.queue.popleft() for b in free[:len(self.queue)]]
    for b, i, j in taken:
      self.slots[b] = (i, j, [], [])
    new = [i for i in dict.fromkeys(i for _, i, _ in taken) if i not in self.prefixes]
    state = self._insert([x for x in taken if x[1] in self.prefixes], state)
    for chunk in self._prefill(new):
      state = self._insert([x for x in taken if x[1] in chunk], state)
    return state

  def _insert(self, taken, state):
    """Inserts (slot, prompt, sample) triples whose prompts have prefixes: one ``insert_many``
    per prefix batch; a prefix is dropped once all its prompt's samples are placed."""
    groups = {}  # id of a PrefixBatch -> (batch, [(row, slot, key)])
    for b, i, j in taken:
      entry = self.prefixes[i]
      groups.setdefault(id(entry[0]), (entry[0], []))[1].append(
          (entry[1], b, self.keys_pn2[i][j]))
      entry[2] -= 1
      if entry[2] == 0:
        del self.prefixes[i]
    for batch, inserts in groups.values():
      rows, slots, keys = zip(*inserts)
      state = self.engine.insert_many(batch, state, rows, slots, np.stack(keys))
    return state

  def _prefill(self, indices):
    """Prefills prompts ``indices`` batch by batch, yielding each batch's prompt indices after
    registering their prefixes ([PrefixBatch, row, inserts left]): grouped by bucket length t,
    n rows per forward with n a power of two and n x t <= ``prefill_tokens`` (a short batch is
    padded with one-token rows)."""
    by_bucket = collections.defaultdict(list)
    for i in indices:
      by_bucket[engine_lib.bucket_length(self.prompts[i].size,
                                         self.engine.max_prefill_length)].append(i)
    for t, group in by_bucket.items():
      cap = 1 << max(0, (self.s.prefill_tokens // t).bit_length() - 1)  # power of two <= budget/t
      for k in range(0, len(group), cap):
        chunk = group[k:k + cap]
        n = engine_lib._pow2(len(chunk))  # pylint: disable=protected-access
        tokens_nt = np.zeros((n, t), np.int32)
        lengths_n = np.ones((n,), np.int32)
        for row, i in enumerate(chunk):
          p = self.prompts[i]
          tokens_nt[row, :p.size] = p
          lengths_n[row] = p.size
        batch = self.engine.prefill_batch(params=self.params, padded_tokens_nt=tokens_nt,
                                          true_lengths_n=lengths_n, **self.settings)
        self.s.stats.prefill_calls += 1
        self.s.stats.prefills += len(chunk)
        for row, i in enumerate(chunk):
          self.prefixes[i] = [batch, row, len(self.tokens[i])]
        yield set(chunk)

  def _decode_chunk(self, state):
    state, tokens_kb, valid_kb, logprobs_kb, n, done_b = self.engine.generate_steps(
        self.params, state, num_steps=self.s.steps_per_sync, stop_ids=self.stop_ids,
        exit_on_finish=bool(self.queue))
    fetch = (tokens_kb, valid_kb, n, done_b) + ((logprobs_kb,) if self.return_logprobs else ())
    host = jax.device_get(fetch)
    tokens_kb, valid_kb, n, done_b = host[:4]
    logprobs_kb = host[4] if self.return_logprobs else None
    self.s.stats.decode_steps += int(n)
    self.s.stats.host_syncs += 1
    if n == 0 and not np.all(done_b):
      raise RuntimeError("Sampler: a decode chunk made no progress (a running sequence at the end "
                         f"of the allocated cache of {state.cache.length} slots)")
    for b, occupant in enumerate(self.slots):
      if occupant is not None:
        self._collect(b, occupant, tokens_kb[:n, b], valid_kb[:n, b],
                      None if logprobs_kb is None else logprobs_kb[:n, b], bool(done_b[b]))
    return state

  def _collect(self, b, occupant, tokens_k, valid_k, logprobs_k, done):
    i, j, toks, lps = occupant
    toks.extend(tokens_k[valid_k].tolist())
    if logprobs_k is not None:
      lps.extend(logprobs_k[valid_k].tolist())
    if not done:
      return
    if toks and toks[-1] in self.stop_ids:
      toks.pop()
      if lps:
        lps.pop()
    self.tokens[i][j] = toks
    self.logprobs[i][j] = lps if self.return_logprobs else None
    self.slots[b] = None


def _prompt_hash(p: np.ndarray) -> int:
  return int.from_bytes(hashlib.blake2b(p.astype("<i4").tobytes(), digest_size=4).digest(),
                        "little") & 0x7FFFFFFF


def _sample_keys(prompts: Sequence[np.ndarray], num_samples: int, seed: int) -> np.ndarray:
  """uint32 [P, N, 2]: raw key of sample j of prompt i (see the module docstring)."""
  seen = collections.Counter()
  ids = []
  for p in prompts:
    h = _prompt_hash(p)
    ids.append((h, seen[h]))
    seen[h] += 1
  ids = jnp.asarray(np.array(ids, np.int32).reshape(-1, 2))
  return np.asarray(_keys_jit(jnp.int32(seed), ids, num_samples))


def _keys(seed, ids_p2, num_samples):
  base = jax.random.key(seed)

  def one(h, r, j):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, h), r), j)
    return jax.random.key_data(k)

  per_prompt = lambda hr: jax.vmap(lambda j: one(hr[0], hr[1], j))(jnp.arange(num_samples))
  return jax.vmap(per_prompt)(ids_p2)


_keys_jit = jax.jit(_keys, static_argnums=2)


def generate_text(sampler: Sampler, tokenizer, prompts: Sequence[str], *,
                  system: Optional[str] = None, stop_ids: Optional[Sequence[int]] = None,
                  **kwargs) -> list[list[str]]:
  """Chat-templated text in, text out.

  Each prompt becomes ``tokenizer.chat_prompt(prompt, system)`` (Llama 2 ``[INST]`` format with
  BOS); generation stops at EOS (default ``stop_ids=(tokenizer.eos_id,)``); each continuation is
  ``tokenizer.decode``-d. ``kwargs`` go to ``Sampler.generate`` (``max_new_tokens``,
  ``num_samples``, ``temperature``, ...; not ``return_logprobs``). Returns ``texts[i][j]``.
  """
  if kwargs.get("return_logprobs"):
    raise ValueError("generate_text returns text only; use Sampler.generate for log-probs")
  ids = [tokenizer.chat_prompt(p, system=system) for p in prompts]
  stop = (tokenizer.eos_id,) if stop_ids is None else tuple(stop_ids)
  out = sampler.generate(ids, stop_ids=stop, **kwargs)
  return [[tokenizer.decode(s) for s in per] for per in out]
