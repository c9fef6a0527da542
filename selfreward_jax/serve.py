"""Serve a Llama checkpoint over JetStream's gRPC API (google-jetstream 0.2.2).

  python -m selfreward_jax.serve --checkpoint=/path/hf_dir --tokenizer=/path/tokenizer.model \\
      [--host=127.0.0.1] [--port=9000] [--temperature=0.7 --top_p=0.9 --top_k=0] \\
      [--max_concurrent=8 --max_prefill_length=512 --max_decode_length=0] [--config=cfg.py]

Clients use JetStream's own stub: ``jetstream_pb2_grpc.OrchestratorStub(channel).Decode(
DecodeRequest(text_content=..., max_tokens=...))``; the prompt text is encoded with BOS (no chat
template is applied: send ``[INST] ... [/INST]`` yourself for chat models). ``DecodeRequest`` has
no sampling fields, so every request uses the server's ``--temperature/--top_p/--top_k``.

What runs is JetStream's ``orchestrator.Driver`` (prefill, generate and detokenize threads, one
interleaved engine) and its ``LLMOrchestrator`` servicer. Only the socket is ours:
``jetstream.core.server_lib.run`` always binds ``[::]:port`` (all interfaces; its ``_HOST`` is a
module constant), so ``Server`` builds the same pieces on a ``grpc.aio`` server bound to
``--host`` (default 127.0.0.1, loopback only). SIGTERM/SIGINT stop the driver and the server
within about a second.

Prompts longer than ``--max_prefill_length`` tokens are cut by JetStream to their last tokens;
the engine logs each one and counts them (``Engine.truncated_prompts``).

``--config`` (optional) is an ml_collections config file; its ``sampling`` / ``serve`` fields with
the flag names below (if present) replace the flag defaults; flags given on the command line win.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
_SETTINGS = ("host", "port", "temperature", "top_p", "top_k", "max_concurrent",
             "max_prefill_length", "max_decode_length", "seed", "dtype", "compute_dtype")


def _address(host: str, port: int) -> str:
  return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
  """JetStream's ``Driver`` + ``LLMOrchestrator`` on a gRPC server bound to ``host:port``.

  Starts serving on construction. ``port`` is the bound port (useful with ``port=0``). Always call
  ``stop()`` (it stops the driver, whose detokenize thread would otherwise keep the process alive).
  """

  def __init__(self, engine, *, host: str = "127.0.0.1", port: int = 0,
               threads: Optional[int] = None):
    from jetstream.core.proto import jetstream_pb2_grpc  # pylint: disable=g-import-not-at-top
    from selfreward_jax.sampling import compat  # pylint: disable=g-import-not-at-top
    orchestrator = compat.import_orchestrator()
    import grpc  # pylint: disable=g-import-not-at-top
    params = engine.load_params()
    self.driver = orchestrator.Driver(
        prefill_engines=[engine], generate_engines=[engine], prefill_params=[params],
        generate_params=[params], interleaved_mode=True)
    self._loop = None
    try:
      self._executor = concurrent.futures.ThreadPoolExecutor(
          max_workers=threads or max(engine.max_concurrent_decodes, 16))
      self._loop = asyncio.new_event_loop()
      self._loop_thread = threading.Thread(target=self._loop.run_forever, daemon=True)
      self._loop_thread.start()
      address = _address(host, port)

      async def start():
        server = grpc.aio.server(self._executor)
        jetstream_pb2_grpc.add_OrchestratorServicer_to_server(
            orchestrator.LLMOrchestrator(driver=self.driver), server)
        bound = server.add_insecure_port(address)
        if not bound:
          raise RuntimeError(f"could not bind {address}")
        await server.start()
        return server, bound

      self._grpc, self.port = self._run(start())
      self.host = host
    except BaseException:
      self.stop()
      raise

  def _run(self, coro) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

  def stop(self, grace: float = 1.0) -> None:
    """Stops the driver threads, then the gRPC server (in-flight calls get ``grace`` seconds)."""
    self.driver.stop()
    if self._loop is None:
      return
    if getattr(self, "_grpc", None) is not None:
      self._run(self._grpc.stop(grace))
      self._grpc = None
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._loop_thread.join()
    self._executor.shutdown(wait=False, cancel_futures=True)
    self._loop = None


def build_engine(checkpoint: str, tokenizer: str, *, max_concurrent: int, max_prefill_length: int,
                 max_decode_length: int = 0, temperature: float = 0.7, top_p: float = 0.9,
                 top_k: int = 0, seed: int = 0, dtype: str = "bfloat16",
                 compute_dtype: str = "bfloat16", mesh=None):
  """Loads an HF checkpoint onto ``mesh`` (default: all devices, tensor-parallel) and wraps it in
  an ``Engine`` with the given default sampling settings."""
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.checkpoint.hf import load_hf_checkpoint  # pylint: disable=g-import-not-at-top
  from selfreward_jax.sampling.engine import Engine  # pylint: disable=g-import-not-at-top
  mesh = mesh if mesh is not None else shd.make_mesh(shd.MeshConfig(1, 1, -1))
  config, params = load_hf_checkpoint(checkpoint, dtype=dtype, mesh=mesh,
                                      config_overrides={"compute_dtype": compute_dtype})
  return Engine(config, params, max_concurrent_decodes=max_concurrent,
                max_prefill_length=max_prefill_length,
                max_cache_length=max_decode_length or None, mesh=mesh, tokenizer_path=tokenizer,
                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


def _settings_from_flags() -> dict:
  """Flag values, with defaults replaced by the --config file's sampling/serve fields."""
  values = {name: FLAGS[name].value for name in _SETTINGS}
  config = FLAGS["config"].value if "config" in FLAGS else None
  if config is not None:
    for section in ("sampling", "serve"):
      fields = config.get(section) or {}
      for name in _SETTINGS:
        if name in fields and not FLAGS[name].present:
          values[name] = fields[name]
  return values


