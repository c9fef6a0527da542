"""Llama 2 tokenizer: a SentencePiece wrapper, the Llama 2 chat template, tiny-tokenizer training.

``sentencepiece.SentencePieceProcessor`` is the source of truth; this module adds only what the
method needs on top of it:

* ``Tokenizer``: encode/decode with explicit BOS/EOS flags, and Llama 2's ids (``unk=0``, ``bos=1``,
  ``eos=2``; Llama 2 has no pad piece, so ``pad_id`` is 0, the unk id; see ``Tokenizer.pad_id``).
* The Llama 2 chat template exactly as Meta's reference ``Llama.chat_completion`` builds it
  (``llama/generation.py``)::

      system, merged into the first user turn:  "<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}"
      each (user, assistant) pair:  bos + encode(f"[INST] {user} [/INST] {assistant} ") + eos
      the final user turn:          bos + encode(f"[INST] {user} [/INST]")
      (user and assistant texts .strip()-ed)

  ``encode_chat`` gives a generation prompt; ``encode_chat_example`` gives a training example
  (prompt + response) with a loss mask for SFT and DPO.
* ``train_sentencepiece``: a small, deterministic BPE model with byte fallback and Llama 2's
  special ids and normalisation, for the tiny models of the embedded default and the tests.
* ``to_hf_tokenizer``: a ``transformers`` tokenizer built from the same model proto (for peers and
  parity tests).

Control tokens are only ever added explicitly (``bos=True``/``eos=True`` or by the chat template):
``encode`` treats text such as ``"<s>"``, ``"</s>"`` or ``"[INST]"`` as plain text, so user or model
text can never inject a BOS/EOS id. (It can still *spell* ``[INST]``; Meta's reference refuses such
dialogs, here ``has_special_tags`` lets callers filter them.)
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import sentencepiece as spm

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
ROLES = ("system", "user", "assistant")

Message = Mapping[str, str]
PathLike = Union[str, "os.PathLike[str]"]


def has_special_tags(text: str) -> bool:
  """True if ``text`` contains a chat-template tag (``[INST]``, ``[/INST]``, ``<<SYS>>``,
  ``<</SYS>>``). Meta's ``chat_completion`` refuses dialogs that do; ``encode_chat`` encodes them
  as plain text, so filtering is the caller's choice (e.g. for self-generated prompts)."""
  return any(tag in text for tag in SPECIAL_TAGS)


