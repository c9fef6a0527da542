"""Loop stages with a scripted generator in place of the model (fast, no JAX compilation):
the EFT agreement filter and thinning, the self-instruction rounds and their resume, over-long
inputs, and degenerate iterations."""

import json
import os

import pytest

from selfreward_jax.data.jsonl import read_jsonl, write_jsonl
from selfreward_jax.selfreward import loop
from selfreward_jax.selfreward.config import default_config_dict, run_config_from


class ScriptedRun(loop.SelfRewardingRun):
  """Answers ``_generate_text`` from a function of the prompt text (no model)."""

  def __init__(self, cfg, workdir, answer):
    super().__init__(cfg, workdir)
    self.answer = answer
    self.calls = []

  def tokenizer(self):
    class Tok:
      bos_id, eos_id = 1, 2
      def encode(self, text):
        return [ord(c) % 250 + 3 for c in text]
      def chat_prompt(self, text, system=None):
        return text  # keep the text: the scripted generator reads it
    return Tok()

  def _generate_text(self, name, prompts, num_samples, sampling, seed):
    self.calls.append((name, len(prompts)))
    return [[self.answer(p, j) for j in range(num_samples)] for p in prompts]


def _cfg(**loop_kw):
  d = default_config_dict()
  d["loop"].update(chunk_size=2, **loop_kw)
  return run_config_from(d)


def test_eft_keeps_groups_whose_score_ranking_agrees(tmp_path):
  groups = [
      {"prompt_id": "a", "prompt": "qa", "responses": ["best", "mid", "worst"], "ranks": [0, 1, 2]},
      {"prompt_id": "b", "prompt": "qb", "responses": ["best", "worst"], "ranks": [0, 1]},
      {"prompt_id": "c", "prompt": "qc", "responses": ["best", "garbled"], "ranks": [0, 1]},
  ]
  run = ScriptedRun(_cfg(), str(tmp_path), None)
  write_jsonl(run.path("seed", "eft_groups_train.jsonl"), groups)
  scores = {("qa", "best"): 5, ("qa", "mid"): 3, ("qa", "worst"): 1,  # agrees
            ("qb", "best"): 2, ("qb", "worst"): 4}                      # disagrees
  def answer(text, j):
    for (q, r), s in scores.items():
      if f"<request>{q}</request>" in text and f"<reply>{r}</reply>" in text:
        return f"Reasoning. Score: {s}"
    return "I cannot say."  # unparsable -> group c is rejected
  run.answer = answer
  stats = run.stage_eft()
  assert stats["groups"] == 3 and stats["groups_kept"] == 1 and stats["examples"] == 3
  assert stats["unparsable"] == 2  # both of group c
  examples = read_jsonl(run.path("seed", "eft_train.jsonl"))
  assert [e["response"] for e in examples] == ["Reasoning. Score: 5", "Reasoning. Score: 3", "Reasoning. Score: 1"]
  assert all("<request>qa</request>" in e["prompt"] for e in examples)


def test_thinning_drops_the_most_common_score():
  ex = [{"score": 4}] * 6 + [{"score": 3}] * 2 + [{"score": 5}]
  import numpy as np
  kept, dropped = loop._thin_most_common(ex, np.random.default_rng(0))
  assert dropped == 4 and sorted(e["score"] for e in kept) == [3, 3, 4, 4, 5]


def test_prompt_rounds_filter_count_and_resume(tmp_path):
  cfg = _cfg(num_prompts=3, max_prompt_rounds=5)
  run = ScriptedRun(cfg, str(tmp_path), None)
  write_jsonl(run.path("seed", "ift.jsonl"), [{"prompt_id": f"s{i}", "prompt": f"seed prompt number {i}",
                                               "response": "r"} for i in range(8)])
  import itertools
  outputs = itertools.chain([" Draw a picture of the sea\nTask: x", "", " Name a red fruit please",
                             " Name a red fruit please", " Count the words in this sentence", " hi",
                             " Explain why the sky is blue"], itertools.repeat(" never reached"))
  run.answer = lambda text, j: next(outputs)
  stats = run.stage_prompts(1)
  prompts = read_jsonl(run.path("iter1", "prompts.jsonl"))
  assert [p["prompt"] for p in prompts] == ["Name a red fruit please", "Count the words in this sentence",
                                            "Explain why the sky is blue"]
  assert stats["filters"] == {"empty": 1, "special": 0, "length": 1, "banned": 1, "duplicate": 1,
                              "similar": 0, "accepted": 3}
  assert stats["rounds"] == 4
  # a rerun replays the stored rounds through the filters without generating again
  run2 = ScriptedRun(cfg, str(tmp_path), lambda t, j: pytest.fail("generated again"))
  stats2 = run2.stage_prompts(1)
  assert read_jsonl(run.path("iter1", "prompts.jsonl")) == prompts and stats2["filters"] == stats["filters"]


def test_zero_pairs_end_the_iteration_with_a_clear_message(tmp_path):
  run = ScriptedRun(_cfg(), str(tmp_path), lambda t, j: "no score here")
  write_jsonl(run.path("iter1", "candidates.jsonl"),
              [{"prompt_id": "p", "prompt": "q", "candidates": ["a", "b", "", "c"], "too_long": False}])
  jstats = run.stage_judge(1)
  assert jstats["parse_rate"] == 0.0 and jstats["empty_candidates"] == 1
  assert jstats["score_histogram"]["none"] == 3 * 3
  with pytest.raises(loop.DegenerateIterationError, match="iteration 1: zero preference pairs"):
    run.stage_pairs(1)
  stats = json.load(open(run.path("iter1", "stats.json")))
  assert stats["pairs"]["pairs"] == 0 and stats["pairs"]["dropped_too_few_scored"] == 1


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  d = default_config_dict()
  d["init"]["hf_checkpoint"] = str(tmp_path / "nope")
  run = loop.SelfRewardingRun(run_config_from(d), str(tmp_path / "wd"))
  with pytest.raises(FileNotFoundError, match="config.init.hf_checkpoint: .*nope does not exist"):
    run.stage_m0()
  with pytest.raises(loop.StageError, match="model M1 is missing"):
    run.load("M1")


def test_malformed_seed_file_names_file_and_line(tmp_path):
  ift = tmp_path / "ift.jsonl"
  ift.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
  groups = tmp_path / "groups.jsonl"
  groups.write_text('{"prompt": "q", "responses": ["x", "y"], "ranks": [0]}\n')
  tok = tmp_path / "tokenizer.model"
  tok.write_bytes(b"x")
  d = default_config_dict()
  d["init"]["tokenizer"] = str(tok)
  d["data"].update(source="files", ift_path=str(ift), eft_path=str(groups))
  run = loop.SelfRewardingRun(run_config_from(d), str(tmp_path / "wd"))
  from selfreward_jax.data.jsonl import DataError
  with pytest.raises(DataError, match=r"ift.jsonl:2: field 'response': missing"):
    run.stage_seed()
  ift.write_text('{"prompt": "a", "response": "b"}\n')
  with pytest.raises(DataError, match=r"groups.jsonl:1: 'responses' has 2 items but 'ranks' has 1"):
    run.stage_seed()
