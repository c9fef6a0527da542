"""data.batching: tokenization and loss masks, skip rules, malformed input, buckets, packing,
deterministic shuffling and resumable positions."""

import json
import logging

import numpy as np
import pytest

from selfreward_jax.data import batching
from selfreward_jax.data.jsonl import DataError
from test_train_support import make_tokenizer, pair_records, sft_records, write_lines


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_sft_examples_mask_exactly_the_response(tok, tmp_path):
  recs = [{"prompt": "the cat runs", "response": "a dog sleeps"},
          {"messages": [{"role": "user", "content": "one two"},
                        {"role": "assistant", "content": "three four"},
                        {"role": "user", "content": "five"},
                        {"role": "assistant", "content": "big tree"}]},
          {"prompt": "blue", "response": "red", "system": "be brief"}]
  ex, stats = batching.load_sft_examples(write_lines(tmp_path / "a.jsonl", recs), tok, 128)
  assert stats.kept == 3 and stats.total_skipped == 0
  for e, want in zip(ex, ["a dog sleeps", "big tree", "red"]):
    resp = e.ids[e.loss_mask == 1]
    assert resp[-1] == tok.eos_id
    assert tok.decode(resp).strip() == want
    prompt = e.ids[e.loss_mask == 0]
    assert prompt[0] == tok.bos_id and "[/INST]" in tok.decode(prompt)
  assert "be brief" in tok.decode(ex[2].ids)
  assert "three four" in tok.decode(ex[1].ids[ex[1].loss_mask == 0])  # earlier turns: context


def test_skip_rules_are_counted_with_lines(tok, tmp_path):
  long = " ".join(["the cat"] * 200)
  recs = [{"prompt": "a", "response": "b c"}, {"prompt": "a", "response": "   "},
          {"prompt": long, "response": "x"}, {"prompt": "d", "response": "e"}]
  ex, stats = batching.load_sft_examples(write_lines(tmp_path / "s.jsonl", recs), tok, 64)
  assert len(ex) == 2 and [e.line for e in ex] == [1, 4]
  assert dict(stats.skipped) == {"empty_response": 1, "too_long": 1}
  assert stats.lines == {"empty_response": [2], "too_long": [3]}
  pairs = [{"prompt": "p", "chosen": "yes", "rejected": "no"},
           {"prompt": "p", "chosen": " same answer", "rejected": "same answer "},
           {"prompt": "p", "chosen": "", "rejected": "no"},
           {"prompt": "p", "chosen": long, "rejected": "no"},
           {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}]
  got, pstats = batching.load_preference_pairs(write_lines(tmp_path / "p.jsonl", pairs), tok, 64)
  assert [p.line for p in got] == [1, 5]
  assert dict(pstats.skipped) == {"identical_pair": 1, "empty_response": 1, "too_long": 1}
  assert (got[0].chosen_ids[got[0].chosen_mask == 0] ==
          got[0].rejected_ids[got[0].rejected_mask == 0]).all()  # shared prompt


