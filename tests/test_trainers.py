"""SFT and DPO trainers end to end on a tiny model: SFT overfits a handful of examples, packing
gives the same loss, DPO drives reward accuracy to 1 with a growing margin, the precomputed and
in-step references agree, bad input is reported or skipped, a NaN stops training with the last
good checkpoint intact. Each trainer's kept/skipped log line agrees with its data_stats.json."""

import json
import logging
import os
import re

import jax
import numpy as np
import pytest

from selfreward_jax.data.jsonl import DataError
from selfreward_jax.train import state as st
from selfreward_jax.train.checkpoints import Checkpointer, load_trained_params
from selfreward_jax.train.config import DPOConfig, SFTConfig, TrainConfig
from selfreward_jax.train.dpo import train_dpo
from selfreward_jax.train.loop import NonFiniteLossError
from selfreward_jax.train.metrics import read_metrics
from selfreward_jax.train.optim import OptimConfig, make_optimizer
from selfreward_jax.train.sft import train_sft
from test_train_support import (FAST, init_params, make_tokenizer, pair_records, sft_records,
                                tiny_config, write_lines)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  d = tmp_path_factory.mktemp("trainers")
  tok = make_tokenizer(str(d))
  return d, tok, tiny_config(tok.vocab_size)


def train_config(**kw):
  base = dict(batch_size=4, max_len=128, buckets=(128,), dropout_rate=0.0, save_every=1000,
              progress=False, tensorboard=False, compiler_options=FAST)
  return TrainConfig(**{**base, **kw})


CONST = OptimConfig(learning_rate=3e-3, end_learning_rate=3e-3)

_COUNTS = re.compile(r"(?P<path>.*): (?:(?P<none>\d+) examples, none skipped|"
                     r"kept (?P<kept>\d+) of (?P<total>\d+) examples; skipped (?P<detail>.*))$")


