"""Sampling measurements: new tokens/s of our offline ``Sampler``, of transformers' ``generate`` and
of our JetStream gRPC server, on the same weights and prompts.

What is timed (after one untimed warm-up call of the same shape, so compilation is excluded;
``sample_repeats`` timed calls per side, the median reported, since single runs of a few seconds
vary by up to ~30% on a shared machine):

* ours: one ``Sampler.generate(prompts, max_new_tokens=n)`` call (prefills, inserts, decode
  chunks, the tokens back on the host); no stop id, so every prompt yields exactly n tokens.
* transformers: one ``model.generate(ids, max_new_tokens=n, min_new_tokens=n)`` under
  ``torch.no_grad()`` (equal prompt lengths: no padding).
* JetStream gRPC: an in-process ``serve.Server`` on 127.0.0.1 (JetStream's ``Driver`` and
  ``LLMOrchestrator``); P concurrent ``Decode`` calls through JetStream's ``OrchestratorStub``, each
  with the prompt as ``token_content`` (client-side tokenisation: ids in, ids out) and
  ``max_tokens=n``, from the first request sent to the last stream closed. JetStream stops a
  stream at its stop ids (EOS, pad), so tokens received are counted, not assumed.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import time
from typing import Any, Dict, List, Sequence

import numpy as np

from selfreward_jax.bench import common

MODES = {"greedy": dict(temperature=0.0), "T=0.7 top-p 0.9": dict(temperature=0.7, top_p=0.9)}


def _bucket(n: int) -> int:
  from selfreward_jax.sampling.engine import bucket_length  # pylint: disable=g-import-not-at-top
  return bucket_length(n, 32768)


def ours(cfg: common.BenchConfig, params, prompts: Sequence[Sequence[int]], new_tokens: int,
         mode: Dict[str, float], compute_dtype: str = "float32", steps_per_sync: int = 16,
         repeats: int = 1) -> Dict[str, Any]:
  from selfreward_jax.sampling.sampler import Sampler  # pylint: disable=g-import-not-at-top
  model = cfg.llama(compute_dtype=compute_dtype)
  t_prefill = _bucket(max(len(p) for p in prompts))
  sampler = Sampler(model, params, max_concurrent=len(prompts), max_prefill_length=t_prefill,
                    max_decode_length=max(t_prefill, cfg.prompt_len + new_tokens),
                    steps_per_sync=steps_per_sync)
  run = lambda: sampler.generate(prompts, max_new_tokens=new_tokens, **mode)
  t = common.timed(run, repeats)
  n = sampler.stats.new_tokens
  t.update(new_tokens=n, tokens_per_s=n / t["median_s"], prefills=sampler.stats.prefills,
           host_syncs=sampler.stats.host_syncs, decode_steps=sampler.stats.decode_steps)
  return t


def hf_generate(hf_model, prompts: Sequence[Sequence[int]], new_tokens: int,
                mode: Dict[str, float], repeats: int = 1) -> Dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.tensor(prompts)
  kw = dict(do_sample=False) if mode["temperature"] == 0 else dict(
      do_sample=True, temperature=mode["temperature"], top_p=mode.get("top_p", 1.0), top_k=0)

  def run():
    with torch.no_grad():
      out = hf_model.eval().generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     pad_token_id=0, **kw)
    assert out.shape == (len(prompts), ids.shape[1] + new_tokens), out.shape

  t = common.timed(run, repeats)
  n = len(prompts) * new_tokens
  t.update(new_tokens=n, tokens_per_s=n / t["median_s"])
  return t


def _tokenizer_file(workdir: str) -> str:
  """A small SentencePiece model: the orchestrator needs one for its stop ids and BOS even though
  the requests carry token ids (nothing is detokenised)."""
  from selfreward_jax.tokenizer import train_sentencepiece  # pylint: disable=g-import-not-at-top
  words = ["the quick brown fox jumps over the lazy dog", "a model judges its own answers",
           "benchmarks measure throughput on the same weights"] * 40
  train_sentencepiece(words, os.path.join(workdir, "tokenizer"), vocab_size=320)
  return os.path.join(workdir, "tokenizer.model")


def grpc_serving(cfg: common.BenchConfig, params, prompts: Sequence[Sequence[int]],
                 new_tokens: int, compute_dtype: str = "float32") -> Dict[str, Any]:
  """Our JetStream server in process on loopback; P concurrent requests, greedy."""
  try:
    import grpc  # pylint: disable=g-import-not-at-top
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return common.skipped(f"JetStream/grpc not importable: {e}")
  from selfreward_jax import serve  # pylint: disable=g-import-not-at-top
  from selfreward_jax.sampling.engine import Engine  # pylint: disable=g-import-not-at-top
  model = cfg.llama(compute_dtype=compute_dtype)
  t_prefill = _bucket(max(len(p) for p in prompts))
  with tempfile.TemporaryDirectory() as workdir:
    engine = Engine(model, params, max_concurrent_decodes=len(prompts),
                    max_prefill_length=t_prefill,
                    max_cache_length=max(t_prefill, cfg.prompt_len + new_tokens),
                    tokenizer_path=_tokenizer_file(workdir), temperature=0.0)
    server = serve.Server(engine, host="127.0.0.1", port=0)
    try:
      address = f"127.0.0.1:{server.port}"

      def one(prompt: Sequence[int]) -> int:
        with grpc.insecure_channel(address) as channel:
          stub = jetstream_pb2_grpc.OrchestratorStub(channel)
          # JetStream prepends BOS to token_content itself: send the ids after our BOS.
          req = jetstream_pb2.DecodeRequest(
              token_content=jetstream_pb2.DecodeRequest.TokenContent(token_ids=list(prompt[1:])),
              max_tokens=new_tokens)
          return sum(len(s.token_ids) for r in stub.Decode(req, timeout=900)
                     for s in r.stream_content.samples)

      def burst(ps) -> List[int]:
        with concurrent.futures.ThreadPoolExecutor(len(ps)) as pool:
          return list(pool.map(one, ps))

      start = time.perf_counter()
      burst(prompts[:2])  # warm-up: compiles prefill, insert and generate
      warmup_s = time.perf_counter() - start
      start = time.perf_counter()
      counts = burst(prompts)
      secs = time.perf_counter() - start
    finally:
      server.stop()
  n = int(sum(counts))
  return {"median_s": secs, "runs_s": [round(secs, 4)], "first_s": warmup_s, "new_tokens": n,
          "tokens_per_s": n / secs, "requests": len(prompts),
          "min_tokens_per_request": int(min(counts)),
          "timed": "in-process serve.Server on 127.0.0.1, concurrent OrchestratorStub.Decode calls "
                   "(token_content), first send to last stream closed"}


def prompts_growth(cfg: common.BenchConfig, params, compute_dtype: str = "bfloat16"
                   ) -> Dict[str, Any]:
  """Our greedy sampling time for each ``growth_prompts`` count (``growth_new_tokens`` each)."""
  out = {}
  for n in cfg.growth_prompts:
    t = ours(cfg, params, common.sampling_prompts(cfg, n), cfg.growth_new_tokens, MODES["greedy"],
             compute_dtype=compute_dtype)
    out[str(n)] = {"median_s": t["median_s"], "tokens_per_s": t["tokens_per_s"]}
  return out
