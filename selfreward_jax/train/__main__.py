"""A small command line for the trainers (testing, benchmarking); the stage runner is ``main.py``.

  python -m selfreward_jax.train sft --data sft.jsonl --tokenizer tok.model --workdir w [...]
  python -m selfreward_jax.train dpo --data pairs.jsonl --tokenizer tok.model --workdir w [...]
  python -m selfreward_jax.train bench [--dim 256 --layers 4 --seq 256 --batch 8 --steps 10]

``sft``/``dpo`` start from randomly initialised params (``--init_seed``) of a preset model
(``--model tiny``, ``--vocab`` defaults to the tokenizer's) and resume when ``--workdir`` holds a
checkpoint. ``bench`` times the jitted SFT train step on random tokens and prints tokens/s and
model FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--data", required=True)
  p.add_argument("--tokenizer", required=True, help="SentencePiece .model file")
  p.add_argument("--workdir", required=True)
  p.add_argument("--model", default="tiny", help="LlamaConfig preset")
  p.add_argument("--init_seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--microbatches", type=int, default=1)
  p.add_argument("--max_len", type=int, default=128)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--epochs", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--lr", type=float, default=None)
  p.add_argument("--end_lr", type=float, default=None)
  p.add_argument("--warmup", type=int, default=0)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--save_every", type=int, default=200)
  p.add_argument("--max_to_keep", type=int, default=3)
  p.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor sizes")
  p.add_argument("--sleep_per_step", type=float, default=0.0,
                 help="pause after each step (lets tests interrupt a run mid-way)")
  p.add_argument("--no_progress", action="store_true")
  p.add_argument("--no_tensorboard", action="store_true")


def _run_trainer(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  from selfreward_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import config as cfg_lib, optim  # pylint: disable=g-import-not-at-top

  tok = Tokenizer(args.tokenizer)
  model = llama.LlamaConfig.preset(args.model, vocab_size=tok.vocab_size)
  mesh = shd.make_mesh(shd.MeshConfig(*[int(x) for x in args.mesh.split(",")]))
  params = shd.init_sharded_params(model, jax.random.PRNGKey(args.init_seed), mesh)
  tc = cfg_lib.TrainConfig(batch_size=args.batch_size, microbatches=args.microbatches,
                           max_len=args.max_len, num_steps=args.steps, num_epochs=args.epochs,
                           seed=args.seed, dropout_rate=args.dropout, save_every=args.save_every,
                           max_to_keep=args.max_to_keep, progress=not args.no_progress,
                           tensorboard=not args.no_tensorboard)
  optim_kw = {k: v for k, v in (("learning_rate", args.lr), ("end_learning_rate", args.end_lr))
              if v is not None}
  optim_kw["warmup_steps"] = args.warmup

  def on_step(step, metrics):
    print(json.dumps({"step": step, "loss": metrics["loss"]}), flush=True)
    if args.sleep_per_step:
      time.sleep(args.sleep_per_step)

  if args.cmd == "sft":
    from selfreward_jax.train.sft import train_sft  # pylint: disable=g-import-not-at-top
    conf = cfg_lib.SFTConfig(train=tc, optim=optim.OptimConfig.sft(**optim_kw))
    train_sft(model, params, tok, args.data, conf, args.workdir, mesh, on_step=on_step)
  else:
    from selfreward_jax.train.dpo import train_dpo  # pylint: disable=g-import-not-at-top
    conf = cfg_lib.DPOConfig(train=tc, optim=optim.OptimConfig.dpo(**optim_kw))
    train_dpo(model, params, tok, args.data, conf, args.workdir, mesh, on_step=on_step)


def _bench(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import optim, state as st  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.objectives import sft_objective  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.step import TrainStep  # pylint: disable=g-import-not-at-top

  model = llama.LlamaConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers,
                            n_heads=args.heads, n_kv_heads=args.heads, ffn_dim=int(args.dim * 8 / 3),
                            max_seq_len=args.seq, compute_dtype=args.compute_dtype,
                            remat=args.remat)
  mesh = shd.make_mesh(shd.MeshConfig())
  tx, schedule = optim.make_optimizer(optim.OptimConfig(), args.steps + 2)
  sh = st.state_shardings(model, tx, mesh)
  state = st.init_train_state(shd.init_sharded_params(model, jax.random.PRNGKey(0), mesh), tx, sh, 0)
  step = TrainStep(sft_objective(model), tx, schedule, sh, mesh)
  rng = np.random.default_rng(0)
  m, b, t = args.microbatches, args.batch // args.microbatches, args.seq
  batch = {"tokens": rng.integers(3, args.vocab, (m, b, t)).astype(np.int32),
           "loss_mask": np.ones((m, b, t), np.int32), "segment_ids": np.ones((m, b, t), np.int32),
           "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (m, b, t)).copy()}
  t0 = time.time()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.time() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.time()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.time() - t0)
  sec = float(np.median(times))
  tokens = args.batch * args.seq
  flops = llama.flops_per_token(model, args.seq) * tokens
  print(json.dumps({"params": model.num_params(), "dim": args.dim, "layers": args.layers,
                    "seq": args.seq, "batch": args.batch, "compute_dtype": args.compute_dtype,
                    "devices": jax.device_count(), "compile_s": round(compile_s, 2),
                    "step_s_median": round(sec, 4), "tokens_per_s": round(tokens / sec, 1),
                    "model_tflops_per_s": round(flops / sec / 1e12, 4)}))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m selfreward_jax.train")
  sub = parser.add_subparsers(dest="cmd", required=True)
  _common(sub.add_parser("sft", help="supervised fine-tuning"))
  _common(sub.add_parser("dpo", help="DPO on preference pairs"))
  b = sub.add_parser("bench", help="train-step throughput on random tokens")
  b.add_argument("--dim", type=int, default=256)
  b.add_argument("--layers", type=int, default=4)
  b.add_argument("--heads", type=int, default=4)
  b.add_argument("--vocab", type=int, default=512)
  b.add_argument("--seq", type=int, default=256)
  b.add_argument("--batch", type=int, default=8)
  b.add_argument("--microbatches", type=int, default=1)
  b.add_argument("--steps", type=int, default=10)
  b.add_argument("--compute_dtype", default="bfloat16")
  b.add_argument("--remat", default="none")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
  if args.cmd == "bench":
    _bench(args)
  else:
    _run_trainer(args)


if __name__ == "__main__":
  main()
