"""Offline Sampler: greedy parity with transformers, determinism independent of batch composition,
shared prefills, log-probs, text helper, and clear errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hf_to_params, make_hf_llama
from selfreward_jax.model import llama
from selfreward_jax.sampling.sampler import Sampler, generate_text

PROMPT_LENGTHS = (1, 5, 16, 17, 33, 40, 9)


def _prompts(vocab, lengths=PROMPT_LENGTHS, seed=0):
  rng = np.random.default_rng(seed)
  return [[1] + rng.integers(3, vocab, size=n - 1).tolist() for n in lengths]


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_greedy_matches_transformers_generate(kv_heads):
  import torch
  model = make_hf_llama(vocab=128, heads=4, kv_heads=kv_heads, eps=1e-6, seed=kv_heads)
  config, params = hf_to_params(model)
  prompts = _prompts(config.vocab_size)
  sampler = Sampler(config, params, max_concurrent=3, max_prefill_length=64,
                    max_decode_length=96, steps_per_sync=4)
  ours = sampler.generate(prompts, max_new_tokens=12, stop_ids=(2,))
  assert len(prompts) > sampler.engine.max_concurrent_decodes
  for prompt, [got] in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                           eos_token_id=2, pad_token_id=0)
    want = out[0, len(prompt):].tolist()
    if want and want[-1] == 2:
      want = want[:-1]
    assert got == want


@pytest.fixture(scope="module")
def tiny():
  config = llama.LlamaConfig.tiny(vocab_size=128, max_seq_len=128)
  params = llama.init_params(config, jax.random.key(0))
  # sharper logits than the 0.02-std init, so temperature/top-p matter and EOS (2) occurs
  params = dict(params, lm_head=params["lm_head"] * 40.0)
  return config, params


def _sampler(tiny, slots, **kw):
  config, params = tiny
  return Sampler(config, params, max_concurrent=slots, max_prefill_length=32,
                 max_decode_length=64, **kw)


SAMPLE_KW = dict(max_new_tokens=20, temperature=0.7, top_p=0.9, stop_ids=tuple(range(2, 10)), seed=5)


def test_samples_independent_of_batch_order_and_slots(tiny):
  prompts = _prompts(128, lengths=(3, 20, 7, 12), seed=1)
  a = _sampler(tiny, 3).generate(prompts, num_samples=4, **SAMPLE_KW)
  lengths = {len(s) for per in a for s in per}
  assert len(lengths) > 1, "want samples finishing at different steps"
  assert all(len({tuple(s) for s in per}) > 1 for per in a), "samples of a prompt should differ"
  wide = _sampler(tiny, 8, steps_per_sync=1)
  b = wide.generate([prompts[2], prompts[0]], num_samples=4, **SAMPLE_KW)
  assert b == [a[2], a[0]]
  c = _sampler(tiny, 1, steps_per_sync=5).generate([prompts[1]], num_samples=4, **SAMPLE_KW)
  assert c == [a[1]]
  assert wide.generate([prompts[2], prompts[0]], num_samples=4, **SAMPLE_KW) == b
  other_seed = wide.generate([prompts[2]], num_samples=4, **dict(SAMPLE_KW, seed=6))
  assert other_seed != [a[2]]


def test_shared_prefill_more_samples_than_slots_and_duplicates(tiny):
  prompts = _prompts(128, lengths=(4, 9), seed=2)
  few = _sampler(tiny, 2)
  out = few.generate(prompts, num_samples=5, **SAMPLE_KW)
  assert few.stats.prefills == 2 and few.stats.new_tokens == sum(len(s) for p in out for s in p)
  many = _sampler(tiny, 16).generate(prompts, num_samples=5, **SAMPLE_KW)
  assert out == many
  dup = few.generate([prompts[0], prompts[0]], num_samples=2, **SAMPLE_KW)
  assert dup[0] == out[0][:2] and dup[1] != dup[0]  # a repeated prompt gets fresh samples


def test_logprobs_are_raw_model_log_softmax(tiny):
  config, params = tiny
  prompts = _prompts(128, lengths=(6, 11), seed=3)
  sampler = _sampler(tiny, 2)
  tokens, logprobs = sampler.generate(prompts, num_samples=2, return_logprobs=True, **SAMPLE_KW)
  for prompt, per_t, per_l in zip(prompts, tokens, logprobs):
    for toks, lps in zip(per_t, per_l):
      assert len(toks) == len(lps)
      seq = jnp.asarray([prompt + toks])
      logp = jax.nn.log_softmax(llama.forward(params, seq, config)[0], -1)
      want = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(toks)]
      np.testing.assert_allclose(lps, want, atol=2e-4)


def test_update_params_and_per_call_params(tiny):
  config, params = tiny
  sampler = _sampler(tiny, 2)
  prompt = _prompts(128, lengths=(5,), seed=4)
  before = sampler.generate(prompt, max_new_tokens=8)
  other = llama.init_params(config, jax.random.key(1))
  other = dict(other, lm_head=other["lm_head"] * 40.0)
  assert sampler.generate(prompt, max_new_tokens=8, params=other) != before
  assert sampler.generate(prompt, max_new_tokens=8) == before
  sampler.update_params(other)
  assert sampler.generate(prompt, max_new_tokens=8) == sampler.generate(
      prompt, max_new_tokens=8, params=other)


def test_generate_text_uses_chat_template(tmp_path):
  from selfreward_jax.tokenizer import train_sentencepiece
  tok = train_sentencepiece(["hello world, how are you today?", "fine thanks"] * 40,
                            str(tmp_path / "tok"), vocab_size=300)
  config = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size, max_seq_len=128)
  params = llama.init_params(config, jax.random.key(2))
  sampler = Sampler(config, params, max_concurrent=2, max_prefill_length=64, max_decode_length=96)
  texts = generate_text(sampler, tok, ["hello", "how are you?"], system="be brief",
                        max_new_tokens=10, num_samples=2, temperature=0.7, top_p=0.9)
  ids = [tok.chat_prompt(p, system="be brief") for p in ["hello", "how are you?"]]
  raw = sampler.generate(ids, max_new_tokens=10, num_samples=2, temperature=0.7, top_p=0.9,
                         stop_ids=(tok.eos_id,))
  assert texts == [[tok.decode(s) for s in per] for per in raw]
  assert all(isinstance(t, str) for per in texts for t in per)


@pytest.mark.parametrize("prompts,kw,match", [
    ([[]], {}, "empty"),
    ([[1] * 33], {}, "max_prefill_length"),
    ([[1, 2]], dict(max_new_tokens=0), "max_new_tokens"),
    ([[1] * 30], dict(max_new_tokens=40), "exceeds the cache"),
    ([[1, 500]], {}, r"\[0, 128\)"),
    ([[1]], dict(temperature=-1.0), "temperature"),
    ([[1]], dict(top_p=0.0), "top_p"),
    ([[1]], dict(top_k=-1), "top_k"),
    ([[1]], dict(stop_ids=tuple(range(9))), "stop ids"),
    ([[1]], dict(num_samples=0), "num_samples"),
])
def test_bad_input_raises(tiny, prompts, kw, match):
  sampler = _sampler(tiny, 2)
  kw = dict(dict(max_new_tokens=4), **kw)
  with pytest.raises(ValueError, match=match):
    sampler.generate(prompts, **kw)


def test_bad_sizes_raise(tiny):
  with pytest.raises(ValueError, match="power"):
    _sampler(tiny, 2).__class__(*tiny, max_concurrent=2, max_prefill_length=48,
                                 max_decode_length=64)
  with pytest.raises(ValueError, match="cache length"):
    Sampler(*tiny, max_concurrent=2, max_prefill_length=64, max_decode_length=32)
  with pytest.raises(ValueError, match="max_seq_len"):
    Sampler(*tiny, max_concurrent=2, max_prefill_length=32, max_decode_length=1024)


def test_bf16_cast_once_gives_the_per_step_cast_tokens(tiny, monkeypatch):
  """Casting the params once per generate call (Engine.sampling_params) gives the same greedy and
  sampled tokens as passing the float32 params into every step (the model's per-layer cast)."""
  config, params = tiny
  bf = config.replace(compute_dtype="bfloat16")
  prompts = _prompts(128, lengths=(3, 20, 7), seed=2)
  sampler = Sampler(bf, params, max_concurrent=2, max_prefill_length=32, max_decode_length=64)
  kw = dict(max_new_tokens=12, stop_ids=(2,))
  once = [sampler.generate(prompts, **kw), sampler.generate(prompts, **kw, **SAMPLE_KW_NO_STOP)]
  assert sampler.params is params
  monkeypatch.setattr(sampler.engine, "sampling_params", lambda p: p)
  per_step = [sampler.generate(prompts, **kw), sampler.generate(prompts, **kw, **SAMPLE_KW_NO_STOP)]
  assert once == per_step


SAMPLE_KW_NO_STOP = dict(temperature=0.7, top_p=0.9, seed=5)


def test_growing_cache_gives_the_same_samples_as_a_full_one(tiny):
  """grow_cache (the default) starts each call with a short cache and grows it through the
  engine's buckets as sequences get longer: the same greedy and sampled tokens and log-probs as
  a cache of max_decode_length from the start, with continuous batching and stop ids."""
  config, params = tiny
  prompts = _prompts(128, lengths=(3, 20, 7, 12, 30), seed=2)
  kw = dict(max_new_tokens=90, num_samples=2, temperature=0.7, top_p=0.9, stop_ids=(2, 3),
            seed=3, return_logprobs=True)
  out = {}
  for grow in (True, False):
    s = Sampler(config, params, max_concurrent=3, max_prefill_length=32, max_decode_length=128,
                steps_per_sync=8, grow_cache=grow)
    greedy = s.generate(prompts, max_new_tokens=90)
    stats = s.stats
    out[grow] = (greedy, s.generate(prompts, **kw), stats)
  assert out[True][0] == out[False][0]
  assert out[True][1][0] == out[False][1][0]
  np.testing.assert_allclose(np.concatenate([np.ravel(x) for p in out[True][1][1] for x in p]),
                             np.concatenate([np.ravel(x) for p in out[False][1][1] for x in p]),
                             atol=1e-5)
  assert max(len(x[0]) for x in out[True][0]) == 90  # some sequence ran long enough to grow
  assert out[True][2].cache_growths >= 1 and out[True][2].cache_length == 128
  assert out[False][2].cache_growths == 0 and out[False][2].cache_length == 128
  assert s.generate([], max_new_tokens=5) == []  # nothing to sample: no cache to size


def test_batched_prefill_gives_the_one_by_one_samples(tiny):
  """Prompts of two buckets (16, 32) refilling the slots together are prefilled in batches: with
  8 slots, the three of bucket 16 in one forward of 4 rows and the two of bucket 32 in one of 2;
  a budget of 32 tokens splits them into 2 + 1 and 1 + 1 rows; budget 1 prefills one per forward.
  All give the same tokens and log-probs, also with more samples than slots (refills of 1-2
  prompts)."""
  prompts = _prompts(128, lengths=(3, 20, 7, 12, 30), seed=7)
  calls, runs = {}, {}
  for budget, want_calls in ((None, 2), (32, 4), (1, 5)):
    sampler = _sampler(tiny, 8, prefill_tokens=budget)
    runs[budget, 8] = sampler.generate(prompts, return_logprobs=True, **SAMPLE_KW)
    assert (sampler.stats.prefills, sampler.stats.prefill_calls) == (5, want_calls)
    few = _sampler(tiny, 4, prefill_tokens=budget)
    runs[budget, 4] = few.generate(prompts, num_samples=3, return_logprobs=True, **SAMPLE_KW)
    assert few.stats.prefills == 5
  for budget in (None, 32):
    for slots in (8, 4):
      (tok_a, lp_a), (tok_b, lp_b) = runs[budget, slots], runs[1, slots]
      assert tok_a == tok_b
      for a, b in zip(lp_a, lp_b):
        for x, y in zip(a, b):
          np.testing.assert_allclose(x, y, atol=1e-5)
  greedy = [_sampler(tiny, 8, prefill_tokens=b).generate(prompts, max_new_tokens=10)
            for b in (None, 1)]
  assert greedy[0] == greedy[1]
  with pytest.raises(ValueError, match="prefill_tokens"):
    _sampler(tiny, 4, prefill_tokens=0)
