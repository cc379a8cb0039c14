"""Chat prompts: the template is applied, its markup is kept by baselines and reported apart from content."""

import pytest
import torch

from llm_attrib import Attributor, InvalidInputError
from llm_attrib.core.chat import render_chat
from tiny_tokenizer import tiny_llama, tiny_tokenizer

# Role markers are the words w40..w44 of the tiny vocabulary.
TEMPLATE = ("{% for m in messages %}w40 {{ 'w41' if m['role'] == 'user' else 'w42' }} {{ m['content'] }} w43 "
            "{% endfor %}{% if add_generation_prompt %}w44{% endif %}")
MESSAGES = [{"role": "system", "content": "w5 w6"}, {"role": "user", "content": "w1 w7 w3"}]


@pytest.fixture(scope="module")
def chat_lm():
    tokenizer = tiny_tokenizer(64, bos=False)
    tokenizer.chat_template = TEMPLATE
    return tiny_llama(), tokenizer


def test_content_spans_are_exact(chat_lm):
    _, tokenizer = chat_lm
    text, spans = render_chat(tokenizer, MESSAGES)
    assert text == "w40 w42 w5 w6 w43 w40 w41 w1 w7 w3 w43 w44"
    assert [text[a:b] for a, b in spans] == ["w5 w6", "w1 w7 w3"]


@pytest.mark.parametrize("space", ["embeddings", "attention"])
def test_markup_is_kept_by_the_baseline_and_reported_apart(chat_lm, space):
    model, tokenizer = chat_lm
    exp = Attributor(model, tokenizer, show_progress=False).explain(MESSAGES, answer="w9 w10", space=space)
    markup = [t in ("w40", "w41", "w42", "w43", "w44") for t in exp.input_tokens[: exp.n_prompt_tokens]]
    assert exp.input_markup[: exp.n_prompt_tokens] == markup
    assert exp.input_markup[exp.n_prompt_tokens:] == [False]  # the first answer token is content
    if space == "embeddings":  # markup has the same value at both ends of the path: exactly zero
        assert exp.scores[:, torch.tensor(exp.input_markup)].abs().max() == 0
        assert exp.markup_share.max() == 0
    assert all(tok not in ("w40", "w41", "w42", "w43", "w44") for tok, _ in exp.top_tokens(0, k=5))
    assert 0 <= float(exp.markup_share.max()) <= 1


def test_template_that_changes_content_is_refused():
    trimming = tiny_tokenizer(64, bos=False)
    trimming.chat_template = "{% for m in messages %}w40 {{ m['content'] | upper }} w43 {% endfor %}"
    with pytest.raises(InvalidInputError, match="changes the messages' text"):
        render_chat(trimming, [{"role": "user", "content": "w1 w2"}])


def test_bad_messages_get_a_clear_error(chat_lm):
    _, tokenizer = chat_lm
    with pytest.raises(InvalidInputError, match="chat messages"):
        render_chat(tokenizer, [{"role": "user"}])
    with pytest.raises(InvalidInputError, match="no chat template"):
        render_chat(tiny_tokenizer(64), MESSAGES)
