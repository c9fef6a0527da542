"""``python -m selfreward_jax.eval``: evaluate one checkpoint standalone.

  python -m selfreward_jax.eval --checkpoint=workdir/tiny/models/M2
  python -m selfreward_jax.eval --config=configs/llama2_7b.py --checkpoint=/data/my-hf-model \
      --workdir=/data/sr7b --name=mine

The checkpoint is a model directory of a run (``save_model`` format) or an HF directory. Its
workdir (default: the run that holds it, ``<workdir>/models/<name>``) provides the tokenizer and the
eval sets; the ``seed`` stage is run there first if it has not been. Results go to
``<workdir>/eval/<name>/`` (see ``eval.evaluate``) and a summary is printed as JSON. A checkpoint
already evaluated under that name is reused unless ``--overwrite``.
"""

from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json
import os
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); default: the embedded tiny default.",
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model directory to evaluate.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with the seed data (default: the run "
                               "holding --checkpoint).")
_NAME = flags.DEFINE_string("name", None, "Name of the model in the results (default: the "
                            "checkpoint directory's name).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-evaluate even if results exist.")


def _workdir_of(checkpoint: str) -> str:
  parent = os.path.dirname(os.path.abspath(checkpoint))
  if os.path.basename(parent) == "models":
    return os.path.dirname(parent)
  raise ValueError(f"--checkpoint={checkpoint} is not inside a run's models/ directory: "
                   "give --workdir")


def _load(path: str, mesh):
  from selfreward_jax.checkpoint import params as ckpt  # pylint: disable=g-import-not-at-top
  from selfreward_jax.selfreward import seed_data  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(path, seed_data.LINK_FILE)):
    return seed_data.load_linked(path, mesh)
  if ckpt.is_model_dir(path):
    return ckpt.load_model(path, mesh)
  from selfreward_jax.checkpoint.hf import load_hf_checkpoint  # pylint: disable=g-import-not-at-top
  return load_hf_checkpoint(path, mesh=mesh)


def summary(metrics: dict) -> dict:
  """The headline numbers of ``evaluate_model``'s metrics."""
  g = lambda *ks: _dig(metrics, ks)
  return {"model": metrics.get("model"),
          "oracle_accuracy": g("instruction_following", "accuracy"),
          "mean_oracle_score": g("instruction_following", "mean_score"),
          "pairwise_accuracy": g("reward_modelling", "pairwise_accuracy"),
          "five_best": g("reward_modelling", "five_best"),
          "exact_match": g("reward_modelling", "exact_match"),
          "spearman": g("reward_modelling", "spearman"),
          "kendall_tau": g("reward_modelling", "kendall_tau"),
          "parse_rate": g("judge", "parse_rate"),
          "mean_length_chars": g("responses", "mean_length_chars"),
          "alpaca_eval_outputs": metrics.get("alpaca_eval_outputs")}


def _dig(d, keys):
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def main(argv) -> int:
  del argv
  from selfreward_jax.configlib import ConfigError  # pylint: disable=g-import-not-at-top
  from selfreward_jax.eval import evaluate  # pylint: disable=g-import-not-at-top
  from selfreward_jax.selfreward import loop  # pylint: disable=g-import-not-at-top
  from selfreward_jax.selfreward.config import run_config_from  # pylint: disable=g-import-not-at-top
  cfg_dict = _CONFIG.value
  if cfg_dict is None:
    from selfreward_jax import default_config  # pylint: disable=g-import-not-at-top
    cfg_dict = default_config.get_config()
  checkpoint = os.path.abspath(_CHECKPOINT.value)
  try:
    cfg = run_config_from(cfg_dict)
    workdir = _WORKDIR.value or _workdir_of(checkpoint)
  except (ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not os.path.isdir(checkpoint):
    print(f"error: --checkpoint={checkpoint} does not exist", file=sys.stderr)
    return 2
  name = _NAME.value or os.path.basename(checkpoint.rstrip("/"))
  run = loop.SelfRewardingRun(cfg, workdir)
  try:
    if not run.done("seed"):
      run.run(["seed"])
    out_dir = run.path(evaluate.EVAL_DIR, name)
    if _OVERWRITE.value and os.path.isdir(out_dir):
      shutil.rmtree(out_dir)
    if os.path.abspath(run.model_dir(name)) != checkpoint:
      config, params = _load(checkpoint, run.mesh)
      run._current = (name, config, params)  # pylint: disable=protected-access
    metrics = evaluate.evaluate_model(run, name, evaluate.eval_config(run))
  finally:
    run.close()
  print(json.dumps(summary(metrics), indent=1))
  return 0


def _entry(argv):
  sys.exit(main(argv))


if __name__ == "__main__":
  app.run(_entry)
