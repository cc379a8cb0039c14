"""Words and answer offsets on the real tokenizer families: byte-level BPE with leading spaces (SmolLM2, a GPT-2-style
one built here), SentencePiece-style `▁` (built here), WordPiece `##` (BERT), and the zoo's word-level tokenizers.
No model runs: the explained sequence is built by the package's own tokenising steps, the scores are random."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import llm_attrib
from llm_attrib import Explanation
from llm_attrib.core.chat import outside_spans, render_chat
from llm_attrib.core.sequence import build_sequence, special_token_mask

CORPUS = ["Is Kilimanjaro in Japan? No, Kilimanjaro is in Tanzania; Mount Fuji is in Japan.",
          "The café served crème brûlée to a naïve tourist. Unbelievably tall mountains!"] * 20
QUESTION = "Is Kilimanjaro in Japan?"
ANSWER = "No, Kilimanjaro is in Tanzania."


def gpt2_style() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like GPT-2's (space carried at the start of a token), trained on a tiny corpus."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def sentencepiece_style() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer: spaces become `▁` at the start of a piece (Llama 2, T5, Gemma)."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TOKENIZERS = {
    "smollm2": lambda: AutoTokenizer.from_pretrained(llm_attrib.zoo.path("smollm2")),
    "gpt2-style": gpt2_style,
    "sentencepiece-style": sentencepiece_style,
    "bert-wordpiece": lambda: AutoTokenizer.from_pretrained(llm_attrib.zoo.path("sentiment")),
    "zoo-rag": lambda: PreTrainedTokenizerFast.from_pretrained(llm_attrib.zoo.path("rag")),
    "zoo-recall": lambda: PreTrainedTokenizerFast.from_pretrained(llm_attrib.zoo.path("recall")),
}


def sentence(name: str) -> tuple[str, str]:
    """A question and answer in the tokenizer's vocabulary (the zoo's models know only their task's words)."""
    if name.startswith("zoo-"):
        example = llm_attrib.zoo.examples(name[4:], n=1, seed=0)[0]
        return example["prompt"], example["answer"]
    return QUESTION, ANSWER


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def named_tokenizer(request):
    return request.param, TOKENIZERS[request.param]()


def explanation(tokenizer, question: str, answer: str | None) -> Explanation:
    """An explanation of `answer` after `question` (as a chat when the tokenizer has a template), tokenised as the
    Attributor does, with random scores."""
    if tokenizer.chat_template:
        text, spans = render_chat(tokenizer, [{"role": "user", "content": question}])
    else:
        text, spans = question, [(0, len(question))]
    encoding = tokenizer(text, add_special_tokens=not tokenizer.chat_template, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]
    markup = [s or m for s, m in zip(special_token_mask(tokenizer, ids).tolist(), outside_spans(offsets, spans))]
    if answer is None:  # a classifier's explanation: the prompt alone
        n, tokens, n_targets, keep = len(ids), tokenizer.convert_ids_to_tokens(ids), 1, markup
        target_ids = [0]
    else:
        answer = answer if tokenizer.chat_template else " " + answer  # after a space, as a model would write it
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        seq = build_sequence(tokenizer, text, ids, offsets, answer_ids, torch.device("cpu"), len(tokenizer), markup)
        text, offsets, tokens, keep, ids = seq.text, seq.offsets, seq.tokens, seq.keep.tolist(), seq.input_ids[0].tolist()
        n, n_targets, target_ids = seq.n_inputs, seq.n_targets, seq.target_ids.tolist()
    torch.manual_seed(0)
    return Explanation(
        scores=torch.randn(n_targets, n), input_tokens=tokens[:n], input_offsets=offsets[:n], input_ids=ids[:n],
        target_tokens=["x"] * n_targets, target_ids=target_ids, target_probs=[0.5] * n_targets,
        completeness_error=torch.zeros(n_targets), text=text, n_prompt_tokens=len(encoding["input_ids"]), method="ig",
        space="embeddings", input_markup=keep[:n])


