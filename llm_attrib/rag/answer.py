"""The generated answer: where it ends, and whether `max_new_tokens` cut it before it did.

A chat model asked a question over documents often answers in a sentence and then goes on (to the other
documents, to a second paragraph) until the token budget cuts it mid-sentence; explaining that tail explains what
the user did not ask about. So the answer ends at the model's end of turn, at the end of its first paragraph (a
blank line) or after a budget of sentences, whichever comes first; only an answer that reaches none of these
within `max_new_tokens` is truncated.
"""

from __future__ import annotations

import re

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..errors import InvalidInputError
from .sentences import split_sentences

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")
_INTRODUCES = (":", "\uff1a")  # "The answer is:" then a blank line: the answer follows it


def answer_end(text: str, max_sentences: int | None, language: str | None = None) -> int | None:
    """Where the answer in `text` ends: the first blank line after its first content (unless what precedes it
    ends in a colon, introducing what follows), or the end of its `max_sentences`-th sentence once a further
    sentence has begun; None while it may still go on."""
    body = len(text) - len(text.lstrip())
    paragraph = next((m for m in _PARAGRAPH.finditer(text, body) if not text[:m.start()].rstrip().endswith(_INTRODUCES)),
                     None)
    head = text if paragraph is None else text[:paragraph.start()]
    if max_sentences is not None:
        sentences = split_sentences(head, language)
        if len(sentences) > max_sentences:
            return sentences[max_sentences - 1][1]
    return None if paragraph is None else paragraph.start()


class _AnswerEnded(StoppingCriteria):
    """Stops generation once the text generated after the prompt has ended (`answer_end`)."""

    def __init__(self, tokenizer, n_prompt: int, max_sentences: int | None, language: str | None):
        self.tokenizer, self.n_prompt, self.max_sentences, self.language = tokenizer, n_prompt, max_sentences, language

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        text = self.tokenizer.decode(input_ids[0, self.n_prompt:], skip_special_tokens=True)
        ended = answer_end(text, self.max_sentences, self.language) is not None
        return torch.full((input_ids.shape[0],), ended, dtype=torch.bool, device=input_ids.device)


def generate_answer(attributor, prompt, max_new_tokens: int, max_sentences: int | None,
                    language: str | None = None) -> tuple[list[int], bool]:
    """The greedy answer's token ids, cut where it ends (its end-of-turn token and what follows are dropped, as is
    anything after the end of its first paragraph or sentence budget), and whether `max_new_tokens` cut it first."""
    tokenizer = attributor.tokenizer
    n_prompt = len(attributor._encode_prompt(prompt)[1])
    stop = StoppingCriteriaList([_AnswerEnded(tokenizer, n_prompt, max_sentences, language)])
    generated = attributor.sequence(prompt, max_new_tokens=max_new_tokens, stopping_criteria=stop).target_ids.tolist()
    special = set(tokenizer.all_special_ids)
    ids = next((generated[:i] for i, token in enumerate(generated) if token in special), generated)
    ended = len(ids) < len(generated)  # the model ended its turn
    if not ids:
        raise InvalidInputError("the model answered nothing (it ended its turn at once); pass answer= to explain one.")
    seq = attributor.sequence(prompt, answer=ids)
    first = seq.offsets[seq.n_prompt][0]
    end = answer_end(seq.text[first:], max_sentences, language)
    if end is not None:
        return ids[:sum(1 for start, _ in seq.offsets[seq.n_prompt:] if start < first + end)], False
    return ids, not ended and len(generated) >= max_new_tokens
