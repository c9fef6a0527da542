"""A tiny self-rewarding run on files written here: used by the loop tests (in process and as a
``python -m selfreward_jax.main --config=<this file>`` subprocess)."""

import json
import os
import random

import ml_collections

WORDS = ("apple river stone cloud green quick brown sort count reverse letter number list word "
         "add sum total small large first last name city blue red yellow seven three nine").split()


def _sentence(rng, n):
  return " ".join(rng.choice(WORDS) for _ in range(n))


def write_files(root: str, seed: int = 0) -> dict:
  """Tokenizer, IFT, EFT groups and EFT examples for a tiny run; returns their paths."""
  from selfreward_jax.tokenizer import train_sentencepiece
  os.makedirs(root, exist_ok=True)
  rng = random.Random(seed)
  ift = [{"prompt": f"Please {_sentence(rng, 4)} now", "response": _sentence(rng, 5)} for _ in range(12)]
  groups = [{"prompt": f"Tell me {_sentence(rng, 3)}", "responses": [_sentence(rng, 3) for _ in range(3)],
             "ranks": [0, 1, 2]} for _ in range(8)]
  from selfreward_jax.selfreward.judge import judge_prompt
  from selfreward_jax.selfreward.templates import load_template
  judge_t = load_template("judge_short", kind="judge")
  eft = []
  for i in range(10):
    score = 1 + i % 5
    eft.append({"prompt": judge_prompt(judge_t, f"Please {_sentence(rng, 4)} now", _sentence(rng, 5)),
                "response": f"{rng.choice(['Good', 'Weak', 'Fine'])}. Score: {score}"})
  paths = {k: os.path.join(root, f"{k}.jsonl") for k in ("ift", "groups", "eft")}
  for key, rows in (("ift", ift), ("groups", groups), ("eft", eft)):
    with open(paths[key], "w") as f:
      f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  corpus = [json.dumps(r) for r in ift + groups + eft] + [_sentence(rng, 12) for _ in range(3000)]
  corpus += ["Score: 0 1 2 3 4 5 Task: Grade the reply. Request: Reply: [INST] [/INST] <<SYS>>"] * 50
  tok = train_sentencepiece(corpus, os.path.join(root, "tok"), vocab_size=320)
  paths["tokenizer"] = tok.model_path
  return paths


def tiny_config(root: str, iterations: int = 2) -> ml_collections.ConfigDict:
  from selfreward_jax.selfreward.config import default_config_dict
  paths = write_files(os.path.join(root, "files"))
  d = default_config_dict()
  # This tiny judge garbles its "Score: N" line often (parse rate ~0.3-0.6), so whether an
  # iteration makes any pair depends on the draw; a run with none stops by design. Seed 2 makes
  # pairs in both iterations with the sampler's inverse-CDF draw (seed 0 did with Gumbel-max).
  d["seed"] = 2
  d["model"] = {"preset": "tiny", "vocab_size": 320, "dim": 32, "n_layers": 2, "n_heads": 4,
                "n_kv_heads": 2, "ffn_dim": 64, "max_seq_len": 1024}
  d["init"]["tokenizer"] = paths["tokenizer"]
  d["data"].update(source="files", ift_path=paths["ift"], eft_path=paths["groups"],
                   eft_examples_path=paths["eft"], eft_eval_fraction=0.25)
  for stage, steps, lr in (("sft", 160, 1e-2), ("dpo", 4, 1e-4)):
    d[stage]["train"].update(batch_size=4, max_len=320, num_steps=steps, dropout_rate=0.0,
                             save_every=5, tensorboard=False, progress=False,
                             async_checkpointing=False)
    d[stage]["optim"].update(learning_rate=lr, end_learning_rate=lr / 10, warmup_steps=0)
  d["loop"].update(iterations=iterations, num_prompts=6, chunk_size=16, max_prompt_rounds=4,
                   num_candidates=3, num_judgements=2, judge_template="judge_short")
  d["loop"]["filters"].update(min_words=1, rouge_threshold=0.95)
  for key, n in (("prompt_sampling", 16), ("candidate_sampling", 12), ("judge_sampling", 24)):
    d["loop"][key].update(max_new_tokens=n, temperature=0.8, top_p=0.95)
  d["sampler"].update(max_concurrent=8, max_prefill_length=512, max_decode_length=576)
  return ml_collections.ConfigDict(d)


def get_config():
  return tiny_config(os.environ["SRJ_TEST_ROOT"])
