"""Smoke test of ``python -m selfreward_jax.benchmark`` at toy sizes: every part runs, the table
prints, the JSON holds a result or a recorded skip reason for every side. No timing assertions."""

import json
import os
import subprocess
import sys

from conftest import REPO

TOY = ["--vocab=256", "--dim=64", "--layers=2", "--heads=4", "--seq=32", "--batch=4", "--steps=1",
       "--prompts=4", "--prompt_len=8", "--new_tokens=8", "--growth_seqs=16,32",
       "--growth_prompts=2,4", "--growth_new_tokens=4", "--growth_depths=1,2", "--peak_size=128"]


def test_benchmark_toy_run(tmp_path):
  out = tmp_path / "results.json"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS="--xla_backend_optimization_level=0")  # ~4x faster compiles; toy model
  proc = subprocess.run([sys.executable, "-m", "selfreward_jax.benchmark", *TOY, f"--out={out}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "measurement" in proc.stdout and "SFT step f32" in proc.stdout, proc.stdout
  res = json.loads(out.read_text())
  errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
  assert not errors, errors
  for key in ("sft_ours_f32", "sft_ours_bf16", "dpo_ours_f32", "dpo_ours_bf16",
              "sample_ours_float32[greedy]", "sample_ours_bfloat16[T=0.7 top-p 0.9]"):
    assert res[key]["median_s"] > 0, key
  assert res["sample_ours_float32[greedy]"]["new_tokens"] == 4 * 8
  for key in ("sft_hf_f32", "dpo_trl_f32", "sample_hf_f32[greedy]", "serve_grpc_f32[greedy]",
              "tunix"):
    assert "skipped" in res[key] or res[key], key  # a result, or the reason it was skipped
  assert 0 < res["mfu_sft_bf16"]["mfu"]
  roof = res["sampling_roofline_f32"]
  assert roof["ours_flops_per_s"] > 0 and 0 < roof["ours_fraction_of_peak"], roof
  assert "sampling roofline" in proc.stdout
  assert set(res["growth_compile_bf16"]) == {"1", "2"}
  assert res["machine"]["nproc"] >= 1 and res["machine"]["loadavg"]


def test_dpo_target_line_from_a_run_with_trl():
  """The DPO target: FLOPs per pair from our rate, the fraction of the peak 2x TRL's pairs/s
  would need, one line per dtype in the table (computed, not timed)."""
  from selfreward_jax import benchmark
  res = {"peak": {"f32_flops": 200e9, "bf16_f32acc_flops": 400e9},
         "dpo_ours_f32": {"pairs_per_s": 1.0, "model_flops_per_s": 100e9},
         "dpo_ours_bf16": {"pairs_per_s": 1.5, "model_flops_per_s": 150e9},
         "dpo_trl_f32": {"pairs_per_s": 0.6}}
  benchmark._dpo_target(res)
  f32, bf16 = res["dpo_target_f32"], res["dpo_target_bf16"]
  assert f32["flops_per_pair"] == 100e9 and bf16["flops_per_pair"] == 100e9
  assert abs(f32["ours_fraction_of_peak"] - 0.5) < 1e-12
  assert abs(f32["fraction_of_peak_for_2x_trl"] - 2 * 0.6 * 100e9 / 200e9) < 1e-12
  assert abs(bf16["fraction_of_peak_for_2x_trl"] - 2 * 0.6 * 100e9 / 400e9) < 1e-12
  no_trl = {k: v for k, v in res.items() if not k.startswith(("dpo_target", "dpo_trl"))}
  benchmark._dpo_target(no_trl)
  assert not any(k.startswith("dpo_target") for k in no_trl)
