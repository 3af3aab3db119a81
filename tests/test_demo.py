"""The demo's plumbing end to end, on a model small enough for seconds (the full demo is the README's
first command; its measured result is in the README)."""

import json
import shlex

import pytest
import transformers

from bert_pretrain import cli, demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_stops_on_its_target(tmp_path, capsys):
    tiny = {**demo.DEMO_MODEL, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64}
    code = demo.run_demo(tmp_path, target_accuracy=0.02, max_steps=200, workers=1, eval_every_samples=640,
                         model=tiny)
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["status"] == "success" and summary["final_mlm_accuracy"] >= 0.02
    assert "The demo reached its target" in printed
    evals = [json.loads(line) for line in (tmp_path / "results" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals and all(r["samples"] % 640 == 0 and r["eval_samples"] > 0 for r in evals)  # training samples
    for name in ("mlperf.log", "metrics.jsonl", "metrics.png"):
        assert (tmp_path / "results" / name).is_file(), name
    assert (tmp_path / "data" / "4_shards_uncompressed").is_dir()
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf_model")
    assert hf.config.vocab_size == len((tmp_path / "data" / "vocab.txt").read_text().splitlines())
    _the_export_tokenizes_and_fills_masks_as_the_demo_trained(tmp_path)

    # The printed commands are what ran: prepare's finds its shards complete under the same settings (the
    # manifest refuses any other), convert writes the same export again.
    commands = {line.split(": ", 1)[0]: shlex.split(line.split(": ", 1)[1]) for line in printed.splitlines()
                if line.startswith(("demo 2/4 prepare: bert-pretrain", "demo 4/4 export: bert-pretrain"))}
    assert cli.main(commands["demo 2/4 prepare"][1:]) == 0
    assert "0 shards written, 4 already complete" in capsys.readouterr().out
    exported = (tmp_path / "hf_model" / "model.safetensors").read_bytes()
    assert cli.main(commands["demo 4/4 export"][1:]) == 0
    assert (tmp_path / "hf_model" / "model.safetensors").read_bytes() == exported

    # A rerun into the same folder trains anew: the earlier run's checkpoints and logs are the demo's own
    # and go, where a `train` by hand would be refused.
    (tmp_path / "results" / "mine.txt").write_text("kept")
    demo.run_demo(tmp_path, target_accuracy=0.02, max_steps=5, workers=1, eval_every_samples=640, model=tiny)
    rerun = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert rerun["steps"] == 5 and (tmp_path / "results" / "mine.txt").read_text() == "kept"
    records = [json.loads(line) for line in (tmp_path / "results" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= 5 for r in records)  # none of the earlier run's (it wrote evals, above)


def _the_export_tokenizes_and_fills_masks_as_the_demo_trained(out):
    """HF reads the export whole: AutoTokenizer gives the ids `prepare` gave the corpus, and fill-mask on a
    sentence of the corpus answers with real WordPieces of the vocab (not the empty strings of a tokenizer
    built from nothing)."""
    from bert_pretrain.prepare.tokenization import WordPieceTokenizer

    tokens = (out / "data" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ours = WordPieceTokenizer(tokens, lower_case=True)
    sentence = next(line for line in (out / "corpus" / "python_docs.txt").read_text().splitlines()
                    if len(line.split()) > 8)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf_model")
    assert tokenizer(sentence)["input_ids"] == [ours.ids["[CLS]"], *(ours.ids[t] for t in ours.tokenize(sentence)),
                                                ours.ids["[SEP]"]]
    words = sentence.split()
    masked = " ".join([*words[:4], tokenizer.mask_token, *words[5:]])
    fill = transformers.pipeline("fill-mask", model=str(out / "hf_model"), tokenizer=str(out / "hf_model"),
                                 device="cpu")
    predictions = fill(masked)
    assert all(p["token_str"] in (tokens[p["token"]], tokens[p["token"]].removeprefix("##")) for p in predictions)
    assert predictions[0]["token_str"].strip() and not tokens[predictions[0]["token"]].startswith("[")
