"""JetStream 0.2.2 compat shims: lazy import, root logger left alone, ``tree_map`` only for the
orchestrator, and a request through JetStream's own Driver/LLMOrchestrator in process."""

import logging
import os
import subprocess
import sys

import jax
import pytest

from conftest import REPO


def test_importing_selfreward_jax_does_not_import_jetstream_or_tensorflow():
  code = ("import sys, selfreward_jax, selfreward_jax.sampling, selfreward_jax.sampling.ops; "
          "import selfreward_jax.serve; "
          "bad = [m for m in ('jetstream', 'tensorflow', 'seqio') if m in sys.modules]; "
          "assert not bad, bad; print('OK')")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", "PATH": ""})
  assert out.stdout.strip() == "OK", out.stderr[-3000:]


def test_import_orchestrator_restores_root_logger_and_scopes_tree_map():
  from selfreward_jax.sampling import compat
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  orchestrator = compat.import_orchestrator()
  assert root.level == level and root.handlers == handlers
  assert compat.import_orchestrator() is orchestrator  # idempotent
  assert not hasattr(jax, "tree_map")  # the real jax module is untouched
  assert orchestrator.jax.tree_map is jax.tree.map
  assert orchestrator.jax.device_put is jax.device_put
  orchestrator.delete_pytree({"a": jax.numpy.ones(2)})  # raised AttributeError without the shim


def test_running_driver_always_stops():
  from selfreward_jax.sampling import compat

  class FakeDriver:
    stopped = False

    def stop(self):
      self.stopped = True

  d = FakeDriver()
  with pytest.raises(RuntimeError):
    with compat.running_driver(d):
      raise RuntimeError("boom")
  assert d.stopped


def test_request_through_jetstream_driver(tmp_path):
  """JetStream's own threads (prefill, generate, detokenize) drive the engine; the greedy tokens
  equal the Sampler's. Exercises delete_pytree (tree_map) after every insert. Runs in a child
  process: JetStream SIGKILLs its whole process on any exception in its threads, which in-process
  would take pytest down with it instead of failing this test."""
  script = TEMPLATE.replace("TMP", repr(str(tmp_path)))
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
  assert "SERVED_EQUALS_OFFLINE" in proc.stdout


TEMPLATE = """
import asyncio, pathlib
import jax
tmp_path = pathlib.Path(TMP)
from selfreward_jax.model import llama
from selfreward_jax.sampling import compat
from selfreward_jax.sampling.engine import Engine
from selfreward_jax.sampling.sampler import Sampler
from selfreward_jax.tokenizer import train_sentencepiece
tok = train_sentencepiece(["one two three four five six seven"] * 30, str(tmp_path / "t"),
                          vocab_size=280)
config = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size, max_seq_len=64)
params = llama.init_params(config, jax.random.key(4))
engine = Engine(config, params, max_concurrent_decodes=2, max_prefill_length=16,
                max_cache_length=64, tokenizer_path=tok.model_path)
orchestrator = compat.import_orchestrator()
from jetstream.core.proto import jetstream_pb2
driver = orchestrator.Driver(prefill_engines=[engine], generate_engines=[engine],
                             prefill_params=[params], generate_params=[params],
                             interleaved_mode=True)
prompts = [[5, 6, 7], [9, 10], [11, 12, 13, 14]]  # more requests than slots

async def decode(ids):
  servicer = orchestrator.LLMOrchestrator(driver=driver)
  req = jetstream_pb2.DecodeRequest(
      token_content=jetstream_pb2.DecodeRequest.TokenContent(token_ids=ids), max_tokens=8)
  out = []
  async for resp in servicer.Decode(req):
    out.extend(resp.stream_content.samples[0].token_ids)
  return out

async def all_requests():
  return await asyncio.gather(*(decode(p) for p in prompts))

with compat.running_driver(driver):
  served = asyncio.run(asyncio.wait_for(all_requests(), timeout=60))
offline = Sampler(config, params, max_concurrent=2, max_prefill_length=16,
                  max_decode_length=64).generate(
    [[tok.bos_id] + p for p in prompts], max_new_tokens=8, stop_ids=(tok.eos_id, tok.pad_id))
assert served == [o[0] for o in offline]
assert all(not t.is_alive() for t in driver._all_threads)  # pylint: disable=protected-access
print("SERVED_EQUALS_OFFLINE")
"""
