"""The `llm-attrib` command line on a tiny model saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llm_attrib import Explanation, zoo
from llm_attrib.cli import SUBCOMMANDS, main

WORDS = ["<unk>", "<pad>", "<s>", "</s>"] + "the cat sat on a mat dog ran to park and is big red".split()
PROMPT = "the cat sat on a"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama and a word-level fast tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny-llama")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_explain_writes_json_and_html(model_dir, tmp_path, capsys):
    out_json, out_html = tmp_path / "exp.json", tmp_path / "exp.html"
    code = main([
        "explain", "--model", str(model_dir), "--prompt", PROMPT, "--max-new-tokens", "3", "--n-steps", "9",
        "--param", "tolerance=null", "--json", str(out_json), "--html", str(out_html), "--no-progress",
    ])
    assert code == 0
    exp = Explanation.load(out_json)
    assert exp.scores.shape == (3, 5 + 2)
    assert exp.input_tokens[:5] == PROMPT.split()
    assert exp.method == "ig" and exp.params["n_steps"] == 9  # two Boole panels sharing an edge
    assert json.loads(out_json.read_text())["format_version"] == 1
    assert "<!DOCTYPE html>" in out_html.read_text()
    printed = capsys.readouterr().out
    assert "cat" in printed and "summary" in printed


def test_explain_the_whole_answer(model_dir, tmp_path):
    out_json = tmp_path / "whole.json"
    code = main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--answer", "mat and", "--whole-answer",
                 "--json", str(out_json), "--no-progress"])
    assert code == 0
    exp = Explanation.load(out_json)
    assert exp.answer_level and exp.target_tokens == ["mat and"] and exp.scores.shape[0] == 1


def test_explain_given_answer_and_prompt_file(model_dir, tmp_path):
    prompt_file, out_json = tmp_path / "prompt.txt", tmp_path / "exp.json"
    prompt_file.write_text(PROMPT)
    code = main([
        "explain", "--model", str(model_dir), "--prompt-file", str(prompt_file), "--answer", "mat and",
        "--method", "saliency", "--json", str(out_json), "--no-progress",
    ])
    assert code == 0
    exp = Explanation.load(out_json)
    assert exp.target_tokens == ["mat", "and"] and exp.method == "saliency"


@pytest.mark.parametrize("args, needle", [
    (["--method", "no-such-method"], "no-such-method"),
    (["--space", "no-such-space"], "no-such-space"),
    (["--json", "."], "directory"),
    (["--answer", "cat zebra"], "does not know"),
])
def test_package_errors_are_one_line_with_exit_code_2(model_dir, capsys, args, needle):
    code = main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--no-progress", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-attrib: error:") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["explain", "--max-new-tokens", "0"], ["explain", "--n-steps", "-3"], ["evaluate", "--n", "0"],
])
def test_counts_below_one_are_usage_errors_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert argv[1] in capsys.readouterr().err


@pytest.mark.parametrize("missing, needle", [("tokenizer", "tokenizer"), ("weights", "weights")])
def test_incomplete_model_folder_is_a_clean_error(model_dir, tmp_path, capsys, missing, needle):
    for file in model_dir.iterdir():
        is_tokenizer = file.name.startswith("tokenizer") or file.name == "special_tokens_map.json"
        is_weights = file.suffix in (".safetensors", ".bin")
        if not (missing == "tokenizer" and is_tokenizer or missing == "weights" and is_weights):
            (tmp_path / file.name).write_bytes(file.read_bytes())
    code = main(["explain", "--model", str(tmp_path), "--prompt", PROMPT, "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_bidirectional_model_is_refused_for_generation(tmp_path, capsys):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=32)
    BertForMaskedLM(config).eval().save_pretrained(tmp_path)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>").save_pretrained(tmp_path)
    code = main(["explain", "--model", str(tmp_path), "--prompt", PROMPT, "--answer", "mat", "--no-progress"])
    assert code == 2
    assert "not a causal language model" in capsys.readouterr().err


def test_missing_model_folder_is_a_clean_error(tmp_path, capsys):
    code = main(["explain", "--model", str(tmp_path / "nothing"), "--prompt", PROMPT])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_explain_is_a_registered_subcommand():
    assert "explain" in SUBCOMMANDS
    with pytest.raises(SystemExit):
        main([])


@pytest.mark.skipif(not (zoo.MODELS_DIR / "rag" / "config.json").exists(), reason="the zoo 'rag' model is not built")
def test_explain_defaults_to_the_zoo_rag_model(tmp_path):
    out_json = tmp_path / "exp.json"
    code = main(["explain", "--max-new-tokens", "2", "--n-steps", "4", "--json", str(out_json), "--no-progress"])
    assert code == 0
    exp = Explanation.load(out_json)
    assert exp.text.startswith(zoo.examples("rag", n=1, seed=0)[0]["prompt"])
    assert len(exp.target_tokens) <= 2


def test_evaluate_subcommand_streams_rows_and_writes_a_summary(model_dir, tmp_path, capsys):
    from llm_attrib.evaluate import load_rows

    data = tmp_path / "data.jsonl"
    prompts = ["the cat sat on a", "a dog ran to the", "the red cat is"]
    data.write_text("".join(json.dumps({"prompt": p, "answer": "mat"}) + "\n" for p in prompts))
    rows, summary = tmp_path / "rows.jsonl", tmp_path / "summary.csv"
    code = main(["evaluate", "--model", str(model_dir), "--data", str(data), "--methods", "random", "ig:attention",
                 "--output", str(rows), "--summary", str(summary), "--no-progress"])
    assert code == 0
    frame = load_rows(rows)
    assert len(frame) == 6 and set(frame.method) == {"random", "ig:attention"}
    assert "aopc_comprehensiveness" in summary.read_text()
    assert "ig:attention" in capsys.readouterr().out


def test_method_parameters_pass_through(model_dir, tmp_path):
    out = tmp_path / "e.json"
    code = main(["explain", "--model", str(model_dir), "--prompt", PROMPT, "--answer", "mat", "--method", "rpi",
                 "--param", "n_baselines=2", "--param", "psi=aopc_comprehensiveness", "--json", str(out), "--no-progress"])
    assert code == 0
    exp = Explanation.load(out)
    assert exp.space == "attention" and exp.params["n_baselines"] == 2 and exp.params["psi"] == "aopc_comprehensiveness"


def test_rag_runs_on_the_embedded_model_and_writes_json(tmp_path, capsys):
    """No arguments: the zoo rag model on a built-in example; the saved result reloads with its citations."""
    from llm_attrib import rag

    out, page = tmp_path / "rag.json", tmp_path / "rag.html"
    assert main(["rag", "--space", "attention", "--shapley", "--json", str(out), "--html", str(page),
                 "--no-progress"]) == 0
    assert page.read_text().lstrip().lower().startswith("<!doctype html>") and "Shapley values" in page.read_text()
    printed = capsys.readouterr().out
    example = zoo.examples("rag", n=1, seed=0)[0]
    result = rag.RagExplanation.load(out)
    assert result.top_document == example["relevant_document"]
    assert int(result.shapley.values.sum(0).argmax()) == example["relevant_document"] and "Shapley (nats)" in printed
    assert result.citations[0].verdict.label == "supported" and "supported" in printed
    assert example["answer"] in printed


def test_rag_hides_documents_with_removal_hidden(tmp_path, capsys):
    """--removal hidden reaches rag.explain: the source document still loses most, the file says how the documents
    were removed, the terminal says why the verdict gives a margin; an unknown removal is a usage error."""
    from llm_attrib import rag

    out = tmp_path / "rag.json"
    assert main(["rag", "--removal", "hidden", "--granularity", "answer", "--param", "n_steps=8",
                 "--param", "tolerance=null", "--json", str(out), "--no-progress"]) == 0
    result = rag.RagExplanation.load(out)
    example = zoo.examples("rag", n=1, seed=0)[0]
    assert result.removal == "hidden" and int(result.leave_one_out[0].argmax()) == example["relevant_document"]
    printed = " ".join(capsys.readouterr().out.split())
    assert "uncalibrated" in printed and "removal='hidden'" in printed and "whose hiding costs them most" in printed
    assert "with every document hidden" in result.to_html()
    with pytest.raises(SystemExit) as exit_info:
        main(["rag", "--removal", "masked"])
    assert exit_info.value.code == 2


def test_rag_reads_documents_and_refuses_half_inputs(model_dir, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('"the cat sat on a mat"\n{"text": "a dog ran to the park", "title": "dog"}\n')
    out = tmp_path / "out.json"
    assert main(["rag", "--model", str(model_dir), "--question", "the cat", "--documents", str(docs),
                 "--answer", "mat", "--template", "{documents} {question} on a", "--granularity", "answer",
                 "--param", "n_steps=8", "--param", "tolerance=null", "--json", str(out), "--no-progress"]) == 0
    saved = json.loads(out.read_text())
    assert [d["title"] for d in saved["documents"]] == [None, "dog"] and saved["granularity"] == "answer"
    assert main(["rag", "--model", str(model_dir), "--question", "the cat"]) == 2
    assert "--documents" in capsys.readouterr().err
    docs.write_text("not json\n")
    assert main(["rag", "--model", str(model_dir), "--question", "the cat", "--documents", str(docs)]) == 2
    assert "neither JSON lines nor a JSON list" in capsys.readouterr().err


def test_memory_flags_reach_the_attribution_and_bad_sizes_are_usage_errors(tmp_path, monkeypatch, capsys):
    """--recompute always and --memory-budget reach the Attributor (recomputed layers, through torch's fused
    attention, give the plain run's scores within float32 rounding), on both subcommands; a size that is not a positive number is a usage error (exit 2)."""
    from llm_attrib import Attributor, rag

    seen = []
    original = Attributor.__init__

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("memory_budget"), kwargs.get("recompute")))
        original(self, *args, **kwargs)

    monkeypatch.setattr(Attributor, "__init__", spy)
    outs = []
    for flags in ([], ["--recompute", "always", "--memory-budget", "1.5"]):
        out = tmp_path / f"rag{len(outs)}.json"
        assert main(["rag", "--space", "mask", "--granularity", "answer", "--no-verify", "--param", "n_steps=8",
                     "--param", "tolerance=null", "--json", str(out), "--no-progress", *flags]) == 0
        outs.append(rag.RagExplanation.load(out))
    assert seen[0] == (None, None) and seen[-1] == (int(1.5 * 2**30), True)
    torch.testing.assert_close(outs[1].document_scores, outs[0].document_scores, rtol=1e-3, atol=1e-3)  # fused kernel
    assert main(["explain", "--recompute", "never", "--no-progress", "--max-new-tokens", "1"]) == 0
    assert seen[-1] == (None, False)
    for bad in ("0", "-1", "inf", "lots"):
        with pytest.raises(SystemExit) as exit_info:
            main(["explain", "--memory-budget", bad])
        assert exit_info.value.code == 2
    assert "expected a positive number" in capsys.readouterr().err
