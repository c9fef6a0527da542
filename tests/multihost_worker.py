"""One JAX process of the multi-host test (``test_multihost.py``); not a test module.

  python tests/multihost_worker.py WORKDIR NUM_PROCESSES PROCESS_ID PORT

With NUM_PROCESSES > 1 it joins ``jax.distributed`` on 127.0.0.1:PORT with 8 / NUM_PROCESSES fake
CPU devices, so the processes form one global mesh of 8 devices; with 1 it runs alone on 8
devices. On the (data 2, fsdp 2, tensor 2) mesh it: trains SFT for 3 steps from a seeded init
(checkpoints at steps 2 and 3), resumes the same run to 5 steps, saves and reloads the model with
``save_model``/``load_model``, samples greedy and T=0.7/top-p 0.9 continuations with the
``Sampler`` (on the training mesh and on a mesh with one params replica per host), writes a shared JSON file and an HF export (process 0 writes), and records everything
in ``WORKDIR/result-<process>.json``. ``WORKDIR`` holds ``tok.model`` and ``sft.jsonl`` (made by the
test).
"""

import json
import os
import sys

workdir, nproc, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // nproc}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from selfreward_jax import distributed  # noqa: E402

multi = distributed.initialize(distributed.DistributedConfig(
    initialize="yes" if nproc > 1 else "no", coordinator_address=f"127.0.0.1:{port}",
    num_processes=nproc, process_id=pid, timeout_s=120))

from selfreward_jax import sharding as shd  # noqa: E402
from selfreward_jax.checkpoint.hf import save_hf_checkpoint  # noqa: E402
from selfreward_jax.checkpoint.params import load_model, save_model  # noqa: E402
from selfreward_jax.data.jsonl import read_json, write_json  # noqa: E402
from selfreward_jax.model import llama  # noqa: E402
from selfreward_jax.sampling.sampler import Sampler  # noqa: E402
from selfreward_jax.tokenizer import Tokenizer  # noqa: E402
from selfreward_jax.train.config import SFTConfig, TrainConfig  # noqa: E402
from selfreward_jax.train.optim import OptimConfig  # noqa: E402
from selfreward_jax.train.sft import train_sft  # noqa: E402

FAST = {"xla_backend_optimization_level": 0}


def checksums(params):
  sums = jax.jit(lambda p: [jax.numpy.sum(x.astype(jax.numpy.float32) ** 2)
                            for x in jax.tree.leaves(p)],
                 out_shardings=shd.replicated(mesh))(params)
  return [float(s) for s in jax.device_get(sums)]


def sft_config(steps):
  return SFTConfig(train=TrainConfig(
      batch_size=8, max_len=64, buckets=(64,), dropout_rate=0.0, num_steps=steps, save_every=2,
      progress=False, tensorboard=False, compiler_options=FAST, async_checkpointing=False),
      optim=OptimConfig(learning_rate=3e-3, end_learning_rate=3e-3, warmup_steps=0))


assert jax.device_count() == 8 and jax.process_count() == nproc, (jax.device_count(), nproc)
mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
tok = Tokenizer(os.path.join(workdir, "tok.model"))
config = llama.LlamaConfig.tiny(vocab_size=tok.vocab_size)
out_dir = os.path.join(workdir, f"run{nproc}")
result = {"process": jax.process_index(), "multi": multi,
          "local_rows": list(distributed.process_rows(mesh, 8)), "losses": {}}


def on_step(step, metrics):
  result["losses"][str(step)] = metrics["loss"]


params = shd.init_sharded_params(config, jax.random.key(0), mesh)
params = train_sft(config, params, tok, os.path.join(workdir, "sft.jsonl"), sft_config(3),
                   workdir=os.path.join(out_dir, "sft"), mesh=mesh, on_step=on_step)
result["checksums_3"] = checksums(params)
del params
params = train_sft(config, None, tok, os.path.join(workdir, "sft.jsonl"), sft_config(5),
                   workdir=os.path.join(out_dir, "sft"), mesh=mesh, on_step=on_step)
result["checksums_5"] = checksums(params)

save_model(os.path.join(out_dir, "model"), config, params)
_, loaded = load_model(os.path.join(out_dir, "model"), mesh)
result["checksums_loaded"] = checksums(loaded)

sampler = Sampler(config, loaded, max_concurrent=4, max_prefill_length=32, max_decode_length=48,
                  mesh=mesh, steps_per_sync=4)
prompts = [tok.encode(t, bos=True) for t in
           ("the cat runs", "a big red house near the river", "yes", "one two three four five")]
result["greedy"] = sampler.generate(prompts, max_new_tokens=10)
result["sampled"] = sampler.generate(prompts, max_new_tokens=10, num_samples=3, temperature=0.7,
                                     top_p=0.9, seed=1)

# a sampling mesh with one replica of the params per host (tensor parallel inside it): the decode
# slots are split over the hosts; the params are resharded from the training mesh
smesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=1, tensor=4))
replicas = jax.device_put(loaded, shd.param_shardings(config, smesh))
result["replica_rows"] = list(distributed.process_rows(smesh, 4))
sampler = Sampler(config, replicas, max_concurrent=4, max_prefill_length=32, max_decode_length=48,
                  mesh=smesh, steps_per_sync=4)
result["sampled_replicas"] = sampler.generate(prompts, max_new_tokens=10, num_samples=3,
                                              temperature=0.7, top_p=0.9, seed=1)

write_json(os.path.join(out_dir, "shared.json"), {"written_by": jax.process_index()})
result["shared_json_seen"] = read_json(os.path.join(out_dir, "shared.json"))
save_hf_checkpoint(os.path.join(out_dir, "hf"), config, loaded, overwrite=True)
result["gathered"] = distributed.allgather_json({"p": jax.process_index()})
distributed.check_shared_dir(out_dir)  # shared: passes
try:  # a directory per process, as on hosts with local disks only
  distributed.check_shared_dir(os.path.join(workdir, f"local-{nproc}-{jax.process_index()}"))
  result["unshared_error"] = None
except RuntimeError as e:
  result["unshared_error"] = str(e)

with open(os.path.join(workdir, f"result-{nproc}-{jax.process_index()}.json"), "w") as f:
  json.dump(result, f)
print("done", jax.process_index(), flush=True)
