"""HF safetensors and Meta .pth import/export: logits parity with transformers, sharded files, bf16,
loading onto a mesh, round trips, and clear errors (file + tensor/key) for every broken input.

All models are tiny random ``transformers.LlamaForCausalLM`` built here; nothing is downloaded.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_hf_llama, run_multidevice
from selfreward_jax.checkpoint import hf, meta
from selfreward_jax.checkpoint.hf import CheckpointError
from selfreward_jax.model import llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

F32 = {"compute_dtype": "float32"}
TOKENS_BT = np.random.RandomState(0).randint(0, 128, (2, 16))
PARITY_TOL = 1e-4
MAX_DIFFS = {}  # name -> measured max |ours - HF|, printed at the end (pytest -s)


def _hf_logits(model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(TOKENS_BT)).logits.float().numpy()


def _our_logits(config, params) -> np.ndarray:
  with jax.default_matmul_precision("highest"):
    return np.asarray(llama.forward(params, jnp.asarray(TOKENS_BT), config))


def _leaves(params):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def _assert_same_params(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert la.keys() == lb.keys()
  for k in la:
    assert la[k].dtype == lb[k].dtype, k
    np.testing.assert_array_equal(la[k].astype(np.float32), lb[k].astype(np.float32), err_msg=k)


def _save(model, path, **kw):
  model.save_pretrained(path, **kw)
  return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  """Tiny HF checkpoints: GQA (theta 500, single file, sharded, bf16), MHA (theta 1e6), tied,
  MQA with a non-default head_dim."""
  root = tmp_path_factory.mktemp("hf")
  models = {
      "gqa": make_hf_llama(heads=4, kv_heads=2, theta=500.0, seed=1),
      "mha": make_hf_llama(heads=4, kv_heads=4, theta=1e6, eps=1e-6, seed=2),
      "tied": make_hf_llama(heads=4, kv_heads=2, tie=True, seed=3),
  }
  # Multi-query attention with head_dim (32) != hidden_size / heads (16).
  mqa_cfg = transformers.LlamaConfig(
      vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
      rope_parameters={"rope_type": "default", "rope_theta": 1e4}, rms_norm_eps=1e-5)
  torch.manual_seed(5)
  models["mqa_hd32"] = transformers.LlamaForCausalLM(mqa_cfg).eval()
  out = {name: (m, _save(m, root / name)) for name, m in models.items()}
  out["sharded"] = (models["gqa"], _save(models["gqa"], root / "sharded", max_shard_size="20KB"))
  bf16 = make_hf_llama(heads=4, kv_heads=2, theta=500.0, seed=1).to(torch.bfloat16)
  out["bf16"] = (bf16, _save(bf16, root / "bf16"))
  return out


# ---- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gqa", "mha", "tied", "mqa_hd32"])
def test_logits_match_transformers(ckpts, name):
  model, path = ckpts[name]
  config, params = hf.load_hf_checkpoint(path, config_overrides=F32)
  hc = model.config
  assert config.n_kv_heads == hc.num_key_value_heads and config.n_heads == hc.num_attention_heads
  assert config.rope_theta == hc.rope_parameters["rope_theta"]
  assert config.norm_eps == hc.rms_norm_eps and config.max_seq_len == 256
  assert config.hd == hc.head_dim
  assert config.tie_embeddings == (name == "tied") and ("lm_head" in params) == (name != "tied")
  assert jax.tree.map(np.shape, params) == jax.tree.map(
      tuple, llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))
  diff = float(np.abs(_our_logits(config, params) - _hf_logits(model)).max())
  MAX_DIFFS[name] = diff
  print(f"\n{name}: max |logits - HF| = {diff:.2e}")
  assert diff <= PARITY_TOL


def test_sharded_index_loads_identically(ckpts):
  path = ckpts["sharded"][1]
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
  c1, p1 = hf.load_hf_checkpoint(path, config_overrides=F32)
  c2, p2 = hf.load_hf_checkpoint(ckpts["gqa"][1], config_overrides=F32)
  assert c1 == c2
  _assert_same_params(p1, p2)


def test_bf16_checkpoint(ckpts):
  model, path = ckpts["bf16"]
  c_keep, p_keep = hf.load_hf_checkpoint(path, dtype=None)
  assert c_keep.param_dtype == "bfloat16"
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p_keep))
  c32, p32 = hf.load_hf_checkpoint(path, dtype="float32", config_overrides=F32)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p32))
  _assert_same_params(jax.tree.map(lambda x: x.astype(jnp.bfloat16), p32), p_keep)
  # Reference: the bf16 weights in an fp32 transformers model (``model.float()`` would not do: its
  # rotary inv_freq buffer was rounded to bf16 by ``.to(bfloat16)``, costing ~1e-5).
  ref_model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  diff = float(np.abs(_our_logits(c32, p32) - _hf_logits(ref_model)).max())
  MAX_DIFFS["bf16 weights, f32 compute"] = diff
  assert diff <= PARITY_TOL
  # The header-parsing fallback reader agrees with safetensors' numpy reader on bf16.
  from safetensors import safe_open
  fname = os.path.join(path, "model.safetensors")
  with safe_open(fname, framework="numpy") as f:
    for name in ("model.norm.weight", "model.layers.1.self_attn.q_proj.weight"):
      ref = f.get_tensor(name)
      raw = hf.read_safetensors_raw(fname, name)
      assert raw.dtype == ref.dtype and raw.shape == ref.shape
      np.testing.assert_array_equal(raw.astype(np.float32), ref.astype(np.float32))


# ---- export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shard_bytes", [("gqa", 30_000), ("tied", 10**9)])
def test_export_reloads_in_transformers_and_here(ckpts, tmp_path, name, shard_bytes):
  model, path = ckpts[name]
  config, params = hf.load_hf_checkpoint(path, config_overrides=F32)
  tok = tmp_path / "tok.model"
  tok.write_bytes(b"sentencepiece bytes")
  out = hf.save_hf_checkpoint(tmp_path / "export", config, params, max_shard_bytes=shard_bytes,
                              tokenizer_path=tok)
  files = sorted(os.listdir(out))
  assert "config.json" in files and "generation_config.json" in files and "tokenizer.model" in files
  assert ("model.safetensors.index.json" in files) == (shard_bytes < 10**9)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp dirs left behind
  reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
  np.testing.assert_array_equal(_hf_logits(reloaded), _hf_logits(model))
  c2, p2 = hf.load_hf_checkpoint(out, config_overrides=F32)
  assert c2 == config
  _assert_same_params(p2, params)
  with pytest.raises(FileExistsError, match="overwrite"):
    hf.save_hf_checkpoint(out, config, params)
  hf.save_hf_checkpoint(out, config, params, dtype="bfloat16", overwrite=True)
  c3, p3 = hf.load_hf_checkpoint(out, dtype=None)
  assert c3.param_dtype == "bfloat16"
  _assert_same_params(p3, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"


def test_config_round_trip_and_refusals(tmp_path):
  cfg = llama.LlamaConfig.tiny(rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True)
  d = hf.config_to_hf(cfg)
  assert hf.config_from_hf(d, compute_dtype="float32") == cfg
  hc = transformers.LlamaConfig.from_dict(d)  # transformers reads our config.json contents
  assert hc.rope_parameters["rope_theta"] == 1e6 and hc.num_key_value_heads == 2
  old = {k: v for k, v in d.items() if k != "rope_parameters"}
  assert hf.config_from_hf({**old, "rope_theta": 1234.0}).rope_theta == 1234.0  # transformers 4.x
  assert hf.config_from_hf({**old, "rope_scaling": None}).rope_theta == 10000.0
  bad = [
      ({"attention_bias": True}, "'attention_bias'"),
      ({"mlp_bias": True}, "'mlp_bias'"),
      ({"hidden_act": "gelu"}, "'hidden_act'"),
      ({"model_type": "mistral"}, "'model_type'"),
      ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
       "'rope_parameters.rope_type'"),
      ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'rope_scaling.rope_type'"),
      ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "factor": 2.0}},
       "'rope_parameters.factor'"),
  ]
  for change, key in bad:
    with pytest.raises(CheckpointError) as e:
      hf.config_from_hf({**d, **change}, source="/x/config.json")
    assert "/x/config.json" in str(e.value) and key in str(e.value), str(e.value)


# ---- Meta format ----------------------------------------------------------------------------------

def _to_meta_pairing(w: np.ndarray, n_heads: int) -> np.ndarray:
  """HF rotate-half rows -> Meta interleaved rows, by explicit indices: Meta row 2i+j of a head is
  HF row j*H/2+i (written independently of ``meta.permute_meta_to_hf``)."""
  rows = w.shape[0]
  h = rows // n_heads
  src = np.empty(rows, np.int64)
  for head in range(n_heads):
    for i in range(h // 2):
      for j in range(2):
        src[head * h + 2 * i + j] = head * h + j * (h // 2) + i
  return w[src]


def _write_meta(model, path, n_shards=1, dtype=torch.float32):
  """Meta layout from an HF model: params.json + consolidated.NN.pth (fairscale split rules)."""
  hc = model.config
  sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
  n, k = hc.num_attention_heads, hc.num_key_value_heads
  tensors = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], 1),
             "norm.weight": (sd["model.norm.weight"], None),
             "output.weight": (sd["lm_head.weight"], 0),
             "rope.freqs": (np.ones(4, np.float32), None)}
  names = {"attention.wq": ("self_attn.q_proj", 0), "attention.wk": ("self_attn.k_proj", 0),
           "attention.wv": ("self_attn.v_proj", 0), "attention.wo": ("self_attn.o_proj", 1),
           "feed_forward.w1": ("mlp.gate_proj", 0), "feed_forward.w2": ("mlp.down_proj", 1),
           "feed_forward.w3": ("mlp.up_proj", 0), "attention_norm": ("input_layernorm", None),
           "ffn_norm": ("post_attention_layernorm", None)}
  for layer in range(hc.num_hidden_layers):
    for m_name, (h_name, dim) in names.items():
      w = sd[f"model.layers.{layer}.{h_name}.weight"]
      if m_name == "attention.wq":
        w = _to_meta_pairing(w, n)
      elif m_name == "attention.wk":
        w = _to_meta_pairing(w, k)
      tensors[f"layers.{layer}.{m_name}.weight"] = (w, dim)
  os.makedirs(path, exist_ok=True)
  for s in range(n_shards):
    shard = {}
    for name, (w, dim) in tensors.items():
      part = w if dim is None else np.split(w, n_shards, axis=dim)[s]
      shard[name] = torch.from_numpy(np.ascontiguousarray(part)).to(dtype)
    torch.save(shard, os.path.join(path, f"consolidated.{s:02d}.pth"))
  params_json = {"dim": hc.hidden_size, "n_layers": hc.num_hidden_layers, "n_heads": n,
                 "n_kv_heads": k, "vocab_size": -1, "multiple_of": 16,
                 "ffn_dim_multiplier": 0.65,  # int(0.65 * int(8 * 64 / 3)) = 110 -> 112
                 "norm_eps": hc.rms_norm_eps, "rope_theta": hc.rope_parameters["rope_theta"]}
  with open(os.path.join(path, "params.json"), "w") as f:
    json.dump(params_json, f)
  return str(path)


def test_meta_ffn_rule():
  assert meta.meta_ffn_dim(4096, 256) == 11008
  assert meta.meta_ffn_dim(5120, 256) == 13824
  assert meta.meta_ffn_dim(8192, 4096, 1.3) == 28672


def test_meta_checkpoint_matches_hf(tmp_path, monkeypatch):
  # Larger q/k weights than the 0.02 init make attention far from uniform, so a wrong RoPE pairing
  # shows in the logits.
  model = make_hf_llama(heads=4, kv_heads=2, theta=500.0, seed=4)
  with torch.no_grad():
    for layer in model.model.layers:
      layer.self_attn.q_proj.weight.mul_(8.0)
      layer.self_attn.k_proj.weight.mul_(8.0)
  hf_path = _save(model, tmp_path / "hf")
  path = _write_meta(model, tmp_path / "meta")
  config, params = meta.load_meta_checkpoint(path, config_overrides=F32)
  assert config.ffn_dim == 112 and config.vocab_size == 128 and config.rope_theta == 500.0
  ref = _hf_logits(model)
  diff = float(np.abs(_our_logits(config, params) - ref).max())
  MAX_DIFFS["meta"] = diff
  assert diff <= PARITY_TOL
  _assert_same_params(params, hf.load_hf_checkpoint(hf_path, config_overrides=F32)[1])

  # Two model-parallel shards in bf16 (like Meta's release) merge to the same weights.
  path2 = _write_meta(model, tmp_path / "meta2", n_shards=2, dtype=torch.bfloat16)
  c2, p2 = meta.load_meta_checkpoint(path2, dtype=None, config_overrides=F32)
  assert c2.param_dtype == "bfloat16"
  _assert_same_params(p2, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))

  # The permutation matters: without it the logits are far off (so this test can fail).
  monkeypatch.setattr(meta, "permute_meta_to_hf", lambda w, heads: w)
  c3, p3 = meta.load_meta_checkpoint(path, config_overrides=F32)
  wrong = float(np.abs(_our_logits(c3, p3) - ref).max())
  MAX_DIFFS["meta without permutation"] = wrong
  assert wrong > 100 * PARITY_TOL


def test_meta_errors(ckpts, tmp_path):
  path = _write_meta(ckpts["gqa"][0], tmp_path / "meta")
  fname = os.path.join(path, "consolidated.00.pth")
  sd = torch.load(fname, weights_only=True)
  bad = dict(sd)
  bad["layers.1.feed_forward.w3.weight"] = bad["layers.1.feed_forward.w3.weight"][:100]
  torch.save(bad, fname)
  with pytest.raises(CheckpointError) as e:
    meta.load_meta_checkpoint(path)
  msg = str(e.value)
  assert fname in msg and "'layers.1.feed_forward.w3.weight'" in msg and "[100, 64]" in msg, msg
  del bad["layers.1.feed_forward.w3.weight"]
  torch.save(bad, fname)
  with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: tensor 'layers\.1\.feed_forward"
                     r"\.w3\.weight' not found"):
    meta.load_meta_checkpoint(path)
  os.remove(os.path.join(path, "params.json"))
  with pytest.raises(CheckpointError, match="params.json: not found"):
    meta.load_meta_checkpoint(path)


# ---- mesh -----------------------------------------------------------------------------------------

def test_load_onto_mesh_and_export_from_it(ckpts, tmp_path):
  model, path = ckpts["sharded"]
  np.save(tmp_path / "ref.npy", _hf_logits(model))
  np.save(tmp_path / "tokens.npy", TOKENS_BT)
  out = run_multidevice(f"""
    import jax, numpy as np
    from selfreward_jax import sharding as shd
    from selfreward_jax.checkpoint import hf
    from selfreward_jax.model import llama
    assert jax.device_count() == 8
    mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
    config, params = hf.load_hf_checkpoint({path!r}, mesh=mesh,
                                           config_overrides={{"compute_dtype": "float32"}})
    want = shd.param_shardings(config, mesh)
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_w = jax.tree.leaves(want)
    for (kp, x), s in zip(flat_p, flat_w):
      assert x.sharding == s, (jax.tree_util.keystr(kp), x.sharding, s)
      shard_shape = s.shard_shape(x.shape)
      assert all(sh.data.shape == shard_shape for sh in x.addressable_shards), kp
    wq = params["layers"]["wq"]
    assert wq.addressable_shards[0].data.shape != wq.shape  # really split
    tokens = np.load({str(tmp_path / "tokens.npy")!r})
    with jax.set_mesh(mesh), jax.default_matmul_precision("highest"):
      logits = jax.jit(lambda p, t: llama.forward(p, t, config))(params, tokens)
    diff = float(np.abs(np.asarray(logits) - np.load({str(tmp_path / "ref.npy")!r})).max())
    assert diff <= {PARITY_TOL}, diff
    hf.save_hf_checkpoint({str(tmp_path / "from_mesh")!r}, config, params, max_shard_bytes=50_000)
    print("MESH_DIFF", diff)
  """)
  MAX_DIFFS["mesh (2,2,2)"] = float(out.split("MESH_DIFF")[1].split()[0])
  _, p_ref = hf.load_hf_checkpoint(path, config_overrides=F32)
  _, p_exp = hf.load_hf_checkpoint(tmp_path / "from_mesh", config_overrides=F32)
  _assert_same_params(p_exp, p_ref)


# ---- bad input ------------------------------------------------------------------------------------

def _copy(ckpts, name, tmp_path):
  dst = str(tmp_path / f"{name}_copy")
  shutil.copytree(ckpts[name][1], dst)
  return dst


def _edit_tensors(fname, edit):
  from safetensors.numpy import load_file, save_file
  tensors = load_file(fname)
  edit(tensors)
  save_file(tensors, fname, metadata={"format": "pt"})


def _edit_config(path, **changes):
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  return cfg_path


def _error(path, **kw) -> str:
  with pytest.raises(CheckpointError) as e:
    hf.load_hf_checkpoint(path, **kw)
  return str(e.value)


def test_missing_directory_and_config(ckpts, tmp_path):
  missing = str(tmp_path / "nope")
  msg = _error(missing)
  assert missing in msg and "not found" in msg
  path = _copy(ckpts, "gqa", tmp_path)
  os.remove(os.path.join(path, "config.json"))
  msg = _error(path)
  assert os.path.join(path, "config.json") in msg and "not found" in msg


def test_missing_and_truncated_shards(ckpts, tmp_path):
  path = _copy(ckpts, "sharded", tmp_path)
  index = os.path.join(path, "model.safetensors.index.json")
  weight_map = json.load(open(index))["weight_map"]
  victim = weight_map["model.layers.1.mlp.up_proj.weight"]
  os.remove(os.path.join(path, victim))
  msg = _error(path)
  assert index in msg and os.path.join(path, victim) in msg and "does not exist" in msg, msg
  assert "model.layers.1.mlp.up_proj.weight" in msg, msg

  path = _copy(ckpts, "sharded", tmp_path / "t")
  fname = os.path.join(path, victim)
  with open(fname, "r+b") as f:
    f.truncate(os.path.getsize(fname) - 100)
  msg = _error(path)
  assert fname in msg and "truncated" in msg, msg

  # The index places a tensor in a shard that does not hold it.
  path = _copy(ckpts, "sharded", tmp_path / "m")
  fname = os.path.join(path, victim)
  _edit_tensors(fname, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  msg = _error(path)
  index = os.path.join(path, "model.safetensors.index.json")
  assert "'model.layers.1.mlp.up_proj.weight' not found in " + fname in msg and index in msg, msg


def test_wrong_shape_missing_extra_and_dtype(ckpts, tmp_path):
  path = _copy(ckpts, "gqa", tmp_path)
  fname = os.path.join(path, "model.safetensors")
  original = dict(safetensors_numpy.load_file(fname))

  def reset(edit):
    tensors = dict(original)
    edit(tensors)
    safetensors_numpy.save_file(tensors, fname, metadata={"format": "pt"})

  k_name = "model.layers.1.self_attn.k_proj.weight"
  reset(lambda t: t.update({k_name: np.zeros((16, 64), np.float32)}))
  msg = _error(path)
  assert (fname in msg and "'model.layers.1.self_attn.k_proj.weight'" in msg and "[16, 64]" in msg
          and "[32, 64]" in msg and "num_key_value_heads" in msg), msg

  reset(lambda t: t.pop("lm_head.weight"))
  msg = _error(path)
  assert "'lm_head.weight' not found in " + fname in msg, msg

  reset(lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}))
  msg = _error(path)
  assert "'model.layers.0.self_attn.q_proj.bias'" in msg and fname in msg, msg
  assert "unexpected" in msg, msg

  reset(lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
  hf.load_hf_checkpoint(path)  # known harmless extra

  reset(lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
  msg = _error(path)
  assert fname in msg and "'model.norm.weight'" in msg and "I32" in msg, msg


def test_config_disagreeing_with_weights(ckpts, tmp_path):
  path = _copy(ckpts, "gqa", tmp_path)
  for layers in (3, 1):
    cfg_path = _edit_config(path, num_hidden_layers=layers)
    msg = _error(path)
    assert cfg_path in msg and "'num_hidden_layers'" in msg and "0..1" in msg, msg
  _edit_config(path, num_hidden_layers=2, intermediate_size=120)
  msg = _error(path)
  assert "model.safetensors" in msg and "mlp" in msg and "'intermediate_size'" in msg, msg
  cfg_path = _edit_config(path, intermediate_size=112, attention_bias=True)
  msg = _error(path)
  assert cfg_path in msg and "'attention_bias'" in msg, msg


def test_tied_head(ckpts, tmp_path):
  path = _copy(ckpts, "tied", tmp_path)
  fname = os.path.join(path, "model.safetensors")
  _edit_tensors(fname, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  config, params = hf.load_hf_checkpoint(path)  # equal to the embeddings: fine
  assert "lm_head" not in params
  _edit_tensors(fname, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1.0}))
  msg = _error(path)
  assert fname in msg and "'lm_head.weight'" in msg and "'tie_word_embeddings'" in msg, msg


def test_pickle_checkpoint_refused(ckpts, tmp_path):
  path = str(tmp_path / "bin_only")
  os.makedirs(path)
  shutil.copy(os.path.join(ckpts["gqa"][1], "config.json"), path)
  with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
    f.write(b"\x80\x04 this would be unpickled")
  msg = _error(path)
  assert os.path.join(path, "pytorch_model.bin") in msg and "refusing" in msg, msg
  assert "safetensors" in msg and "save_pretrained" in msg, msg


def test_report_max_diffs():
  """Prints the measured parity figures (run with -s to see them)."""
  print("\nmax |logits - HF| per case:", {k: f"{v:.2e}" for k, v in MAX_DIFFS.items()})