def logged_counts(caplog, data_path):
  """(kept, {reason: count}) from the one data log line the trainer wrote about ``data_path``."""
  found = [m for r in caplog.records if r.name.startswith("selfreward_jax.train")
           for m in [_COUNTS.match(r.getMessage())] if m and m["path"] == str(data_path)]
  assert len(found) == 1, [r.getMessage() for r in caplog.records]
  m = found[0]
  if m["none"] is not None:
    return int(m["none"]), {}
  skipped = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+) \(e\.g\. lines", m["detail"])}
  assert int(m["kept"]) + sum(skipped.values()) == int(m["total"]), m.group(0)
  return int(m["kept"]), skipped


def assert_log_matches_data_stats(caplog, data_path, workdir):
  """The trainer's log line and ``<workdir>/data_stats.json`` report the same counts."""
  stats = json.loads((workdir / "data_stats.json").read_text())
  assert stats["path"] == str(data_path)
  assert logged_counts(caplog, data_path) == (stats["kept"], stats["skipped"])
  caplog.clear()


def tensorboard_tags(directory):
  """Scalar tags in the TensorBoard event files of ``directory`` (TFRecord framing + Event)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  tags = set()
  for name in os.listdir(directory):
    data = (directory / name).read_bytes()
    i = 0
    while i < len(data):
      n = int.from_bytes(data[i:i + 8], "little")
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      tags |= {v.tag for v in event.summary.value}
      i += 12 + n + 4
  return tags


def test_sft_overfits_packing_agrees_and_a_finished_run_is_not_redone(env, caplog):
  caplog.set_level(logging.INFO)
  d, tok, config = env
  data = write_lines(d / "sft.jsonl", sft_records(4))
  params = train_sft(config, init_params(config), tok, str(data),
                     SFTConfig(train=train_config(num_steps=70, save_every=35), optim=CONST),
                     str(d / "sft"), export_hf=True)
  losses = [r["loss"] for r in read_metrics(str(d / "sft"))]
  assert len(losses) == 70 and losses[0] > 4.0
  assert losses[-1] < 0.05, losses[::10]
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  from selfreward_jax.checkpoint.hf import load_hf_checkpoint  # pylint: disable=g-import-not-at-top
  hf_config, hf_params = load_hf_checkpoint(str(d / "sft" / "hf"))
  assert hf_config.vocab_size == config.vocab_size and (d / "sft" / "hf" / "tokenizer.model").exists()
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(hf_params),
                                                  jax.tree.leaves(params)))
  loaded = load_trained_params(str(d / "sft"), config)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)))
  summary = json.loads((d / "sft" / "summary.json").read_text())
  assert summary["total_steps"] == 70 and summary["checkpoints"] == [35, 70]
  assert json.loads((d / "sft" / "data_stats.json").read_text())["kept"] == 4
  assert_log_matches_data_stats(caplog, data, d / "sft")

  # rerunning a finished run restores its final params and trains nothing
  calls = []
  again = train_sft(config, init_params(config, seed=9), tok, str(data),
                    SFTConfig(train=train_config(num_steps=70, save_every=35), optim=CONST),
                    str(d / "sft"), on_step=lambda *a: calls.append(a))
  assert not calls
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))

  # one packed row holding all 4 examples (~65 tokens each) sees the same target tokens as the
  # first unpacked batch of 4, so its first loss is the same token-mean NLL
  train_sft(config, init_params(config), tok, str(data),
            SFTConfig(train=train_config(batch_size=1, num_steps=1, buckets=(128, 320)),
                      optim=CONST, pack=True), str(d / "packed"))
  (packed,) = read_metrics(str(d / "packed"))
  assert packed["n_tokens"] > 240  # all four examples in the row
  np.testing.assert_allclose(packed["loss"], losses[0], rtol=1e-5)


def test_dpo_reaches_full_accuracy_with_growing_margin_and_references_agree(env, caplog):
  caplog.set_level(logging.INFO)
  d, tok, config = env
  long = " ".join(["the cat"] * 100)
  recs = pair_records(4) + [{"prompt": "a", "chosen": "same", "rejected": " same "},
                            {"prompt": "a", "chosen": "", "rejected": "b"},
                            {"prompt": long, "chosen": "x", "rejected": "y"}]
  data = write_lines(d / "pairs.jsonl", recs)
  dpo = DPOConfig(train=train_config(num_steps=30),
                  optim=OptimConfig(learning_rate=1e-3, schedule="constant"))
  exported = []
  train_dpo(config, init_params(config), tok, str(data),
            dpo.replace(train=dpo.train.replace(tensorboard=True, progress=True)), str(d / "dpo"),
            export_hf=lambda *a: exported.append(a))
  (path, cfg, p), = exported
  assert path == str(d / "dpo" / "hf") and cfg == config
  assert {"dpo/loss", "dpo/reward_accuracy", "dpo/reward_margin", "dpo/lr", "dpo/grad_norm",
          "dpo/tokens_per_s"} <= tensorboard_tags(d / "dpo" / "tb")
  stats = json.loads((d / "dpo" / "data_stats.json").read_text())
  assert stats["kept"] == 4
  assert stats["skipped"] == {"identical_pair": 1, "empty_response": 1, "too_long": 1}
  assert_log_matches_data_stats(caplog, data, d / "dpo")
  m = read_metrics(str(d / "dpo"))
  # step 1: policy == reference (precomputed in another batch layout): loss log 2, margin 0
  np.testing.assert_allclose(m[0]["loss"], np.log(2), atol=1e-4)
  assert abs(m[0]["reward_margin"]) < 1e-4
  margins = [r["reward_margin"] for r in m]
  assert m[-1]["reward_accuracy"] == 1.0 and all(r["reward_accuracy"] == 1.0 for r in m[5:])
  assert 0 < margins[3] < margins[10] < margins[-1], margins
  assert m[-1]["loss"] < 0.05
  for k in ("chosen_reward", "rejected_reward", "lr", "grad_norm", "tokens_per_s"):
    assert k in m[-1]
  with np.load(d / "dpo" / "reference_logps.npz") as z:
    assert z["chosen"].shape == (4,) and (z["chosen"] < 0).all()
    np.testing.assert_array_equal(z["lines"], [1, 2, 3, 4])

  # the in-step reference (a frozen copy of the initial params) gives the same curve
  train_dpo(config, init_params(config), tok, str(data),
            dpo.replace(reference="in_step", train=dpo.train.replace(num_steps=3)),
            str(d / "dpo_in_step"))
  m2 = read_metrics(str(d / "dpo_in_step"))
  np.testing.assert_allclose([r["loss"] for r in m2], [r["loss"] for r in m[:3]], rtol=1e-4,
                             atol=1e-5)


def test_malformed_line_is_reported_with_file_and_line_before_training(env, caplog):
  caplog.set_level(logging.INFO)
  d, tok, config = env
  path = write_lines(d / "bad.jsonl", sft_records(2) + ['{"prompt": "a", "response": '])
  with pytest.raises(DataError, match=r"bad.jsonl:3: invalid JSON"):
    train_sft(config, init_params(config), tok, str(path), SFTConfig(train=train_config()),
              str(d / "bad"))
  assert not (d / "bad" / "checkpoints").exists()
  empty = write_lines(d / "empty.jsonl", [{"prompt": "a", "response": " "}])
  with pytest.raises(ValueError, match="no examples to train on"):
    train_sft(config, init_params(config), tok, str(empty), SFTConfig(train=train_config()),
              str(d / "empty"))
  assert json.loads((d / "empty" / "data_stats.json").read_text())["skipped"] == {
      "empty_response": 1}
  assert_log_matches_data_stats(caplog, empty, d / "empty")
  pairs = write_lines(d / "badpairs.jsonl", pair_records(2) + [{"prompt": "a", "chosen": 1,
                                                                 "rejected": "b"}])
  with pytest.raises(DataError, match=r"badpairs.jsonl:3: field 'chosen': expected str"):
    train_dpo(config, init_params(config), tok, str(pairs), DPOConfig(train=train_config()),
              str(d / "badpairs"))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(env):
  d, tok, config = env
  data = write_lines(d / "sft_nan.jsonl", sft_records(4, seed=1))
  workdir = str(d / "nan")
  good = train_sft(config, init_params(config), tok, str(data),
                   SFTConfig(train=train_config(num_steps=2, save_every=1), optim=CONST), workdir)
  good = jax.tree.map(np.asarray, good)
  # resume the same run for 2 more steps with an absurd learning rate: the first update explodes
  boom = OptimConfig(learning_rate=1e30, end_learning_rate=1e30)
  with pytest.raises(NonFiniteLossError, match=r"step 3 .*Last good checkpoint: step 2") as e:
    train_sft(config, init_params(config), tok, str(data),
              SFTConfig(train=train_config(num_steps=4, save_every=1), optim=boom), workdir)
  assert e.value.step == 3 and e.value.last_checkpoint_step == 2
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
  tx, _ = make_optimizer(CONST, 2)
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ck:
    assert ck.all_steps() == [1, 2]
    from selfreward_jax import sharding as shd  # pylint: disable=g-import-not-at-top
    sh = st.state_shardings(config, tx, shd.make_mesh(shd.MeshConfig(1, 1, 1)))
    restored, meta = ck.restore(2, st.abstract_state(config, tx, sh))
  assert int(restored.step) == 2 and meta["data_position"] == {"epoch": 2, "index": 0}
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored.params),
                                                  jax.tree.leaves(good)))
