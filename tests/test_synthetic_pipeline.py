"""The synthetic seed/M0 pipeline and the embedded default: config validation naming
``config.synthetic.<key>``, the pretraining corpus and its full-sequence loss mask, the seed
artifacts, and a shrunk default run end to end through ``main`` (seed ... iter2, eval, report) with
the report's content checked."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "synthetic_fixture.py")


def test_synthetic_config_errors_name_the_key():
  from selfreward_jax.configlib import ConfigError
  from selfreward_jax.synthetic.pipeline import SyntheticConfig, synthetic_config
  assert synthetic_config(None) == SyntheticConfig()
  cfg = synthetic_config({"n_ift": 10, "pretrain": {"train": {"num_steps": 7}}})
  assert cfg.n_ift == 10 and cfg.pretrain.train.num_steps == 7
  assert cfg.pretrain.train.max_len == SyntheticConfig().pretrain.train.max_len  # merged, not reset
  for bad, expected in [
      ({"n_ifts": 3}, r"config.synthetic.n_ifts: unknown key; allowed keys of config.synthetic"),
      ({"pretrain": {"docs": 3}}, r"config.synthetic.pretrain.docs: unknown key"),
      ({"difficulty": "easy"}, r"config.synthetic.difficulty='easy': expected an integer"),
      ({"families": ["add", "juggle"]}, r"config.synthetic: families=\['add', 'juggle'\]: unknown"),
      ({"pretrain": {"judge_share": 0.9, "task_list_share": 0.5}}, r"config.synthetic.pretrain: .*<= 1"),
  ]:
    with pytest.raises(ConfigError, match=expected):
      synthetic_config(bad)


def test_judgement_text_parses_to_its_points():
  from selfreward_jax.selfreward.judge import parse_judge_score
  from selfreward_jax.synthetic import TaskWorld
  from selfreward_jax.synthetic.pipeline import judgement_text
  task = TaskWorld(0, ["add"]).sample(1, "train")[0]
  text = judgement_text(task, "The answer is -1.", 1)
  assert text.startswith(f"A correct answer is {task.reference}. The reply says -1.")
  assert parse_judge_score(text) == 1.0
  assert "gives no answer" in judgement_text(task, "", 0)


def test_pretraining_documents_and_full_loss_mask(tmp_path):
  import collections
  from selfreward_jax.selfreward.templates import load_template
  from selfreward_jax.synthetic.pipeline import PretrainConfig, SyntheticConfig, pretraining_documents
  from selfreward_jax.synthetic.pretrain import LMDocument, tokenize_documents
  from selfreward_jax.tokenizer import train_sentencepiece
  world = SyntheticConfig().world(0)
  cfg = PretrainConfig(documents=400, judge_share=0.25, task_list_share=0.1, p_generic=0.05)
  temps = (load_template("judge_short", kind="judge"),
           load_template("self_instruct_short", kind="self_instruct"),
           load_template("self_instruct_example", kind="self_instruct_example"))
  docs = pretraining_documents(world, cfg, *temps, seed=0)
  assert docs == pretraining_documents(world, cfg, *temps, seed=0)  # deterministic
  kinds = collections.Counter(d.kind for d in docs)
  assert len(docs) == 400 and kinds["judge"] + kinds["judge_wrong"] == 100
  assert kinds["task_list"] == 40 and kinds["generic"] == 20
  assert kinds["correct"] + kinds["wrong"] == 240 and abs(kinds["correct"] - kinds["wrong"]) <= 1
  lst = next(d for d in docs if d.kind == "task_list")
  assert lst.text.startswith("Write one more task") and lst.text.count("Task:") == 9
  judge = next(d for d in docs if d.kind == "judge")
  assert "Request:" in judge.prompt and judge.response.rstrip()[-8:-1] == "Score: "
  with pytest.raises(ValueError, match="prompt\\+response or text"):
    LMDocument("x", prompt="p", response="r", text="t")
  tok = train_sentencepiece([d.text or d.prompt + " " + d.response for d in docs] * 3,
                            str(tmp_path / "tok"), vocab_size=400)
  examples, stats = tokenize_documents(docs, tok, max_len=200)
  assert stats.kept == len(examples) and stats.kept + stats.total_skipped == 400
  for ex in examples:
    assert ex.loss_mask.sum() == len(ex.ids) and ex.ids[0] == tok.bos_id and ex.ids[-1] == tok.eos_id
  chat = next(i for i, d in enumerate(docs) if d.kind == "correct")
  ids, _ = tok.encode_chat_example(docs[chat].prompt, docs[chat].response)
  assert next(ex for ex in examples if ex.line == chat).ids.tolist() == ids  # the SFT layout


def _jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  wd = tmp_path_factory.mktemp("synthetic") / "wd"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("SELFREWARD_JAX_PAUSE_AT", None)
  proc = subprocess.run([sys.executable, "-m", "selfreward_jax.main", f"--config={FIXTURE}",
                         f"--workdir={wd}"], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return wd, proc


def test_default_run_end_to_end_writes_the_report(tiny_run):
  wd, proc = tiny_run
  from selfreward_jax.eval.report import TABLE_COLUMNS
  seed = wd / "seed"
  for name in ("tokenizer.model", "ift.jsonl", "eft_groups_train.jsonl", "eft_groups_eval.jsonl",
               "eval_tasks.jsonl", "world.json"):
    assert (seed / name).exists(), name
  ift = _jsonl(seed / "ift.jsonl")
  assert len(ift) == 48 and {"prompt_id", "prompt", "response"} <= set(ift[0])
  groups = _jsonl(seed / "eft_groups_train.jsonl") + _jsonl(seed / "eft_groups_eval.jsonl")
  assert len(groups) == 16 and len(_jsonl(seed / "eft_groups_eval.jsonl")) == 4
  for g in groups:
    assert len(g["responses"]) == len(g["ranks"]) == 3 and min(g["ranks"]) == 0
  assert {g["prompt"] for g in groups}.isdisjoint({r["prompt"] for r in ift})
  assert len(_jsonl(seed / "eval_tasks.jsonl")) == 12
  assert (wd / "models" / "M0" / "llama_config.json").exists()
  assert (wd / "train" / "m0" / "metrics.jsonl").exists()

  rep = json.loads((wd / "report.json").read_text())
  assert {"table", "head_to_head", "loop", "models", "columns", "stage_seconds", "plots"} <= set(rep)
  assert [r["model"] for r in rep["table"]] == ["M0", "SFT", "M1", "M2", "M3"]
  for row in rep["table"]:
    assert list(row) == list(TABLE_COLUMNS)
    assert 0.0 <= row["oracle_accuracy"] <= 1.0 and 0.0 <= row["mean_oracle_score"] <= 1.0
    assert row["parse_rate"] is not None and row["mean_length_chars"] >= 0
  assert [r["pairs"] for r in rep["table"]][2:4] == [
      json.loads((wd / f"iter{t}" / "stats.json").read_text())["pairs"]["pairs"] for t in (1, 2)]
  comps = [(c["a"], c["b"]) for c in rep["head_to_head"]["comparisons"]]
  assert comps == [("M1", "SFT"), ("M2", "M1"), ("M3", "M2"), ("M3", "M1")]
  for c in rep["head_to_head"]["comparisons"]:
    o = c["oracle"]
    assert o["wins"] + o["ties"] + o["losses"] + o["unscored"] == o["n"] == 12
  assert [r["iteration"] for r in rep["loop"]] == [1, 2]
  assert rep["loop"][0]["valid_prompts"] is not None
  md = (wd / "report.md").read_text()
  for name in ("M0", "SFT", "M1", "M2", "M3"):
    assert f"| {name} |" in md
  assert "judge pairwise %" in md and "Head to head" in md
  for png in ("axes.png", "lengths.png", "score_histograms.png", "families.png"):
    path = wd / "plots" / png
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
  assert "oracle acc %" in proc.stdout and "M3" in proc.stdout  # the summary table at the end


def test_eval_cli_evaluates_one_checkpoint(tiny_run):
  wd, _ = tiny_run
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "selfreward_jax.eval", f"--config={FIXTURE}",
                         f"--checkpoint={wd / 'models' / 'M2'}", "--name=M2_again"],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert out["model"] == "M2_again"
  ref = json.loads((wd / "eval" / "M2" / "metrics.json").read_text())
  again = json.loads((wd / "eval" / "M2_again" / "metrics.json").read_text())
  assert again["instruction_following"] == ref["instruction_following"]  # greedy: identical
  assert again["reward_modelling"] == ref["reward_modelling"]
  bad = subprocess.run([sys.executable, "-m", "selfreward_jax.eval", f"--config={FIXTURE}",
                        f"--checkpoint={wd / 'nowhere'}"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "give --workdir" in bad.stderr