def test_skip_log_line_reports_the_counts_of_data_stats(tok, tmp_path, caplog):
  """``SkipStats.log`` states exactly what ``to_dict`` (data_stats.json) records: kept, total and
  each skip reason; an info line when nothing was skipped, a warning otherwise."""
  caplog.set_level(logging.INFO)
  logger = logging.getLogger("test_batching.skips")
  clean = write_lines(tmp_path / "clean.jsonl", sft_records(3))
  _, stats = batching.load_sft_examples(clean, tok, 128)
  stats.log(logger)
  (rec,) = caplog.records
  assert rec.levelno == logging.INFO
  assert rec.getMessage() == f"{clean}: 3 examples, none skipped"
  assert stats.to_dict()["kept"] == 3 and stats.to_dict()["skipped"] == {}
  caplog.clear()
  long = " ".join(["the cat"] * 200)
  pairs = write_lines(tmp_path / "p.jsonl", pair_records(3) + [
      {"prompt": "p", "chosen": "same", "rejected": " same"}, {"prompt": long, "chosen": "a",
                                                               "rejected": "b"}])
  _, pstats = batching.load_preference_pairs(pairs, tok, 128)
  pstats.log(logger)
  (rec,) = caplog.records
  d = pstats.to_dict()
  assert rec.levelno == logging.WARNING and d["kept"] == 3
  assert rec.getMessage().startswith(f"{pairs}: kept 3 of 5 examples; skipped ")
  for reason, n in d["skipped"].items():
    assert f"{reason}={n} (e.g. lines {d['first_skipped_lines'][reason][:3]})" in rec.getMessage()
  assert d["skipped"] == {"identical_pair": 1, "too_long": 1}


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "a", "response": "b"', r"invalid JSON"),
    ('{"prompt": "a"}', r"'response': missing"),
    ('{"prompt": 3, "response": "b"}', r"'prompt': expected str"),
    ('{"messages": [{"role": "assistant", "content": "b"}]}', r"role 'assistant'"),
    ('{"messages": [{"role": "user", "content": "b"}]}', r"last message must be the assistant"),
    ('[1, 2]', r"expected a JSON object"),
])
def test_malformed_sft_line_names_file_and_line(tok, tmp_path, line, match):
  path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "", line])
  with pytest.raises(DataError, match=match) as e:
    batching.load_sft_examples(path, tok, 64)
  assert e.value.line == 3 and f"bad.jsonl:3" in str(e.value)


def test_malformed_pair_line(tok, tmp_path):
  path = write_lines(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                           {"prompt": "a", "chosen": "b"}])
  with pytest.raises(DataError, match=r"p.jsonl:2: field 'rejected': missing"):
    batching.load_preference_pairs(path, tok, 64)


def _sft(tok, tmp_path, n=10, **kw):
  ex, _ = batching.load_sft_examples(write_lines(tmp_path / "d.jsonl", sft_records(n, **kw)), tok,
                                     256)
  return ex


def _batcher(ex, **kw):
  import functools
  args = dict(batch_size=4, buckets=(16, 32, 64, 128), seed=3)
  args.update(kw)
  return batching.Batcher([len(e) for e in ex], functools.partial(batching.collate_sft, ex),
                          **args)


def test_epochs_are_permutations_deterministic_by_seed(tok, tmp_path):
  ex = _sft(tok, tmp_path, n=10)
  order = lambda seed, epoch: list(batching.epoch_order(10, seed, epoch))
  assert order(3, 0) == order(3, 0) and sorted(order(3, 0)) == list(range(10))
  assert order(3, 0) != order(3, 1) and order(3, 0) != order(4, 0)
  b = _batcher(ex)
  seen = []
  for _ in range(5):  # 20 rows = exactly two epochs
    batch = b.next_batch()
    for row in batch["tokens"].reshape(-1, batch["tokens"].shape[-1]):
      n = int((row != 0).sum())
      seen.append(next(i for i, e in enumerate(ex) if len(e) == n and (e.ids == row[:n]).all()))
  assert seen == order(3, 0) + order(3, 1)
  assert b.position == batching.DataPosition(2, 0)


def test_resume_from_position_gives_the_same_batches(tok, tmp_path):
  ex = _sft(tok, tmp_path, n=7)
  a = _batcher(ex, microbatches=2)
  for _ in range(3):
    a.next_batch()
  pos = batching.DataPosition.from_dict(json.loads(json.dumps(a.position.to_dict())))
  b = _batcher(ex, microbatches=2, position=pos)
  for _ in range(4):
    x, y = a.next_batch(), b.next_batch()
    assert x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)
    assert x["tokens"].shape[:2] == (2, 2)