def test_words_are_the_content_words_and_markup_stays_alone(named_tokenizer):
    name, tokenizer = named_tokenizer
    question, answer = sentence(name)
    causal = not isinstance(tokenizer.backend_tokenizer.model, models.WordPiece)
    exp = explanation(tokenizer, question, answer if causal else None)
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in exp.input_ids
    words = exp.words()
    markup = words.input_markup
    content = [w for w, m in zip(words.input_tokens, markup) if not m]
    expected = question.split() + (answer.split()[:-1] if causal else [])  # the last target is no input
    assert content[: len(expected)] == expected
    if causal:  # the last answer word is an input up to its last token
        rest = content[len(expected):]
        assert len(rest) <= 1 and answer.split()[-1].startswith("".join(rest))
    else:
        assert len(content) == len(expected)
    prompt = [w for w, m in zip(words.input_tokens[: words.n_prompt_tokens], markup) if not m]
    assert prompt == question.split()  # no word spans prompt and answer
    n_markup = sum(exp.input_markup)
    assert sum(markup) == n_markup  # every markup token is a group of its own
    assert torch.allclose(words.scores.sum(1), exp.scores.sum(1), atol=1e-5)  # a partition of the tokens
    for (start, end), label, is_markup in zip(words.input_offsets, words.input_tokens, markup):
        if not is_markup:
            assert exp.text[start:end] == label


def test_byte_level_words_on_smollm2():
    """The issue's case: `Kil | imanjaro` and `?<|im_end|>` on SmolLM2's chat template."""
    tokenizer = TOKENIZERS["smollm2"]()
    words = explanation(tokenizer, QUESTION, ANSWER).words()
    assert "Kilimanjaro" in words.input_tokens and "Kil" not in words.input_tokens
    assert "Japan?" in words.input_tokens and "<|im_end|>" in words.input_tokens
    assert not any("<|im_end|>" in w and w != "<|im_end|>" for w in words.input_tokens)


@pytest.mark.parametrize("answer", [
    "東京は日本の首都です。富士山は日本で一番高い山です。",
    "Yes 😀🇯🇵 of course",
    "Crème brûlée, naïve Ångström, Ελληνικά и русский.",
    "\n\nYes.\n",
])
def test_answer_offsets_are_the_tokenizers_own(answer):
    """Each answer token's span is what SmolLM2's tokenizer gives on prompt + answer (its leading space left out):
    a byte piece of a character spans that character, never the answer so far or U+FFFD."""
    tokenizer = TOKENIZERS["smollm2"]()
    prompt = "Q:"
    ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + " " + answer, return_offsets_mapping=True)
    assert whole["input_ids"] == ids + answer_ids
    seq = build_sequence(tokenizer, prompt, ids, [tuple(o) for o in whole["offset_mapping"][: len(ids)]], answer_ids,
                         torch.device("cpu"), len(tokenizer))
    assert seq.text == prompt + " " + answer

    def trimmed(start: int, end: int) -> tuple[int, int]:
        piece = seq.text[start:end]
        begin = start + len(piece) - len(piece.lstrip())
        return begin, max(begin, end)

    assert seq.offsets[len(ids):] == [trimmed(*o) for o in whole["offset_mapping"][len(ids):]]
    assert not any("\ufffd" in token for token in seq.tokens)
    assert all(e - s <= 2 or token.strip() == seq.text[s:e] for token, (s, e) in zip(seq.tokens, seq.offsets))


def test_a_two_sentence_answer_with_emoji_is_two_rag_rows():
    """The issue's case: answer offsets wrong inside multi-byte characters split one sentence into several rows."""
    from llm_attrib.rag.explain import answer_sentences

    tokenizer = TOKENIZERS["smollm2"]()
    answer = "Mount Fuji is 3776 m high 🗻, café au lait. It is in Japan 😀 naïvely."
    prompt = "Q:"
    ids = tokenizer(prompt)["input_ids"]
    offsets = [tuple(o) for o in tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]]
    answer_ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    seq = build_sequence(tokenizer, prompt, ids, offsets, answer_ids, torch.device("cpu"), len(tokenizer))
    runs, spans = answer_sentences(seq)
    assert [seq.text[a:b] for a, b in spans] == ["Mount Fuji is 3776 m high 🗻, café au lait.", "It is in Japan 😀 naïvely."]
    assert len(runs) == 2 and runs[0][0] == 0 and runs[-1][1] == len(answer_ids)