class Tokenizer:
  """A SentencePiece model (Llama 2's ``tokenizer.model`` or one from ``train_sentencepiece``).

  Immutable after construction; safe to share between threads and picklable (the serialized model
  proto travels with it).
  """

  def __init__(self, model_path: PathLike):
    """Loads the SentencePiece model at ``model_path``; raises ``FileNotFoundError`` if absent."""
    path = os.fspath(model_path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"SentencePiece model not found: {path}")
    self._init(spm.SentencePieceProcessor(model_file=path), path)

  @classmethod
  def from_bytes(cls, model_proto: bytes) -> "Tokenizer":
    """A tokenizer from a serialized ``ModelProto`` (e.g. ``tok.model_proto()``); its ``model_path``
    is ``None``."""
    tok = cls.__new__(cls)
    tok._init(spm.SentencePieceProcessor(model_proto=model_proto), None)
    return tok

  def _init(self, sp: spm.SentencePieceProcessor, path: Optional[str]) -> None:
    self._sp = sp
    self._model_path = path
    for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id())):
      if i < 0:
        raise ValueError(f"the SentencePiece model has no {name} piece; Llama models need one")

  def __getstate__(self) -> dict:
    return {"model_proto": self.model_proto(), "model_path": self._model_path}

  def __setstate__(self, state: dict) -> None:
    self._init(spm.SentencePieceProcessor(model_proto=state["model_proto"]), state["model_path"])

  def __repr__(self) -> str:
    return (f"Tokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, eos_id={self.eos_id}, "
            f"pad_id={self.pad_id}, model_path={self._model_path!r})")

  # ---- properties -------------------------------------------------------------------------------

  @property
  def processor(self) -> spm.SentencePieceProcessor:
    """The underlying ``SentencePieceProcessor`` (do not mutate it)."""
    return self._sp

  @property
  def model_path(self) -> Optional[str]:
    """Path the model was loaded from; ``None`` for ``from_bytes``."""
    return self._model_path

  @property
  def vocab_size(self) -> int:
    """Number of pieces (32000 for Llama 2); every id is in ``[0, vocab_size)``."""
    return self._sp.get_piece_size()

  @property
  def bos_id(self) -> int:
    """Beginning-of-sequence id (1 for Llama 2)."""
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    """End-of-sequence id (2 for Llama 2)."""
    return self._sp.eos_id()

  @property
  def unk_id(self) -> int:
    """Unknown-piece id (0 for Llama 2; never produced by models with byte fallback)."""
    return self._sp.unk_id()

  @property
  def pad_id(self) -> int:
    """Padding id: the model's pad piece if it has one, else the unk id.

    Llama 2 has no pad piece (``pad_id() == -1`` in SentencePiece), so this is 0 (= unk), which is
    also what JetStream asserts. Padded positions must always be masked out (attention and loss);
    with byte fallback ``encode`` never produces id 0, and ``decode`` drops it.
    """
    pad = self._sp.pad_id()
    return pad if pad >= 0 else self._sp.unk_id()

  def model_proto(self) -> bytes:
    """The serialized SentencePiece ``ModelProto`` (``Tokenizer.from_bytes`` inverts this)."""
    return self._sp.serialized_model_proto()

  def id_to_piece(self, i: int) -> str:
    """The piece string of id ``i`` (e.g. ``"▁the"``, ``"<0x0A>"``, ``"</s>"``)."""
    return self._sp.id_to_piece(int(i))

  # ---- text <-> ids -----------------------------------------------------------------------------

  def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
    """Token ids of ``text``, optionally with BOS prepended and/or EOS appended.

    Exactly ``SentencePieceProcessor.encode`` (so, like Meta's ``Tokenizer.encode``, a dummy-prefix
    space is added in front: ``encode("hi")`` encodes ``"▁hi"``). Literal ``"<s>"``/``"</s>"`` in
    ``text`` are encoded as text, never as control ids.
    """
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}")
    ids = self._sp.encode(text)
    if bos:
      ids = [self.bos_id] + ids
    if eos:
      ids = ids + [self.eos_id]
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ``ids`` with every BOS, EOS and pad (= unk for Llama 2) id dropped first.

    ``ids`` may be any iterable of integers (list, numpy or jax array). Dropping, not truncating:
    cut generations at their first EOS before decoding. ``decode(encode(s)) == s`` for any ``s``
    (byte fallback; the dummy-prefix space is removed again), except that a literal ``"▁"``
    (U+2581, SentencePiece's space marker) decodes as a space, as in Llama 2. Raises ``ValueError``
    on ids outside ``[0, vocab_size)``.
    """
    skip = {self.bos_id, self.eos_id, self.pad_id}
    n = self.vocab_size
    kept = []
    for i in ids:
      i = int(i)
      if not 0 <= i < n:
        raise ValueError(f"token id {i} out of range [0, {n})")
      if i not in skip:
        kept.append(i)
    return self._sp.decode(kept)

  # ---- Llama 2 chat template --------------------------------------------------------------------

  def encode_chat(self, messages: Sequence[Message]) -> list[int]:
    """Token ids of a dialog in Meta's Llama 2 chat format, as a prompt for generation.

    ``messages``: dicts with ``role`` in ``system``/``user``/``assistant`` and ``content`` (str): an
    optional leading ``system`` message, then ``user``/``assistant`` alternating, starting and
    ending with ``user``. The system text is merged into the first user message as
    ``"<<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}"`` (then stripped as a whole, as Meta does). Each
    (user, assistant) pair becomes ``bos + encode(f"[INST] {u} [/INST] {a} ") + eos``; the final
    user message ``bos + encode(f"[INST] {u} [/INST]")`` (both stripped). The model continues after
    ``[/INST]``. Raises ``ValueError`` naming the offending message index and role.
    """
    turns = _merge_system(_validate(messages))
    if len(turns) % 2 != 1:
      raise ValueError(f"messages[{len(messages) - 1}] has role 'assistant': a chat prompt must "
                       "end with a 'user' message (use encode_chat_example for a full example)")
    ids: list[int] = []
    for user, answer in zip(turns[0:-1:2], turns[1::2]):
      ids += self.encode(f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ", bos=True, eos=True)
    ids += self.encode(f"{B_INST} {turns[-1].strip()} {E_INST}", bos=True)
    return ids

  def chat_prompt(self, user: str, system: Optional[str] = None) -> list[int]:
    """``encode_chat`` of a single user turn, with an optional system prompt (``None``: no system
    block; ``""``: an empty ``<<SYS>>`` block, as Meta would format it)."""
    return self.encode_chat(_single_turn(user, system))

  def encode_chat_example(
      self,
      messages_or_prompt: Union[str, Sequence[Message]],
      response: Optional[str] = None,
      system: Optional[str] = None,
  ) -> Tuple[list[int], list[int]]:
    """A training example: (prompt + response ids, loss mask), both lists of the same length.

    The prompt is a user string (with optional ``system``) or a message list ending with a user
    turn (``system`` then must be ``None`` or the list must not start with a system message; it is
    prepended). If ``response`` is ``None``, the message list must end with an assistant turn,
    which becomes the response.

    ``ids = prompt_ids + response_ids`` with ``prompt_ids = encode_chat(prompt)`` (exactly the
    prefix a model sees at generation time) and ``response_ids = encode(f"{response.strip()} ") +
    [eos]``, i.e. the tokens of ``" {response.strip()} "`` + EOS that Meta's format puts after
    ``[/INST]`` (the leading space is SentencePiece's dummy prefix; the trailing space is Meta's, so
    a finished turn tokenizes as it would in later dialog history). Prompt and response are encoded
    separately and concatenated, so the prompt/response boundary never depends on SentencePiece
    merging across it. For Llama-style models (whitespace-split pieces) the result also equals
    Meta's joint encoding of the whole turn. ``mask`` is 1 exactly on ``response_ids`` (response
    tokens and the closing EOS) and 0 on the prompt.
    """
    if isinstance(messages_or_prompt, str):
      messages = _single_turn(messages_or_prompt, system)
    else:
      messages = list(messages_or_prompt)
      if system is not None:
        if messages and isinstance(messages[0], Mapping) and messages[0].get("role") == "system":
          raise ValueError("system given twice: as the argument and as messages[0]")
        messages = [{"role": "system", "content": system}] + messages
    if response is None:
      _validate(messages)
      if not messages or messages[-1]["role"] != "assistant":
        role = messages[-1]["role"] if messages else None
        raise ValueError(f"response is None, so messages[{len(messages) - 1}] must be the final "
                         f"'assistant' turn, got role {role!r}")
      response = messages[-1]["content"]
      messages = messages[:-1]
    if not isinstance(response, str):
      raise TypeError(f"response must be a str, got {type(response).__name__}")
    prompt_ids = self.encode_chat(messages)
    response_ids = self.encode(f"{response.strip()} ", eos=True)
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


def _single_turn(user: str, system: Optional[str]) -> list[dict]:
  messages = [] if system is None else [{"role": "system", "content": system}]
  return messages + [{"role": "user", "content": user}]


def _validate(messages: Sequence[Message]) -> Sequence[Message]:
  """Checks roles/contents: optional system first, then user/assistant alternating from user."""
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise TypeError(f"messages must be a sequence of dicts, got {type(messages).__name__}")
  if not messages:
    raise ValueError("messages is empty: a dialog needs at least one 'user' message")
  offset = 0
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
      raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}")
    role = m["role"]
    if role not in ROLES:
      raise ValueError(f"messages[{i}] has role {role!r}; roles must be one of {ROLES}")
    if not isinstance(m["content"], str):
      raise ValueError(f"messages[{i}] (role {role!r}) has non-str content: "
                       f"{type(m['content']).__name__}")
    if i == 0 and role == "system":
      offset = 1
      continue
    expected = "user" if (i - offset) % 2 == 0 else "assistant"
    if role != expected:
      raise ValueError(f"messages[{i}] has role {role!r} where {expected!r} is expected (a dialog "
                       "is an optional 'system' message, then 'user' and 'assistant' alternating, "
                       "starting with 'user')")
  if offset == 1 and len(messages) == 1:
    raise ValueError("messages[0] has role 'system' but no 'user' message follows it")
  return messages


def _merge_system(messages: Sequence[Message]) -> list[str]:
  """Contents of the user/assistant turns, the system text merged into the first user turn."""
  contents = [m["content"] for m in messages]
  if messages[0]["role"] == "system":
    contents = [B_SYS + contents[0] + E_SYS + contents[1]] + contents[2:]
  return contents


# ---- training -----------------------------------------------------------------------------------

# Llama 2's trainer/normalizer settings (from its tokenizer.model) that shape how text is split.
_LLAMA2_SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    split_digits=True,
    split_by_unicode_script=True,
    split_by_whitespace=True,
    allow_whitespace_only_pieces=True,
    max_sentence_length=4192,
)


def _lines(texts_or_path: Union[PathLike, Iterable[str]]) -> Iterator[str]:
  if isinstance(texts_or_path, (str, os.PathLike)):
    with open(texts_or_path, encoding="utf-8") as f:
      for line in f:
        line = line.rstrip("\n")
        if line:
          yield line
    return
  for text in texts_or_path:
    if not isinstance(text, str):
      raise TypeError(f"training texts must be str, got {type(text).__name__}")
    for line in text.splitlines():
      if line:
        yield line


def train_sentencepiece(
    texts_or_path: Union[PathLike, Iterable[str]],
    model_prefix: PathLike,
    vocab_size: int = 512,
    *,
    character_coverage: float = 0.99995,
    **trainer_kwargs: Any,
) -> Tokenizer:
  """Trains a Llama-2-style BPE SentencePiece model and writes ``{model_prefix}.model``.

  ``texts_or_path``: a path (str or PathLike) to a UTF-8 text file, or an iterable of strings. Each
  line is one training sentence (texts are split on newlines, empty lines skipped); lines longer
  than 4192 bytes are skipped by SentencePiece.

  The model mirrors Llama 2's settings: BPE with byte fallback (so every string round-trips),
  ``unk_id=0, bos_id=1, eos_id=2``, no pad piece, identity normalisation, kept whitespace, a dummy
  prefix, digits split. ``vocab_size`` counts everything (3 specials + 256 byte pieces + merges +
  characters), so it must exceed 259 plus the number of kept characters; SentencePiece raises
  ``RuntimeError`` if it is unreachable for the corpus. ``trainer_kwargs`` override or extend the
  ``SentencePieceTrainer`` options.

  Deterministic: one thread, no sentence sampling or shuffling, and the model file does not record
  the input or output paths, so the same texts and options give byte-identical model files. Quiet:
  SentencePiece logs errors only. Returns the loaded ``Tokenizer``.
  """
  options = dict(_LLAMA2_SPEC)
  options.update(
      vocab_size=vocab_size,
      character_coverage=character_coverage,
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      minloglevel=2,
  )
  options.update(trainer_kwargs)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=_lines(texts_or_path), model_writer=buf,
                                 **options)
  path = os.fspath(model_prefix) + ".model"
  from selfreward_jax.data.jsonl import atomic_open  # pylint: disable=g-import-not-at-top
  # atomic: a reader never sees a half-written model (multi-process: process 0 writes, all wait)
  with atomic_open(path, "wb") as f:
    f.write(buf.getvalue())
  return Tokenizer(path)


# ---- transformers interop -----------------------------------------------------------------------


def to_hf_tokenizer(tok: Tokenizer, *, add_bos: bool = False) -> Any:
  """A ``transformers`` fast tokenizer built from the same SentencePiece model proto.

  Route (transformers 5.x): ``PreTrainedTokenizerFast.from_pretrained(dir)`` on a directory that
  holds only ``tokenizer.model``; transformers then builds the backend from the proto with
  ``SpmConverter.build_tokenizer_from_spm_proto``, which follows the model's normaliser spec and
  encodes like SentencePiece, leading whitespace included. (Avoid
  ``LlamaTokenizer(vocab_file=...)``, which silently builds a 3-token tokenizer, and
  ``LlamaTokenizer.from_pretrained``, whose ``legacy=False`` pre-tokenizer drops a leading space.)

  The result: ``hf.encode(text, add_special_tokens=False) == tok.encode(text)``; with
  ``add_special_tokens=True`` it prepends BOS iff ``add_bos``. Literal ``"<s>"``/``"</s>"`` in text
  stay text (``split_special_tokens=True``), as in ``tok.encode``. ``pad_token`` is the piece of
  ``tok.pad_id``. Its ``decode`` follows HF conventions (``skip_special_tokens``), not
  ``tok.decode``.
  """
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  sp = tok.processor
  with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "tokenizer.model"), "wb") as f:
      f.write(tok.model_proto())
    hf = PreTrainedTokenizerFast.from_pretrained(
        d,
        split_special_tokens=True,
        add_bos_token=add_bos,
        add_eos_token=False,
        bos_token=sp.id_to_piece(tok.bos_id),
        eos_token=sp.id_to_piece(tok.eos_id),
        unk_token=sp.id_to_piece(tok.unk_id),
        pad_token=sp.id_to_piece(tok.pad_id),
    )
  if len(hf) != tok.vocab_size:
    raise RuntimeError(f"transformers built a tokenizer of {len(hf)} tokens from a model of "
                       f"{tok.vocab_size} pieces")
  return hf


__all__ = [
    "B_INST",
    "E_INST",
    "B_SYS",
    "E_SYS",
    "SPECIAL_TAGS",
    "Tokenizer",
    "has_special_tags",
    "train_sentencepiece",
    "to_hf_tokenizer",
]