def test_padding_uses_few_bucket_lengths(tok, tmp_path):
  ex = _sft(tok, tmp_path, n=40, prompt_words=2, response_words=2)  # ~32 tokens
  ex += _sft(tok, tmp_path, n=8, response_words=20)  # ~115 tokens
  b = _batcher(ex, buckets=batching.default_buckets(128, 16))
  shapes = {b.next_batch()["tokens"].shape for _ in range(24)}
  assert {s[-1] for s in shapes} <= {32, 64, 128} and len(shapes) >= 2
  assert batching.default_buckets(100, 16) == (16, 32, 64, 100)
  with pytest.raises(ValueError, match="exceeds the largest bucket"):
    _batcher(ex, buckets=(16,))


def test_packing_segments_positions_and_step_count(tok, tmp_path):
  ex = _sft(tok, tmp_path, n=9, prompt_words=2, response_words=2)  # ~32 tokens: ~4 per row
  b = _batcher(ex, batch_size=2, buckets=(64, 128), pack=True)
  batch = b.next_batch()
  tokens, seg, pos, mask = (batch[k][0] for k in ("tokens", "segment_ids", "positions", "loss_mask"))
  assert tokens.shape[-1] in (64, 128)
  lengths = {len(e) for e in ex}
  for r in range(tokens.shape[0]):
    segs = [s for s in np.unique(seg[r]) if s]
    assert len(segs) >= 2  # several whole examples per row
    for s in segs:
      where = np.flatnonzero(seg[r] == s)
      assert (np.diff(where) == 1).all() and (pos[r][where] == np.arange(len(where))).all()
      assert len(where) in lengths and tokens[r][where[0]] == tok.bos_id
      assert mask[r][where][-1] == 1 and tokens[r][where[-1]] == tok.eos_id
    assert (tokens[r][seg[r] == 0] == 0).all() and (mask[r][seg[r] == 0] == 0).all()
  # count_steps agrees with walking the stream through 2 epochs
  steps = b.count_steps(2.0)
  c = _batcher(ex, batch_size=2, buckets=(64, 128), pack=True)
  n = 0
  while c.position.epoch * 9 + c.position.index < 18:
    c.next_batch()
    n += 1
  assert steps == n and n < 18 / 2  # packing needs fewer steps than one example per row
  assert _batcher(ex, batch_size=4).count_steps(1.5) == 4  # ceil(13.5 / 4)


def test_pair_collation_and_reference_gather(tok, tmp_path):
  pairs, _ = batching.load_preference_pairs(write_lines(tmp_path / "p.jsonl", pair_records(5)),
                                            tok, 128)
  ref = (np.arange(5, dtype=np.float32), -np.arange(5, dtype=np.float32))
  batch = batching.collate_pairs(pairs, [[3], [1]], 128, ref_logps=ref)
  assert batch["chosen_tokens"].shape == (2, 128)
  np.testing.assert_array_equal(batch["ref_chosen_logps"], [3, 1])
  np.testing.assert_array_equal(batch["ref_rejected_logps"], [-3, -1])
  n = len(pairs[3].rejected_ids)
  assert batch["rejected_attention_mask"][0].sum() == n
  np.testing.assert_array_equal(batch["rejected_tokens"][0, :n], pairs[3].rejected_ids)
  assert batching.fingerprint(pairs) == batching.fingerprint(list(pairs))
  assert batching.fingerprint(pairs) != batching.fingerprint(pairs[::-1])


def test_default_system_prompt_applies_only_where_none_is_given(tok, tmp_path):
  recs = [{"prompt": "a", "response": "b"},
          {"prompt": "a", "response": "b", "system": "own rules"},
          {"messages": [{"role": "system", "content": "msg rules"}, {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "b"}]}]
  ex, _ = batching.load_sft_examples(write_lines(tmp_path / "s.jsonl", recs), tok, 128,
                                     system="house rules")
  texts = [tok.decode(e.ids) for e in ex]
  assert "house rules" in texts[0]
  assert "own rules" in texts[1] and "house rules" not in texts[1]
  assert "msg rules" in texts[2] and "house rules" not in texts[2]
