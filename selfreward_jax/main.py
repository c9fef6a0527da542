"""``python -m selfreward_jax.main``: run the self-rewarding method.

  python -m selfreward_jax.main                                  # the embedded default (tiny, CPU)
  python -m selfreward_jax.main --config=configs/llama2_7b.py --workdir=/data/run1
  python -m selfreward_jax.main --config=configs/llama2_7b.py --config.loop.iterations=3 \
      --stages=iter1 --workdir=/data/run1

``--config.key=value`` overrides any key; ``--stages`` runs a subset (comma list of stage names or
prefixes, e.g. ``seed,m0`` or ``iter2``; see ``selfreward.loop``). A rerun with the same workdir
skips finished stages and resumes an unfinished one.

Multi-host (TPU pod slices, several GPU nodes): run the same command on every host; with
``--config.distributed.initialize=auto`` (default) it joins ``jax.distributed`` when the environment
names a coordinator or a multi-host TPU slice (see ``selfreward_jax.distributed``). The workdir must
be on a filesystem all hosts share.

Exit codes: 0 done; 2 bad config / input / stage selection; 3 an iteration produced nothing to
train on (zero pairs, no prompts), with the reason in the log and the stats in the workdir.
"""

from __future__ import annotations

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_config.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", DEFAULT_CONFIG, "Config file (configs/*.py); default: the embedded tiny default "
    "(selfreward_jax/default_config.py, also configs/tiny.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: ./workdir/<config name>).")
_STAGES = flags.DEFINE_string("stages", "all", "Stages to run: 'all' or a comma list of names/prefixes.")
_LIST = flags.DEFINE_bool("list_stages", False, "Print the stages of this config and exit.")

log = logging.getLogger("selfreward_jax")


def _setup_logging() -> None:
  from absl import logging as absl_logging
  root = logging.getLogger()
  root.removeHandler(absl_logging.get_absl_handler())  # one handler, one line per record
  if not any(getattr(h, "_srj", False) for h in root.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._srj = True
    root.addHandler(handler)
  root.setLevel(logging.INFO)
  for noisy in ("absl", "jax", "orbax", "tensorflow", "jetstream", "urllib3", "matplotlib"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def _tag_log_lines(tag: str) -> None:
  for h in logging.getLogger().handlers:
    if getattr(h, "_srj", False):
      h.setFormatter(logging.Formatter(f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s",
                                       "%H:%M:%S"))


def main(argv) -> int:
  del argv
  _setup_logging()
  from selfreward_jax.configlib import ConfigError
  from selfreward_jax.data.jsonl import DataError
  from selfreward_jax.selfreward import loop
  from selfreward_jax.selfreward.config import run_config_from

  cfg_dict = _CONFIG.value
  path = flags.FLAGS["config"].config_filename
  name = "tiny" if os.path.abspath(path) == DEFAULT_CONFIG else os.path.splitext(os.path.basename(path))[0]
  try:
    cfg = run_config_from(cfg_dict)
    stages = loop.select_stages(_STAGES.value, cfg.loop.iterations)
  except (ConfigError, loop.StageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if _LIST.value:
    print("\n".join(stages))
    return 0
  from selfreward_jax import distributed
  if distributed.initialize(cfg.distributed):
    _tag_log_lines(f"[process {distributed.process_index()}] ")
  workdir = _WORKDIR.value or os.path.join("workdir", name)
  log.info("run %s in %s: stages %s", name, os.path.abspath(workdir), ",".join(stages))
  try:
    distributed.check_shared_dir(workdir)
  except RuntimeError as e:
    log.error("%s", e)
    return 2
  run = loop.SelfRewardingRun(cfg, workdir)
  try:
    run.run(stages)
  except loop.DegenerateIterationError as e:
    log.error("%s", e)
    return 3
  except (loop.StageError, DataError, FileNotFoundError, ConfigError) as e:
    log.error("%s", e)
    return 2
  finally:
    run.close()
  if distributed.is_writer():
    run.print_summary()
  return 0


def _entry(argv):
  sys.exit(main(argv))


if __name__ == "__main__":
  app.run(_entry)
