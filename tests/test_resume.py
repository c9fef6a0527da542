"""Kill -9 a training process mid-run, resume it, and get the uninterrupted run's loss curve.

Three subprocesses run ``python -m selfreward_jax.train sft`` with the same seed and data (dropout
0.1, 2 microbatches, batches straddling epoch boundaries): A runs uninterrupted; B is SIGKILLed
after it has logged steps beyond a finished checkpoint; C reruns B's command and resumes. B+C's
metrics must equal A's (every step, no duplicates) and so must the final params and optimizer
state.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np

from test_train_support import REPO, env, make_tokenizer, sft_records, write_lines

STEPS, SAVE_EVERY, KILL_AFTER = 12, 3, 7


def _cmd(tmp, workdir, sleep=0.0):
  return [sys.executable, "-m", "selfreward_jax.train", "sft", "--data", str(tmp / "d.jsonl"),
          "--tokenizer", str(tmp / "tok.model"), "--workdir", str(workdir), "--steps", str(STEPS),
          "--batch_size", "4", "--microbatches", "2", "--max_len", "128", "--lr", "3e-3",
          "--warmup", "2", "--dropout", "0.1", "--seed", "7", "--save_every", str(SAVE_EVERY),
          "--max_to_keep", "2", "--no_progress", "--no_tensorboard", "--sleep_per_step", str(sleep)]


def _env(tmp):
  e = env(devices=1)  # with XLA -O0: faster compiles for the tiny model
  # the resumed run reuses the first runs' compiled step (same program, same numerics)
  e["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax_cache")
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  return [r["step"] for r in recs], np.array([r["loss"] for r in recs])


def _final_state(tmp, workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from selfreward_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train import optim, state as st  # pylint: disable=g-import-not-at-top
  from selfreward_jax.train.checkpoints import Checkpointer  # pylint: disable=g-import-not-at-top
  from test_train_support import tiny_config  # pylint: disable=g-import-not-at-top
  config = tiny_config(Tokenizer(str(tmp / "tok.model")).vocab_size)
  tx, _ = optim.make_optimizer(optim.OptimConfig.sft(), STEPS)
  sh = st.state_shardings(config, tx, shd.make_mesh(shd.MeshConfig(1, 1, 1)))
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ck:
    assert ck.latest_step() == STEPS
    state, meta = ck.restore(STEPS, st.abstract_state(config, tx, sh))
  return [np.asarray(x) for x in jax.tree.leaves(state)], meta


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
  make_tokenizer(str(tmp_path))
  write_lines(tmp_path / "d.jsonl", sft_records(5, seed=3))  # 5 examples, batches of 4
  a = subprocess.Popen(_cmd(tmp_path, tmp_path / "A"), env=_env(tmp_path), cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  b = subprocess.Popen(_cmd(tmp_path, tmp_path / "B", sleep=0.4), env=_env(tmp_path), cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seen = []
  try:
    for line in b.stdout:
      if line.startswith("{"):
        seen.append(json.loads(line)["step"])
      ckpt_done = os.path.isdir(tmp_path / "B" / "checkpoints" / str(SAVE_EVERY * 2))
      if seen and seen[-1] >= KILL_AFTER and ckpt_done:
        os.kill(b.pid, signal.SIGKILL)
        break
    b.wait(timeout=60)
  finally:
    if b.poll() is None:
      b.kill()
  assert b.returncode == -signal.SIGKILL, (b.returncode, seen)
  assert seen[-1] < STEPS and not (tmp_path / "B" / "summary.json").exists()
  killed_steps, _ = _losses(tmp_path / "B")
  assert killed_steps[-1] >= KILL_AFTER  # logged steps past the checkpoint it will resume from

  c = subprocess.run(_cmd(tmp_path, tmp_path / "B"), env=_env(tmp_path), cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert c.returncode == 0, c.stderr[-4000:]
  out, err = a.communicate(timeout=300)
  assert a.returncode == 0, err[-4000:]

  summary = json.loads((tmp_path / "B" / "summary.json").read_text())
  assert SAVE_EVERY * 2 <= summary["resumed_from"] < STEPS
  steps_a, loss_a = _losses(tmp_path / "A")
  steps_b, loss_b = _losses(tmp_path / "B")
  assert steps_a == steps_b == list(range(1, STEPS + 1))
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6, atol=0)
  assert len(set(np.round(loss_a, 5))) == STEPS  # a real curve, not a constant
  (state_a, meta_a), (state_b, meta_b) = _final_state(tmp_path, tmp_path / "A"), \
      _final_state(tmp_path, tmp_path / "B")
  assert meta_a == meta_b
  for x, y in zip(state_a, state_b):
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
  # retention: max_to_keep=2
  assert sorted(map(int, os.listdir(tmp_path / "B" / "checkpoints"))) == [STEPS - SAVE_EVERY, STEPS]
