"""The verifiable task world behind the embedded default run (pure Python, no JAX).

Procedurally generated instruction tasks (arithmetic, string transformations, sorting/selection,
counting, and generate/verify-gap families) with exact oracles, deterministic seeded sampling with
disjoint splits, parsing of prompt text back into tasks, and the corpora and seed datasets the
self-rewarding pipeline needs (pretraining corpus for M0, tokenizer corpus, IFT examples, EFT
candidates with oracle rankings). See ``families`` for the task list and ``base`` for the answer
format and scoring rule.
"""

from selfreward_jax.synthetic.base import (ANSWER_PREFIX, Family, Grade, Template, extract_answer,
                                           format_response)
from selfreward_jax.synthetic.corpus import (chat_text, eft_candidates, ift_examples,
                                             pretraining_corpus, pretraining_examples, task_of,
                                             tokenizer_corpus)
from selfreward_jax.synthetic.families import CATEGORIES, FAMILIES, get_family
from selfreward_jax.synthetic.judging import (candidate_responses, oracle_judgement, oracle_rank,
                                              rank_agreement, rubric_points)
from selfreward_jax.synthetic.tasks import Oracle, Task, oracle_score, parse_task
from selfreward_jax.synthetic.world import DEFAULT_SPLITS, TaskWorld, prompt_validity, split_of

__all__ = [
    "ANSWER_PREFIX", "CATEGORIES", "DEFAULT_SPLITS", "FAMILIES", "Family", "Grade", "Oracle",
    "Task", "TaskWorld", "Template", "candidate_responses", "chat_text", "eft_candidates",
    "extract_answer", "format_response", "get_family", "ift_examples", "oracle_judgement",
    "oracle_rank", "oracle_score", "parse_task", "pretraining_corpus", "pretraining_examples",
    "prompt_validity",
    "rank_agreement", "rubric_points", "split_of", "task_of", "tokenizer_corpus",
]
