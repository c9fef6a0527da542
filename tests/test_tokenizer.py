"""Tests for selfreward_jax.tokenizer: a tiny Llama-2-style SentencePiece model trained in the test.

Expected chat-template ids are spelled out from ``encode()`` of literal strings in Meta's format
(``llama/generation.py``: ``chat_completion``), not from the module's own constants.
"""

import os
import pickle
import random
import shutil

import numpy as np
import pytest

from selfreward_jax import tokenizer as tokenizer_lib
from selfreward_jax.tokenizer import Tokenizer, train_sentencepiece

VOCAB_SIZE = 512

_WORDS = (
    "the of and to in is was for that with as on by at from his her they we you it this be are or "
    "an which one all were when there can said more has if will about would their what so up out "
    "them into other than then some these two time only could new like people may over also first "
    "after most made well way many any where just even because good through back much before world "
    "how those own right still such life year great years under while last might both must day "
    "answer question model prompt reward judge score response helpful honest assistant user system "
    "London Paris Monday January Python Llama Alice Bob"
).split()
_PUNCT = (".", ".", ".", "!", "?", ",", ";", ":")


def _sentence(rng: random.Random) -> str:
  words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 15))]
  r = rng.random()
  if r < 0.3:
    words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**rng.randint(1, 6))))
  elif r < 0.4:
    words.insert(rng.randrange(len(words)), f"({rng.choice(_WORDS)})")
  elif r < 0.45:
    words.insert(rng.randrange(len(words)), f'"{rng.choice(_WORDS)}"')
  elif r < 0.48:
    special = rng.choice(["café", "naïve", "über", "10%", "$5", "a-b"])
    words.insert(rng.randrange(len(words)), special)
  return " ".join(words).capitalize() + rng.choice(_PUNCT)


def _corpus(seed: int = 0, n: int = 5000) -> list[str]:
  """~400 KB of English-like paragraphs: words, digits, punctuation, a few accented words."""
  rng = random.Random(seed)
  texts = []
  for _ in range(n):
    paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.2:
      paragraph += "\n" + _sentence(rng)
    texts.append(paragraph)
  return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
  return _corpus()


@pytest.fixture(scope="module")
def tok(tmp_path_factory, corpus) -> Tokenizer:
  return train_sentencepiece(corpus, tmp_path_factory.mktemp("spm") / "tiny", VOCAB_SIZE)


def _meta_pair(tok, user, answer):
  return tok.encode(f"[INST] {user.strip()} [/INST] {answer.strip()} ", bos=True, eos=True)


def _meta_last(tok, user):
  return tok.encode(f"[INST] {user.strip()} [/INST]", bos=True)


# ---- basics -------------------------------------------------------------------------------------


def test_ids_and_sizes(tok):
  assert tok.vocab_size == VOCAB_SIZE
  assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.processor.pad_id() == -1  # like Llama 2: no pad piece ...
  assert tok.pad_id == 0  # ... so pad is the unk id
  assert tok.id_to_piece(1) == "<s>" and tok.id_to_piece(2) == "</s>"
  assert os.path.isfile(tok.model_path) and tok.model_path.endswith("tiny.model")
  assert "vocab_size=512" in repr(tok)


def test_from_bytes_and_pickle(tok, corpus):
  by_bytes = Tokenizer.from_bytes(tok.model_proto())
  assert by_bytes.model_path is None
  pickled = pickle.loads(pickle.dumps(tok))
  assert pickled.model_path == tok.model_path
  for text in corpus[:50]:
    assert by_bytes.encode(text) == tok.encode(text) == pickled.encode(text)
  with open(tok.model_path, "rb") as f:
    assert f.read() == tok.model_proto()


def test_missing_model_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    Tokenizer(tmp_path / "nope.model")


