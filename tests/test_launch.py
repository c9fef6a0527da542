"""Launch scripts: shellcheck clean, and their dry runs print exactly the gcloud commands."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = [os.path.join(REPO, "launch", n) for n in ("tpu.sh", "common.sh", "gpu_bench.sh")]
TPU = os.path.join(REPO, "launch", "tpu.sh")


def _shellcheck():
  path = shutil.which("shellcheck")
  if path:
    return path
  if os.geteuid() == 0 and shutil.which("apt-get"):  # CI runs as root on Debian
    subprocess.run("apt-get update -qq && apt-get install -y -qq shellcheck", shell=True,
                   capture_output=True, timeout=300)
  return shutil.which("shellcheck")


def test_shellcheck():
  sc = _shellcheck()
  if sc is None:
    pytest.skip("shellcheck is not installed and could not be installed with apt-get")
  out = subprocess.run([sc, "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


def _dry(*args, env=None):
  e = {k: v for k, v in os.environ.items() if k not in (
      "PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR_TYPE", "CONFIG", "WORKDIR", "MAIN_ARGS", "SPOT",
      "RUNTIME_VERSION", "SHARED_DIR")}
  e["DRY_RUN"] = "1"
  e.update(env or {})
  out = subprocess.run(["bash", TPU, *args], cwd=REPO, capture_output=True, text=True, env=e,
                       timeout=60)
  return out


def _commands(stdout):
  lines = [ln for ln in stdout.splitlines() if ln.startswith("+ ")]
  return [shlex.split(ln[2:]) for ln in lines]


def test_dry_run_up_and_delete_prints_every_command():
  out = _dry("--project", "proj", "--zone", "us-central2-b", "--accelerator", "v4-128", "--name",
             "sr70", "--config", "configs/llama2_70b.py", "--workdir", "gs://bkt/sr70",
             "--args", "--stages=iter1", "--spot", "up", "delete")
  assert out.returncode == 0, out.stderr
  cmds = _commands(out.stdout)
  where = ["--project=proj", "--zone=us-central2-b"]
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  assert cmds[0] == tpu + ["create", "sr70", *where, "--accelerator-type=v4-128",
                           "--version=tpu-ubuntu2204-base", "--spot"]
  assert cmds[1][:2] == ["git", "-C"] and "archive" in cmds[1]
  assert cmds[2] == tpu + ["scp", "/tmp/selfreward_jax-src.tar.gz", "sr70:selfreward_jax-src.tar.gz",
                           *where, "--worker=all"]
  assert cmds[3][:9] == tpu + ["ssh", "sr70", *where, "--worker=all"]
  assert "pip install" in cmds[3][9] and "jax[tpu]" in cmds[3][9] and "-e ./selfreward_jax" in cmds[3][9]
  assert cmds[4] == tpu + ["scp", "configs/llama2_70b.py", "sr70:selfreward_run_config.py", *where,
                           "--worker=all"]
  assert cmds[5][8] == "--worker=0" and "gcloud storage rsync -r gs://bkt/sr70 workdir/sr70" in cmds[5][9]
  run = cmds[6][9]
  assert cmds[6][8] == "--worker=all" and run.startswith("--command=nohup bash -c ")
  assert ("venv/bin/python -m selfreward_jax.main --config=selfreward_run_config.py "
          "--workdir=workdir/sr70 --config.distributed.initialize=yes --stages=iter1;") in run
  assert "gcloud storage rsync -r workdir/sr70 gs://bkt/sr70" in run and "> selfreward_run.log" in run
  subprocess.run(["bash", "-n", "-c", run[len("--command="):]], check=True)  # valid shell
  assert cmds[7] == tpu + ["ssh", "sr70", *where, "--worker=0",
                           "--command=tail -n +1 -F selfreward_run.log"]
  assert cmds[8] == tpu + ["delete", "sr70", *where, "--quiet"]
  assert len(cmds) == 9


def test_shared_dir_is_the_workdir_of_every_worker_without_rsync():
  out = _dry("--project", "p", "--zone", "z", "--accelerator", "v4-32", "--name", "n",
             "--shared-dir", "/mnt/nfs/run1", "run")
  assert out.returncode == 0, out.stderr
  (cmd,) = _commands(out.stdout)
  assert cmd[8] == "--worker=all" and "rsync" not in cmd[9]
  assert ("--workdir=/mnt/nfs/run1 --config.distributed.initialize=yes' > selfreward_run.log"
          in cmd[9])
  bad = _dry("--project", "p", "--zone", "z", "--shared-dir", "/mnt/x", "--workdir", "gs://b/x",
             "run")
  assert bad.returncode != 0 and "exclude each other" in bad.stderr


def test_env_configures_and_dry_run_flag():
  """Settings from the environment; ``--dry-run`` wins over DRY_RUN=0."""
  out = _dry("--dry-run", "run", env={"PROJECT": "p", "ZONE": "z", "TPU_NAME": "n",
                                       "WORKDIR": "/data/run", "DRY_RUN": "0"})
  assert out.returncode == 0, out.stderr
  (cmd,) = _commands(out.stdout)
  assert cmd[4:8] == ["ssh", "n", "--project=p", "--zone=z"]
  assert "--workdir=/data/run --config.distributed.initialize=yes' > selfreward_run.log 2>&1 &" in cmd[-1]
  assert "rsync" not in cmd[-1]


def test_usage_errors():
  out = _dry("create")
  assert out.returncode == 2 and "PROJECT is not set" in out.stderr
  out = _dry("--project", "p", "--zone", "z", "explode")
  assert out.returncode == 2 and "unknown step explode" in out.stderr
  out = _dry("--project", "p", "--zone", "z", "--bogus", "create")
  assert out.returncode == 2 and "unknown flag --bogus" in out.stderr
  out = _dry("--help")
  assert out.returncode == 0 and "STEP" in out.stdout


def test_gpu_bench_run_uses_the_seqio_stub_and_writes_results(tmp_path):
  """launch/gpu_bench.sh run, here on the CPU at toy sizes and the sampling part only (the one
  that imports JetStream): the seqio stand-in shadows seqio, the JSON holds our results only."""
  import json
  from test_benchmark import TOY
  env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_backend_optimization_level=0",
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
             BENCH_ARGS=" ".join(TOY + ["--only=sampling", "--sample_repeats=1"]))
  out = subprocess.run(["bash", "launch/gpu_bench.sh", "run"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "launch/gpu_stubs/seqio" in (tmp_path / "devices.txt").read_text()
  res = json.loads((tmp_path / "gpu.json").read_text())
  assert res["sample_ours_float32[greedy]"]["new_tokens"] == 4 * 8
  assert "skipped" in res["sample_hf_f32[greedy]"]
  assert (tmp_path / "gpu.txt").exists() and (tmp_path / "nvidia-smi.txt").exists()
  bad = subprocess.run(["bash", "launch/gpu_bench.sh"], cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and "usage" in bad.stderr
