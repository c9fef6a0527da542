"""Every public name resolves, and importing the package stays cheap (no JetStream/TensorFlow)."""

import subprocess
import sys

import selfreward_jax
from conftest import REPO


def test_every_exported_name_resolves():
  for name in selfreward_jax.__all__:
    assert getattr(selfreward_jax, name) is not None, name


def test_import_does_not_pull_jetstream_or_tensorflow():
  code = ("import sys, selfreward_jax; from selfreward_jax import LlamaConfig, forward, train_sft; "
          "bad = [m for m in ('jetstream', 'tensorflow', 'seqio') if m in sys.modules]; "
          "print(bad); sys.exit(1 if bad else 0)")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