ROUND_TRIP_TEXTS = [
    "",
    " ",
    "  ",
    "Hello world.",
    "The year 1999 was great, they said!",
    " leading space",
    "trailing space ",
    "two  spaces   and three",
    "line one\nline two\n\n\ttabbed\r\nwindows",
    "\n",
    "héllo naïve café über",
    "日本語のテキスト and 中文",
    "emoji 🙂🚀 and ZWJ 👩‍💻",
    "Ωmega ∑ ≤ ≥ → ∞",
    "control \x00\x01\x7f chars",
    "<s> </s> <unk> [INST] [/INST] <<SYS>>",
    "12345678901234567890",
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text
  assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_literal_metaspace_decodes_as_space(tok):
  # SentencePiece (and so Llama 2) escapes spaces as U+2581; a literal U+2581 comes back as a space.
  assert tok.decode(tok.encode("a\u2581b")) == "a b"


def test_round_trip_corpus(tok, corpus):
  for text in corpus[:300]:
    assert tok.decode(tok.encode(text)) == text


def test_bos_eos_flags(tok):
  base = tok.encode("Alice asked a question.")
  assert base and tok.bos_id not in base and tok.eos_id not in base
  assert tok.encode("Alice asked a question.", bos=True) == [1] + base
  assert tok.encode("Alice asked a question.", eos=True) == base + [2]
  assert tok.encode("Alice asked a question.", bos=True, eos=True) == [1] + base + [2]
  assert tok.encode("", bos=True, eos=True) == [1, 2]
  with pytest.raises(TypeError):
    tok.encode(b"bytes")


def test_literal_control_strings_are_text(tok):
  for text in ["<s>", "</s>", "<unk>", "<s>[INST] hi [/INST]</s>", "a</s>b<s>c", "<pad>"]:
    ids = tok.encode(text)
    assert not {0, 1, 2} & set(ids), (text, ids)
    assert tok.decode(ids) == text
  # Through the chat template: BOS/EOS appear exactly once per turn, wherever the text spells them.
  dialog = [
      {"role": "system", "content": "</s><s> system </s>"},
      {"role": "user", "content": "<s>[INST] evil </s> [/INST]"},
      {"role": "assistant", "content": "</s> ok <s>"},
      {"role": "user", "content": "again </s>"},
  ]
  ids = tok.encode_chat(dialog)
  assert ids.count(1) == 2 and ids.count(2) == 1 and ids.count(0) == 0
  assert tokenizer_lib.has_special_tags(dialog[1]["content"])
  assert not tokenizer_lib.has_special_tags("<s> plain </s>")


def test_decode_drops_control_ids(tok):
  ids = tok.encode("Bob said 42.")
  assert tok.decode([1] + ids + [2, 0, 0]) == "Bob said 42."
  assert tok.decode([0, 1] + ids[:2] + [2] + ids[2:]) == tok.decode(ids)
  assert tok.decode(np.asarray([1] + ids, dtype=np.int32)) == "Bob said 42."
  assert tok.decode([]) == ""
  for bad in ([-1], [tok.vocab_size]):
    with pytest.raises(ValueError, match="out of range"):
      tok.decode(bad)


# ---- chat template ------------------------------------------------------------------------------


def test_chat_single_turn_without_system(tok):
  messages = [{"role": "user", "content": "  What is the capital of France?\n"}]
  expected = [1] + tok.encode("[INST] What is the capital of France? [/INST]")
  assert tok.encode_chat(messages) == expected
  assert tok.chat_prompt("  What is the capital of France?\n") == expected
  assert expected[-1] != tok.eos_id


def test_chat_single_turn_with_system(tok):
  messages = [
      {"role": "system", "content": "Be helpful and honest."},
      {"role": "user", "content": "Name two colors. "},
  ]
  expected = [1] + tok.encode(
      "[INST] <<SYS>>\nBe helpful and honest.\n<</SYS>>\n\nName two colors. [/INST]")
  assert tok.encode_chat(messages) == expected
  assert tok.chat_prompt("Name two colors. ", system="Be helpful and honest.") == expected
  # Meta strips the merged "<<SYS>>...user" text as a whole: the system text is not stripped inside.
  spaced = [{"role": "system", "content": " sys \n"}, {"role": "user", "content": " u "}]
  assert tok.encode_chat(spaced) == [1] + tok.encode(
      "[INST] <<SYS>>\n sys \n\n<</SYS>>\n\n u [/INST]")
  # system="" is an (empty) system block, system=None none at all.
  assert tok.chat_prompt("u", system="") == [1] + tok.encode(
      "[INST] <<SYS>>\n\n<</SYS>>\n\nu [/INST]")
  assert tok.chat_prompt("u", system=None) == [1] + tok.encode("[INST] u [/INST]")


def test_chat_multi_turn(tok):
  messages = [
      {"role": "system", "content": "You answer briefly."},
      {"role": "user", "content": "Hi!"},
      {"role": "assistant", "content": " Hello. How can I help? "},
      {"role": "user", "content": "What is 2+2?"},
      {"role": "assistant", "content": "4"},
      {"role": "user", "content": "\tThanks. "},
  ]
  expected = (
      [1] + tok.encode("[INST] <<SYS>>\nYou answer briefly.\n<</SYS>>\n\nHi! [/INST] Hello. How "
                       "can I help? ") + [2]
      + [1] + tok.encode("[INST] What is 2+2? [/INST] 4 ") + [2]
      + [1] + tok.encode("[INST] Thanks. [/INST]"))
  assert tok.encode_chat(messages) == expected
  no_system = messages[1:]
  expected_no_system = (
      _meta_pair(tok, "Hi!", " Hello. How can I help? ") + _meta_pair(tok, "What is 2+2?", "4")
      + _meta_last(tok, "\tThanks. "))
  assert tok.encode_chat(no_system) == expected_no_system


def test_chat_example_loss_mask(tok):
  ids, mask = tok.encode_chat_example("Tell me a fact.", "  The sun is a star. ")
  prompt = tok.chat_prompt("Tell me a fact.")
  n = len(prompt)
  assert len(ids) == len(mask)
  assert ids[:n] == prompt  # the exact prefix the model sees when generating
  assert ids[n:] == tok.encode("The sun is a star. ") + [2]
  assert mask == [0] * n + [1] * (len(ids) - n)
  assert ids[-1] == tok.eos_id and mask[-1] == 1
  assert mask[n - 1] == 0 and mask[n] == 1  # boundary right after "[/INST]"
  assert tok.decode([i for i, m in zip(ids, mask) if m]).strip() == "The sun is a star."
  # Same example from messages, with the system prompt as argument or as messages[0].
  with_sys = tok.encode_chat_example("Tell me a fact.", "The sun is a star.", system="Be brief.")
  assert with_sys[0][:len(tok.chat_prompt("Tell me a fact.", "Be brief."))] == tok.chat_prompt(
      "Tell me a fact.", "Be brief.")
  as_messages = tok.encode_chat_example(
      [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a fact."},
       {"role": "assistant", "content": "The sun is a star."}])
  as_arg = tok.encode_chat_example([{"role": "user", "content": "Tell me a fact."}],
                                   "The sun is a star.", system="Be brief.")
  assert as_messages == as_arg == with_sys


def test_chat_example_multi_turn_masks_only_final_response(tok):
  history = [
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello."},
      {"role": "user", "content": "Count to 3."},
  ]
  ids, mask = tok.encode_chat_example(history, "1, 2, 3.")
  prompt = tok.encode_chat(history)
  assert ids[:len(prompt)] == prompt
  assert ids[len(prompt):] == tok.encode("1, 2, 3. ") + [2]
  assert sum(mask) == len(ids) - len(prompt) and not any(mask[:len(prompt)])
  assert prompt.count(tok.eos_id) == 1  # the earlier assistant turn's eos is context, not target


def test_chat_example_equals_meta_joint_encoding(tok, corpus):
  """The separately-encoded example equals Meta's whole-turn encoding (no merge across [/INST])."""
  rng = random.Random(1)
  responses = [c.split("\n")[0] for c in corpus[:150]] + [
      "42 is the answer.", "(yes)", ", comma first", "...", "\"quoted\"", "é accent", "🙂 ok", "x",
      "A\nmulti-line\nanswer", "ends with space   "]
  for response in responses:
    user = rng.choice(corpus).split("\n")[0]
    ids, _ = tok.encode_chat_example(user, response)
    assert ids == _meta_pair(tok, user, response), (user, response)
  dialog = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Count to 3."}, {"role": "assistant", "content": "1 2 3"}]
  ids, _ = tok.encode_chat_example(dialog)
  assert ids == _meta_pair(tok, "Hi", "Hello.") + _meta_pair(tok, "Count to 3.", "1 2 3")


BAD_DIALOGS = [
    ([], "empty"),
    ([{"role": "assistant", "content": "x"}], r"messages\[0\] has role 'assistant'"),
    ([{"role": "bot", "content": "x"}], r"messages\[0\] has role 'bot'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     r"messages\[1\] has role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
     r"messages\[1\] has role 'system'"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     r"messages\[1\] has role 'assistant'"),
    ([{"role": "system", "content": "s"}], r"messages\[0\] has role 'system'"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     r"messages\[1\] has role 'assistant'.*end with a 'user'"),
    ([{"role": "user"}], r"messages\[0\] must be a dict with 'role' and 'content'"),
    ([{"role": "user", "content": 3}], r"messages\[0\] \(role 'user'\) has non-str content"),
]


@pytest.mark.parametrize("messages,match", BAD_DIALOGS)
def test_invalid_dialogs(tok, messages, match):
  with pytest.raises(ValueError, match=match):
    tok.encode_chat(messages)


def test_invalid_examples(tok):
  user = [{"role": "user", "content": "q"}]
  with pytest.raises(ValueError, match=r"messages\[0\] must be the final 'assistant' turn"):
    tok.encode_chat_example(user)
  with pytest.raises(ValueError, match="system given twice"):
    tok.encode_chat_example([{"role": "system", "content": "s"}] + user, "r", system="s")
  with pytest.raises(ValueError, match=r"messages\[1\] has role 'assistant'"):
    tok.encode_chat_example(user + [{"role": "assistant", "content": "a"}], "r")
  with pytest.raises(TypeError):
    tok.encode_chat("not a list")


# ---- training -----------------------------------------------------------------------------------


def test_training_is_deterministic(tmp_path, tok, corpus):
  texts = corpus[:2000]
  a = train_sentencepiece(texts, tmp_path / "a", 400)
  b = train_sentencepiece(iter(texts), tmp_path / "sub" / "b", 400)  # a generator, another path
  corpus_file = tmp_path / "corpus.txt"
  corpus_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
  c = train_sentencepiece(str(corpus_file), tmp_path / "c", 400)
  model_bytes = [open(t.model_path, "rb").read() for t in (a, b, c)]
  assert model_bytes[0] == model_bytes[1] == model_bytes[2]
  assert a.vocab_size == 400
  with open(tok.model_path, "rb") as f:
    assert f.read() != model_bytes[0]  # different data / size -> different model
  assert sorted(os.listdir(tmp_path)) == ["a.model", "c.model", "corpus.txt", "sub"]


def test_training_mirrors_llama2_settings(tok):
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto.FromString(tok.model_proto())
  spec, norm = proto.trainer_spec, proto.normalizer_spec
  assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
  assert spec.byte_fallback and spec.split_digits and spec.allow_whitespace_only_pieces
  assert (spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (0, 1, 2, -1)
  assert norm.name == "identity" and norm.add_dummy_prefix and not norm.remove_extra_whitespaces
  assert not spec.model_prefix and not spec.input  # no paths baked into the model bytes
  byte_type = sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE
  assert sum(p.type == byte_type for p in proto.pieces) == 256


def test_training_is_quiet(tmp_path, capfd, corpus):
  train_sentencepiece(corpus[:500], tmp_path / "q", 400)
  out, err = capfd.readouterr()
  assert out == "" and err == ""


# ---- transformers parity ------------------------------------------------------------------------

HF_TEXTS = [
    "Hello world.",
    "The year 1999 was great, they said!",
    "Alice paid $5 (10%) on Monday, January 3rd; Bob didn't.",
    "What is 12345 + 678? It is 13023.",
    "Ordinary sentence with a comma, a colon: and a semicolon; done.",
    "Python and Llama: a question for the model.",
    " leading space, trailing space ",
    "two  spaces\nand a line break",
]


def test_transformers_agrees(tmp_path, tok, corpus):
  """transformers 5.x, loading the same tokenizer.model, encodes ordinary text like SentencePiece.

  Route: ``PreTrainedTokenizerFast.from_pretrained(dir)`` on a directory holding only
  ``tokenizer.model``, which builds the backend from the proto. Differences, accounted for below:
  it adds no BOS (``add_special_tokens`` adds nothing unless asked), and it parses a literal "<s>"
  in text as the BOS token unless ``split_special_tokens=True`` (``to_hf_tokenizer`` sets that, and
  adds BOS with ``add_bos=True``). Leading whitespace agrees (``LlamaTokenizer`` would not).
  """
  transformers = pytest.importorskip("transformers")
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  shutil.copy(tok.model_path, hf_dir / "tokenizer.model")
  plain = transformers.PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
  helper = tokenizer_lib.to_hf_tokenizer(tok)
  with_bos = tokenizer_lib.to_hf_tokenizer(tok, add_bos=True)
  for hf in (plain, helper, with_bos):
    assert len(hf) == tok.vocab_size == VOCAB_SIZE  # rules out the 3-token failure mode
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)
  texts = HF_TEXTS + [c.split("\n")[0] for c in corpus[:200]]
  for text in texts:
    ours = tok.encode(text)
    assert plain.encode(text, add_special_tokens=False) == ours, text
    assert plain.encode(text) == ours, text  # no BOS added by default
    assert helper.encode(text) == ours, text
    assert with_bos.encode(text) == [tok.bos_id] + ours, text
    assert plain.decode(ours) == tok.decode(ours) == text
  assert helper.pad_token_id == tok.pad_id == 0
  # Literal control strings: text for ours and the helper; special tokens for a default HF load.
  assert helper.encode("<s> hi </s>") == tok.encode("<s> hi </s>")
  assert plain.encode("<s> hi </s>", add_special_tokens=False)[0] == tok.bos_id
