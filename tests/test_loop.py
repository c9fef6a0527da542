"""The self-rewarding loop end to end on a tiny model (``loop_fixture``), through ``main``:
artifacts and their schemas, a kill -9 inside each stage with identical artifacts after resuming,
stage selection, config errors, and degenerate iterations."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "loop_fixture.py")


def _env(root, pause=None):
  env = dict(os.environ, SRJ_TEST_ROOT=str(root), PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("SELFREWARD_JAX_PAUSE_AT", None)
  if pause:
    env["SELFREWARD_JAX_PAUSE_AT"] = pause
  return env


def _main(root, workdir, *extra, pause=None, timeout=600):
  cmd = [sys.executable, "-m", "selfreward_jax.main", f"--config={FIXTURE}", f"--workdir={workdir}", *extra]
  if pause is None:
    return subprocess.run(cmd, env=_env(root), cwd=REPO, capture_output=True, text=True, timeout=timeout)
  proc = subprocess.Popen(cmd, env=_env(root, pause), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith("PAUSED_AT"):
        os.kill(proc.pid, signal.SIGKILL)  # a real kill -9 inside the stage
        proc.wait(timeout=60)
        return line.strip()
    proc.wait(timeout=60)
    raise AssertionError(f"the run never reached {pause} (rc={proc.returncode})")
  finally:
    if proc.poll() is None:
      proc.kill()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("loop")
  workdir = root / "wd"
  proc = _main(root, workdir)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return root, workdir, proc


def _jsonl(path):
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def test_two_iterations_produce_every_artifact(full_run):
  root, wd, proc = full_run
  stages = sorted(os.listdir(wd / "stages"))
  assert len(stages) == 5 + 2 * 5 + 2  # + eval, report
  for t in (1, 2):
    it = wd / f"iter{t}"
    prompts = _jsonl(it / "prompts.jsonl")
    assert 1 <= len(prompts) <= 6 and {"prompt_id", "prompt", "source"} <= set(prompts[0])
    cands = _jsonl(it / "candidates.jsonl")
    assert [c["prompt_id"] for c in cands] == [p["prompt_id"] for p in prompts]
    assert all(len(c["candidates"]) == 3 for c in cands)
    judged = _jsonl(it / "judgements.jsonl")
    assert len(judged) == 3 * len(cands)
    for j in judged:
      assert set(j) >= {"prompt_id", "candidate_id", "judge_texts", "judge_scores", "score", "empty"}
      assert len(j["judge_texts"]) == (0 if j["empty"] else 2)
      parsed = [s for s in j["judge_scores"] if s is not None]
      assert j["score"] == (pytest.approx(sum(parsed) / len(parsed)) if parsed else None)
    pairs = _jsonl(it / "pairs.jsonl")
    assert pairs, f"iteration {t} made no pairs"
    for p in pairs:
      assert p["chosen_score"] > p["rejected_score"]
      assert set(p) >= {"prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id",
                        "chosen_judge_texts", "rejected_judge_texts"}
    stats = json.loads((it / "stats.json").read_text())
    assert set(stats) >= {"prompts", "candidates", "judge", "pairs", "dpo"}
    assert stats["pairs"]["pairs"] == len(pairs)
    assert sum(stats["prompts"]["filters"].values()) == stats["prompts"]["attempts"]
    assert set(stats["judge"]["score_histogram"]) == {"0", "1", "2", "3", "4", "5", "none"}
    assert 0.0 <= stats["judge"]["parse_rate"] <= 1.0
    assert (wd / "models" / f"M{t + 1}" / "llama_config.json").exists()
  assert "pairs" in proc.stdout and "parse_rate" in proc.stdout  # the summary table
  # a rerun finds every stage done and changes nothing
  again = _main(root, wd)
  assert again.returncode == 0 and "done already" in again.stderr


def _artifacts(wd):
  out = {}
  for t in (1, 2):
    for name in ("prompts", "candidates", "judgements", "pairs"):
      out[f"iter{t}/{name}"] = _jsonl(wd / f"iter{t}" / f"{name}.jsonl")
  for name in ("ift", "eft_train", "eft_groups_train", "eft_groups_eval"):
    out[f"seed/{name}"] = _jsonl(wd / "seed" / f"{name}.jsonl")
  return out


def _params(wd, name):
  from selfreward_jax.checkpoint.params import load_model
  _, params = load_model(str(wd / "models" / name))
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(params)]


# (the fixture's seed: iteration 1 finds its prompts in one round, iteration 2 needs two)
EVERY_STAGE = ["seed:start", "m0:start", "sft_baseline:start", "eft:start", "sft:12",
               "iter1.prompts:0", "iter1.candidates:0", "iter1.judge:0", "iter1.pairs:start",
               "iter1.dpo:2", "iter2.prompts:1", "iter2.candidates:start", "iter2.judge:0",
               "iter2.pairs:start", "iter2.dpo:3"]
# one kill inside each kind of stage (training, prompt rounds, sampling chunks) for the default run
EACH_KIND = ["sft:12", "iter1.judge:0", "iter2.prompts:1", "iter2.dpo:3"]


@pytest.mark.parametrize("kills", [
    pytest.param(EACH_KIND, id="each-kind"),
    pytest.param(EVERY_STAGE, id="every-stage", marks=pytest.mark.slow),
])
def test_kill_inside_stages_then_resume_gives_identical_artifacts(full_run, tmp_path, kills):
  root, ref_wd, _ = full_run
  wd = tmp_path / "wd"
  for point in kills:
    assert _main(root, wd, pause=point) == f"PAUSED_AT {point}"
  proc = _main(root, wd)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert _artifacts(wd) == _artifacts(ref_wd)
  for name in ("M1", "M2", "M3"):
    for a, b in zip(_params(wd, name), _params(ref_wd, name)):
      np.testing.assert_array_equal(a, b)


def test_stage_selection_and_missing_inputs(tmp_path):
  root = tmp_path
  listed = _main(root, tmp_path / "x", "--list_stages")
  assert listed.stdout.split()[:3] == ["seed", "m0", "sft_baseline"] and "iter2.dpo" in listed.stdout
  sub = _main(root, tmp_path / "x", "--list_stages", "--stages=iter1")
  assert sub.stdout.split() == [f"iter1.{s}" for s in ("prompts", "candidates", "judge", "pairs", "dpo")]
  bad = _main(root, tmp_path / "x", "--stages=iter9")
  assert bad.returncode == 2 and "unknown stage 'iter9'" in bad.stderr
  missing = _main(root, tmp_path / "y", "--stages=iter1.judge")
  assert missing.returncode == 2 and "candidates.jsonl is missing: run stage 'iter1.candidates'" in missing.stderr


def test_config_errors_name_the_key(tmp_path):
  root = tmp_path
  for override, expected in [
      ("--config.loop.num_candidates=1", "config.loop: LoopConfig.num_candidates=1: pairs need at least 2"),
      ("--config.dpo.loss_type=hinge", "DPOConfig.loss_type='hinge'; allowed"),
      ("--config.data.source=web", "SeedDataConfig.source='web'; allowed"),
      ("--config.model.preset=gpt5", "config.model.preset"),
  ]:
    proc = _main(root, tmp_path / "z", override, "--list_stages")
    assert proc.returncode == 2, (override, proc.stderr[-2000:])
    assert expected in proc.stderr, (override, proc.stderr[-2000:])


def test_unknown_config_key_is_named():
  from selfreward_jax.configlib import ConfigError
  from selfreward_jax.selfreward.config import default_config_dict, run_config_from
  d = default_config_dict()
  d["loop"]["num_candidate"] = 4
  with pytest.raises(ConfigError, match=r"config.loop.num_candidate: unknown key; allowed keys of "
                                        r"config.loop: \[.*'num_candidates'"):
    run_config_from(d)
  d = default_config_dict()
  d["sft"]["train"]["batch_size"] = "16"
  with pytest.raises(ConfigError, match=r"config.sft.train.batch_size='16': expected an integer"):
    run_config_from(d)
