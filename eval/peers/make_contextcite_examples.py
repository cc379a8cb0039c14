"""Write EXAMPLES.jsonl for `eval/peers/contextcite_rag.py` (runs in the project's python: transformers 5, llm_attrib).

Usage:
    python eval/peers/make_contextcite_examples.py rag OUT.jsonl [--n 1]       # zoo `rag` model, chat=false
    python eval/peers/make_contextcite_examples.py smollm2 OUT.jsonl [--n 2]   # SmolLM2-135M-Instruct, chat=true
It prints the MODEL_DIR to give the runner (`zoo.path(name)`).

rag: example 1 is the fixed test example (template "{context} question : {query}", sources "doc : alice visits
north harbor ." and "doc : bob likes green tea .", separator " ", query "what about bob ?", response " green tea");
further ones come from `zoo.examples("rag")` (its document spans give the sources, response " " + answer).
smollm2: the first n "rag" examples of eval/data/real_text.jsonl, sources "Document i: <text>", separator "\\n",
template "Answer the question using the documents.\\n\\n{context}\\n\\nQuestion: {query}", response = "answer".

Each line: {"id", "chat", "prompt_template", "sources", "separator", "query", "response", "prompt_text",
"response_logprob"}. prompt_text is what llm_attrib's Attributor builds (`Attributor.sequence(prompt, answer=)`:
chat -> `apply_chat_template([{"role": "user", "content": template.format(context=separator.join(sources),
query=query)}], tokenize=False, add_generation_prompt=True)`, tokenised without special tokens; plain -> the
formatted text, tokenised with the tokenizer's special tokens); the response is tokenised on its own without
special tokens (the Attributor refuses a response whose tokens differ from those of prompt + response tokenised
together). response_logprob = sum over the response tokens of log_softmax(logits) at the token, teacher-forced,
one float32 forward of prompt + response. `example_record` is the function an evaluation can reuse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import llm_attrib
from llm_attrib import Attributor

HERE = Path(__file__).resolve().parent
REAL_TEXT = HERE.parent / "data" / "real_text.jsonl"
RAG_TEMPLATE = "{context} question : {query}"
SMOL_TEMPLATE = "Answer the question using the documents.\n\n{context}\n\nQuestion: {query}"


def example_record(model, tokenizer, id: str, template: str, sources: list[str], separator: str, query: str,
                   response: str, chat: bool) -> dict:
    """One EXAMPLES.jsonl record, with prompt_text and response_logprob computed by llm_attrib / the model."""
    content = template.format(context=separator.join(sources), query=query)
    prompt = [{"role": "user", "content": content}] if chat else content
    seq = Attributor(model, tokenizer, show_progress=False).sequence(prompt, answer=response)
    if chat:
        expected = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    else:
        expected = content
    prompt_ids = tokenizer(expected, add_special_tokens=not chat)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = seq.input_ids[0].tolist()
    assert seq.text == expected + response, (seq.text, expected + response)  # seq.text holds the answer too
    assert ids == prompt_ids + response_ids and seq.n_prompt == len(prompt_ids), "token ids differ from the library's"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    logprobs = logits[len(prompt_ids) - 1:-1].log_softmax(-1).gather(-1, torch.tensor(response_ids)[:, None])
    return {"id": id, "chat": chat, "prompt_template": template, "sources": sources, "separator": separator,
            "query": query, "response": response, "prompt_text": expected,
            "response_logprob": float(logprobs.double().sum())}


def rag_examples(model, tokenizer, n: int) -> list[dict]:
    records = [example_record(model, tokenizer, "rag-test", RAG_TEMPLATE,
                              ["doc : alice visits north harbor .", "doc : bob likes green tea ."], " ",
                              "what about bob ?", " green tea", chat=False)]
    for i, ex in enumerate(llm_attrib.zoo.examples("rag", n=max(n - 1, 0), seed=0)):
        text = ex["prompt"]
        sources = [text[a:b] for a, b in ex["documents"]]
        query = ex["question"]
        assert text == " ".join(sources) + " question : " + query
        records.append(example_record(model, tokenizer, f"rag-zoo-{i}", RAG_TEMPLATE, sources, " ", query,
                                      " " + ex["answer"], chat=False))
    return records


def smollm2_examples(model, tokenizer, n: int) -> list[dict]:
    rows = [json.loads(line) for line in REAL_TEXT.open() if line.strip()]
    rows = [r for r in rows if r["kind"] == "rag"][:n]
    return [example_record(model, tokenizer, r["id"], SMOL_TEMPLATE,
                           [f"Document {i + 1}: {d}" for i, d in enumerate(r["documents"])], "\n",
                           r["question"], r["answer"], chat=True) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["rag", "smollm2"])
    parser.add_argument("output")
    parser.add_argument("--n", type=int, default=None, help="examples (default: rag 1, smollm2 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = llm_attrib.zoo.load(args.model)
    if args.model == "rag":
        records = rag_examples(model, tokenizer, args.n or 1)
    else:
        records = smollm2_examples(model, tokenizer, args.n or 2)
    with open(args.output, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    print(f"{len(records)} examples -> {args.output}; MODEL_DIR: {llm_attrib.zoo.path(args.model)}")


if __name__ == "__main__":
    main()
