"""The options of the smaller commands (evaluate, convert, inspect, demo); every field is one of their
flags. (train's are in options/train.py, prepare's and prepare-mlperf's in options/prepare.py, bench's in
options/bench.py.)"""

from __future__ import annotations

from dataclasses import dataclass

from bert_pretrain.options.fields import PRECISIONS, device_option, option

# The demo's defaults (measured on 2 CPU cores: see README "The demo").
DEMO_TARGET = 0.14
DEMO_MAX_STEPS = 3000


@dataclass(frozen=True)
class EvaluateOptions:
    init_checkpoint: str = option(help="weights to evaluate: an NVIDIA {'model': state_dict} .pt (e.g. "
                                       "model.ckpt-28252.apex.pt), a checkpoint written by `train`, a .safetensors "
                                       "file, or an HF model folder")
    bert_config_path: str = option(help="the model's bert_config.json")
    eval_dir: str = option(help="folder of eval shards (e.g. eval_set_uncompressed/)")
    eval_batch_size: int = option(128, "sequences per batch, per process")
    max_seq_length: int = option(512, "sequence length the shards were made with")
    max_predictions_per_seq: int = option(76, "masked slots per sequence in the shards")
    num_eval_examples: int | None = option(None, "evaluate the first N samples (MLPerf: 10000); default: every "
                                                 "sample in the folder")
    device: str = device_option()
    precision: str = option("fp32", "autocast precision; fp8 evaluates as an fp8 training run does, in bf16 (float8 "
                                    "layers are a training speed-up)", choices=PRECISIONS)


@dataclass(frozen=True)
class ConvertOptions:
    input: str = option(help="a TensorFlow checkpoint in google-research BERT names (its prefix, e.g. "
                             "tf1_ckpt/model.ckpt-28252, or its .index, with the .data-* files beside it; optimizer "
                             "variables skipped), an NVIDIA/this project's .pt ({'model': state_dict}), a "
                             ".safetensors file, or an HF folder")
    output: str = option(help="a folder -> HF transformers BertForPreTraining (config.json + model.safetensors); a "
                              "path ending in .pt -> NVIDIA format {'model': state_dict}, vocab padded to a multiple "
                              "of 8 (what NVIDIA's convert_tf_checkpoint.py writes, e.g. model.ckpt-28252.apex.pt)")
    bert_config_path: str | None = option(None, "bert_config.json of the input; not needed when the input is an HF "
                                                "folder (it has config.json)")
    vocab_file: str | None = option(None, "the vocab.txt the model was trained with, written into an HF --output "
                                          "with its tokenizer settings (lower-casing as the vocab shows: uncased "
                                          "when no token has capitals); default: the vocab.txt beside "
                                          "--bert_config_path (as in a DATA folder), or in an HF input folder")
    overwrite: bool = option(False, "replace an existing --output (without it, an existing file or export is "
                                    "refused: it may be a training checkpoint)")


@dataclass(frozen=True)
class InspectOptions:
    shard: str = option(help="an HDF5 shard (padded or variable-length), or a checkpoint: a .pt (NVIDIA's or a "
                             "training checkpoint), .safetensors, an HF folder or a TensorFlow checkpoint (prefix or "
                             ".index)", positional=True, metavar="PATH")
    vocab_file: str | None = option(None, "the vocab the shard was made with; needed to decode text")
    num_examples: int = option(3, "instances to decode (with --vocab_file)")
    json: bool = option(False, "print the statistics as one JSON object")


@dataclass(frozen=True)
class DemoOptions:
    output_dir: str = option("demo_run", "where the corpus, the DATA folder (shards, eval set, vocab, "
                                         "bert_config.json), the run's results (MLPerf log, metrics, plot, "
                                         "checkpoints) and the HF export go")
    target_mlm_accuracy: float = option(DEMO_TARGET, "stop when the held-out masked-LM accuracy reaches this "
                                                     "(MLPerf's BERT-large target is 0.720; a small model on this "
                                                     "small corpus reaches less)")
    max_steps: int = option(DEMO_MAX_STEPS, "stop here if the target is not reached (each step is 32 sequences of "
                                            "128 tokens)")
    workers: int = option(2, "processes for data preparation")
