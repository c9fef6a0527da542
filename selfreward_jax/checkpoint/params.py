"""Model checkpoints of the run (M0, M1, ...): params only, with their ``LlamaConfig``.

Layout of a model directory::

  <dir>/llama_config.json   the LlamaConfig fields
  <dir>/params/             an orbax (tensorstore) checkpoint of the param pytree

Saving is atomic at the directory level: everything is written into ``<dir>.tmp-*`` and renamed
into place, so a killed process never leaves a directory that looks finished. Loading restores
onto a mesh with the param shardings of ``sharding.param_shardings`` (any mesh, not just the one
that saved). ``load_model`` also accepts an HF directory (config.json + safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from selfreward_jax import distributed
from selfreward_jax import sharding as shd
from selfreward_jax.model import llama

CONFIG_FILE = "llama_config.json"


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(os.path.join(path, "params"))


def save_model(path: str, config: llama.LlamaConfig, params: Any) -> str:
  """Writes ``config`` and ``params`` (any sharding) to ``path`` atomically; returns ``path``.

  In a multi-process run every process must call it with the same ``path`` (on a shared
  filesystem): orbax writes each process's shards, process 0 writes the config and renames the
  directory into place, and all processes return once it is there.
  """
  path = os.path.abspath(os.fspath(path))
  parent = os.path.dirname(path)
  multi, writer = distributed.is_multiprocess(), distributed.is_writer()
  if writer:
    os.makedirs(parent, exist_ok=True)
  if multi:  # one temp directory that every process names the same way
    tmp = path + ".tmp-multiprocess"
    if writer:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
    distributed.barrier(f"save_model start {os.path.basename(path)}")
  else:
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-", dir=parent)
  try:
    if writer:
      with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
    ckptr = ocp.StandardCheckpointer()
    try:
      ckptr.save(os.path.join(tmp, "params"), params)
      ckptr.wait_until_finished()
    finally:
      ckptr.close()
    distributed.barrier(f"save_model saved {os.path.basename(path)}")
    if writer:
      if os.path.exists(path):
        shutil.rmtree(path)
      os.replace(tmp, path)
    distributed.barrier(f"save_model done {os.path.basename(path)}")
  except BaseException:
    if writer:
      shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def load_config(path: str) -> llama.LlamaConfig:
  cfg_path = os.path.join(path, CONFIG_FILE)
  try:
    with open(cfg_path, encoding="utf-8") as f:
      fields = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{cfg_path}: not found (is {path} a model directory written by "
                            "save_model, or an HF checkpoint?)") from None
  try:
    return llama.LlamaConfig(**fields)
  except TypeError as e:
    raise ValueError(f"{cfg_path}: {e}") from None


def load_model(path: str, mesh=None, *, config: Optional[llama.LlamaConfig] = None
               ) -> Tuple[llama.LlamaConfig, Any]:
  """``(config, params)`` from a ``save_model`` directory or an HF checkpoint directory.

  Params are placed on ``mesh`` (default: all devices on the fsdp axis) with the param shardings.
  ``config`` may override numerics fields (dtype, remat, dropout) but not shapes.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model checkpoint not found: {path}")
  if mesh is None:
    mesh = shd.make_mesh(shd.MeshConfig())
  if not is_model_dir(path):
    if os.path.isfile(os.path.join(path, "config.json")):
      from selfreward_jax.checkpoint import hf
      return hf.load_hf_checkpoint(path, mesh=mesh)
    raise FileNotFoundError(f"{path}: neither a model directory ({CONFIG_FILE} + params/) nor an "
                            "HF checkpoint (config.json + safetensors)")
  saved = load_config(path)
  config = config or saved
  if llama.param_shapes(config) != llama.param_shapes(saved):
    raise ValueError(f"{path}: the requested config's shapes differ from the saved model's")
  shardings = shd.param_shardings(config, mesh)
  shapes = llama.param_shapes(saved)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s, saved.pdtype, sharding=sh),
                          shapes, shardings, is_leaf=lambda x: isinstance(x, tuple))
  ckptr = ocp.StandardCheckpointer()
  try:
    params = ckptr.restore(os.path.join(os.path.abspath(path), "params"), abstract)
  finally:
    ckptr.close()
  return config, params
