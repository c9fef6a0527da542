"""The notebooks run top to bottom (nbclient, the python3 kernel of this interpreter) on their
tiny settings, and are stored with outputs cleared. The quickstart runs exactly as a user would
run it (its own ``FAST`` settings) and must reach DPO: iteration 1 makes preference pairs, M2 is
trained, and the report has a row for each of M0, SFT, M1 and M2."""

import glob
import json
import os
import sys
import time

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = ("quickstart.ipynb", "hf_judge_and_sample.ipynb")
TIMEOUT_S = 300  # per cell; hf_judge_and_sample takes ~30-60 s on 2 CPU cores, quickstart ~1-2.5 min


def _kernel_name() -> str:
  """The python3 kernel, checked to run this interpreter (else a kernelspec for it is written)."""
  from jupyter_client.kernelspec import KernelSpecManager
  ksm = KernelSpecManager()
  try:
    spec = ksm.get_kernel_spec("python3")
    argv0 = spec.argv[0]
    if argv0 in ("python", "python3") or os.path.realpath(argv0) == os.path.realpath(sys.executable):
      return "python3"
  except Exception:
    pass
  from ipykernel.kernelspec import install
  install(user=True, kernel_name="srj-test", display_name="selfreward_jax tests")
  return "srj-test"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (name, cell.source[:60])
  assert "colab.research.google.com/github/" in nb.cells[0].source
  assert f"notebooks/{name}" in nb.cells[0].source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
  # the kernel inherits this environment: the repo importable, CPU only, its own temp dir
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("TMPDIR", str(tmp_path))
  # the kernel is `python`: make sure that is this interpreter
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name=_kernel_name(), timeout=TIMEOUT_S,
                                   resources={"metadata": {"path": str(tmp_path)}})
  start = time.perf_counter()
  client.execute()
  seconds = time.perf_counter() - start
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.get("output_type") == "stream")
  assert "selfreward_jax from" in text
  if name == "quickstart.ipynb":
    _check_quickstart_reached_dpo(tmp_path, text)
  else:
    assert "scores [" in text and "->" in text
  print(f"{name}: {seconds:.0f} s")


def _check_quickstart_reached_dpo(tmp_path, text: str) -> None:
  """Iteration 1 of the quickstart's run (its workdir under the kernel's TMPDIR) made pairs and
  trained M2 on them, and the report compares M0, SFT, M1 and M2."""
  assert "stopped early" not in text, text[-2000:]
  workdirs = glob.glob(os.path.join(str(tmp_path), "selfreward_quickstart*"))
  assert len(workdirs) == 1, workdirs
  with open(os.path.join(workdirs[0], "iter1", "stats.json")) as f:
    stats = json.load(f)
  assert stats["pairs"]["pairs"] > 0, stats["pairs"]
  assert stats["dpo"]["data"]["kept"] > 0, stats["dpo"]
  with open(os.path.join(workdirs[0], "report.json")) as f:
    rows = {r["model"]: r for r in json.load(f)["table"]}
  assert list(rows) == ["M0", "SFT", "M1", "M2"], list(rows)
  assert rows["M1"]["pairs"] == stats["pairs"]["pairs"]
  assert f"iter1: {stats['pairs']['pairs']} preference pairs -> DPO -> M2" in text
  print(f"quickstart: {stats['pairs']['pairs']} pairs, judge parse rate "
        f"{stats['judge']['parse_rate']:.2f}; oracle accuracy "
        + ", ".join(f"{m} {r['oracle_accuracy']:.3f}" for m, r in rows.items()))
