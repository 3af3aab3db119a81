"""`bert-pretrain demo`: the whole pipeline on a corpus every Python installation carries.

1. corpus   the standard library's docstrings and help() topics (prepare/builtin_corpus.py)
2. prepare  a WordPiece vocab trained on it, 128-token MLPerf-layout shards and a held-out eval set
3. train    a small BERT with LAMB until the masked-LM accuracy on the held-out set reaches the target
            (or the step limit), with the MLPerf log, metrics, plot and checkpoints of a real run
4. export   the final checkpoint as an HF transformers folder, with the tokenizer (vocab, lower-casing)

Nothing is downloaded. The output folder is laid out like an MLPerf DATA folder plus a results folder,
so the prepare, train and export steps can be rerun by hand with the commands it prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

from bert_pretrain import strict_json
from bert_pretrain.devices import accelerator_type
from bert_pretrain.folder_lock import hold_folder
from bert_pretrain.model import MODEL_SHAPES, BertForPreTraining
from bert_pretrain.options.prepare import PrepareOptions
from bert_pretrain.options.train import add_arguments, load_config
from bert_pretrain.prepare.builtin_corpus import write_builtin_corpus
from bert_pretrain.prepare.pipeline import run as prepare
from bert_pretrain.train.checkpoint import checkpoints_in
from bert_pretrain.train.loop import train
from bert_pretrain.train.output_folder import earlier_run_files
from bert_pretrain.weights import export_hf, load_weights, read_bert_config

# A BERT small enough to learn on two CPU cores in minutes (vocab_size is filled in from the vocab).
DEMO_MODEL = {
    **MODEL_SHAPES["tiny"], "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 128, "type_vocab_size": 2, "initializer_range": 0.02,
}
DEMO_VOCAB_SIZE = 8192
# LAMB scales each layer's step by its weight norm, so a small model needs a larger rate than AdamW would.
DEMO_LEARNING_RATE = 1e-2
SEQ, PREDICTIONS = 128, 20


def _prepare_options(corpus: Path, data_dir: Path, workers: int) -> PrepareOptions:
    return PrepareOptions(
        input_files=str(corpus), output_dir=str(data_dir), vocab_size=DEMO_VOCAB_SIZE, num_shards=4,
        max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS, dupe_factor=5, random_seed=12345,
        num_eval_examples=1000, num_eval_documents=40, workers=workers,
    )


def _train_flags(data_dir: Path, results: Path, target: float, max_steps: int, eval_every: int,
                 learning_rate: float) -> list[str]:
    """The run, in `bert-pretrain train` flags (printed, so it can be repeated by hand)."""
    return [
        "--input_dir", str(data_dir / "4_shards_uncompressed"), "--eval_dir", str(data_dir / "eval_set_uncompressed"),
        "--bert_config_path", str(data_dir / "bert_config.json"), "--output_dir", str(results),
        "--max_seq_length", str(SEQ), "--max_predictions_per_seq", str(PREDICTIONS), "--num_eval_examples", "1000",
        "--train_batch_size", "32", "--eval_batch_size", "100", "--learning_rate", str(learning_rate),
        "--warmup_proportion", "0.05", "--max_steps", str(max_steps), "--max_samples_termination", str(32 * max_steps),
        "--eval_iter_start_samples", str(eval_every), "--eval_iter_samples", str(eval_every), "--target_mlm_accuracy", str(target),
        "--num_samples_per_checkpoint", "12800", "--min_samples_to_start_checkpoints", "12800",
        "--keep_n_most_recent_checkpoints", "2", "--log_freq", "20", "--seed", "42", "--device", "cpu",
    ]


def run_demo(output_dir: str | Path, target_accuracy: float, max_steps: int, workers: int = 2,
             eval_every_samples: int = 6400, model: dict | None = None,
             learning_rate: float = DEMO_LEARNING_RATE) -> int:
    """Run the four stages into `output_dir`; 0 when the target was reached, else non-zero."""
    with hold_folder(output_dir, "--output_dir", "the demo's corpus, data and results"):
        return _run_demo(Path(output_dir), target_accuracy, max_steps, workers, eval_every_samples, model,
                         learning_rate)


def _run_demo(out: Path, target_accuracy: float, max_steps: int, workers: int, eval_every_samples: int,
              model: dict | None, learning_rate: float) -> int:
    data_dir, results = out / "data", out / "results"
    corpus = out / "corpus" / "python_docs.txt"
    stats = write_builtin_corpus(corpus)
    print(f"demo 1/4 corpus: {stats.documents} documents, {stats.words:,} words from this Python's "
          f"documentation -> {corpus}", flush=True)

    options = _prepare_options(corpus, data_dir, workers)
    print("demo 2/4 prepare: " + shlex.join(["bert-pretrain", "prepare", *options.command_line()]), flush=True)
    summary = prepare(options)
    vocab_size = len(Path(summary.vocab_file).read_text(encoding="utf-8").splitlines())
    bert_config = {**(model or DEMO_MODEL), "vocab_size": vocab_size}
    (data_dir / "bert_config.json").write_text(strict_json.dumps(bert_config, indent=2) + "\n")
    print(f"demo 2/4 prepare: vocab of {vocab_size} WordPieces, {summary.instances:,} training and "
          f"{summary.eval_instances:,} eval instances -> {data_dir} (bert_config.json written beside them)",
          flush=True)

    # A rerun of the demo trains anew: the last run's checkpoints and logs would refuse that. They are the
    # demo's own (the lock on its folder keeps another demo out), so they go; any other file stays.
    for earlier in earlier_run_files(results, phase2=False):
        if earlier.is_dir():
            shutil.rmtree(earlier)
        else:
            earlier.unlink()
    flags = _train_flags(data_dir, results, target_accuracy, max_steps, eval_every_samples, learning_rate)
    print("demo 3/4 train: " + shlex.join(["bert-pretrain", "train", *flags]), flush=True)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    code = train(load_config(parser.parse_args(flags), accelerator=accelerator_type()))
    if code != 0:
        return code

    checkpoint = checkpoints_in(results, phase2=False)[-1]
    hf_dir = out / "hf_model"
    trained = BertForPreTraining(read_bert_config(data_dir / "bert_config.json"))
    load_weights(trained, checkpoint)
    export_hf(trained, hf_dir, summary.vocab_file, lower_case=options.lower_case)  # the tokenizer it trained with
    run_summary = json.loads((results / "summary.json").read_text())
    convert = ["bert-pretrain", "convert", "--input", str(checkpoint), "--bert_config_path",
               str(data_dir / "bert_config.json"), "--output", str(hf_dir), "--overwrite"]
    print(f"demo 4/4 export: {shlex.join(convert)}\ndemo 4/4 export: HF transformers folder -> {hf_dir}")
    if "final_mlm_accuracy" in run_summary:
        verdict = "reached" if run_summary["status"] == "success" else "did NOT reach"
        print(f"\nThe demo {verdict} its target: masked-LM accuracy {run_summary['final_mlm_accuracy']:.4f} on the "
              f"held-out set (target {target_accuracy}) after {run_summary['samples_trained']:,} samples in "
              f"{run_summary['end_to_end_seconds']:.0f} s of training.")
    else:
        print(f"\nThe run stopped ({run_summary['stopped_by']}) before its first eval; no accuracy was measured.")
    print(f"  MLPerf log   {results / 'mlperf.log'}\n  metrics      {results / 'metrics.jsonl'}\n"
          f"  plot         {results / 'metrics.png'}\n  summary      {results / 'summary.json'}\n"
          f"  checkpoint   {checkpoint}\n  HF export    {hf_dir}")
    return 0 if run_summary["status"] == "success" else 1