def _wait_for_signal() -> None:
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  while not stop.wait(0.2):
    pass


def main(argv) -> None:
  del argv
  import os  # pylint: disable=g-import-not-at-top
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JetStream logs every decode step at INFO
  v = _settings_from_flags()
  tokenizer = FLAGS.tokenizer or os.path.join(FLAGS.checkpoint, "tokenizer.model")
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  mesh = shd.make_mesh(shd.MeshConfig(FLAGS.mesh_data, FLAGS.mesh_fsdp, FLAGS.mesh_tensor))
  engine = build_engine(FLAGS.checkpoint, tokenizer, max_concurrent=v["max_concurrent"],
                        max_prefill_length=v["max_prefill_length"],
                        max_decode_length=v["max_decode_length"], temperature=v["temperature"],
                        top_p=v["top_p"], top_k=v["top_k"], seed=v["seed"], dtype=v["dtype"],
                        compute_dtype=v["compute_dtype"], mesh=mesh)
  server = Server(engine, host=v["host"], port=v["port"])
  try:
    print(f"serving on {_address(server.host, server.port)}", flush=True)
    _wait_for_signal()
  finally:
    server.stop()
    print(f"stopped (truncated prompts: {engine.truncated_prompts})", flush=True)


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing ``Server`` or
  ``build_engine`` defines no flags)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "HF-format checkpoint directory (config.json + safetensors).")
  flags.DEFINE_string("tokenizer", None, "SentencePiece model; default: <checkpoint>/tokenizer.model.")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind (default loopback only; '::' = all).")
  flags.DEFINE_integer("port", 9000, "Port to bind; 0 picks a free one (printed on stdout).")
  flags.DEFINE_float("temperature", 0.7, "Sampling temperature of every request (0 = greedy).")
  flags.DEFINE_float("top_p", 0.9, "Nucleus sampling mass of every request.")
  flags.DEFINE_integer("top_k", 0, "Top-k of every request (0 = off).")
  flags.DEFINE_integer("max_concurrent", 8, "Decode slots.")
  flags.DEFINE_integer("max_prefill_length", 512, "Longest prompt (power of two, 16..32768).")
  flags.DEFINE_integer("max_decode_length", 0, "KV cache length (prompt + output); 0 = model max.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("dtype", "bfloat16", "Parameter dtype to load.")
  flags.DEFINE_string("compute_dtype", "bfloat16", "Activation dtype.")
  flags.DEFINE_integer("mesh_data", 1, "Mesh data axis size.")
  flags.DEFINE_integer("mesh_fsdp", 1, "Mesh fsdp axis size.")
  flags.DEFINE_integer("mesh_tensor", -1, "Mesh tensor axis size (-1 = remaining devices).")
  config_flags.DEFINE_config_file("config", None, "Optional ml_collections config file.",
                                  lock_config=False)


if __name__ == "__main__":
  define_flags()
  flags.mark_flag_as_required("checkpoint")
  app.run(main)
