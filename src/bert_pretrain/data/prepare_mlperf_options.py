"""What `bert-pretrain prepare-mlperf` is asked to do (prepare_mlperf.py runs it), kept free of torch so
the command line is built without it."""

from __future__ import annotations

from dataclasses import dataclass

from bert_pretrain.data.prepare_options import default_workers
from bert_pretrain.options import option

TEXT_MD5_LIST = "bert_reference_results_text_md5.txt"  # MLCommons' md5s of the text parts, in results4/
_MLPERF_INSTANCES = "instances (MLPerf's values; others make data that is not the reference's)"


@dataclass(frozen=True)
class PrepareMlperfOptions:
    """What `bert-pretrain prepare-mlperf` does (prepare_mlperf.py); every field is one of its flags. The
    defaults are MLPerf's."""

    text_dir: str = option(help="MLCommons' results4/: part-00000-of-00500 ... part-00499-of-00500 and eval.txt "
                                f"(and {TEXT_MD5_LIST}, which checks them)", group="inputs (MLCommons' release)")
    tf_checkpoint: str = option(help="the TensorFlow 1 checkpoint, by prefix (tf1_ckpt/model.ckpt-28252) or its "
                                     ".index", group="inputs (MLCommons' release)")
    vocab_file: str = option(help="the release's vocab.txt", group="inputs (MLCommons' release)")
    bert_config: str = option(help="the release's bert_config.json", group="inputs (MLCommons' release)")
    output_dir: str = option(help="the DATA folder for DATA=... bash train_bert_pretraining_amp_dist.sh",
                             group="output")
    keep_parts: bool = option(False, "keep the per-part HDF5 files (as large as the shards) after the cut",
                              group="output")
    num_shards: int = option(2048, "training shards", group="output")
    num_eval_examples: int = option(10000, "eval instances (the first ones of eval.txt's)", group="output")
    max_seq_length: int = option(512, "tokens per instance", group=_MLPERF_INSTANCES)
    max_predictions_per_seq: int = option(76, "masked-LM slots per instance", group=_MLPERF_INSTANCES)
    masked_lm_prob: float = option(0.15, "share of an instance's tokens to mask", group=_MLPERF_INSTANCES)
    short_seq_prob: float = option(0.1, "probability of a shorter target length", group=_MLPERF_INSTANCES)
    dupe_factor: int = option(10, "passes over each part's documents", group=_MLPERF_INSTANCES)
    random_seed: int = option(12345, "the seed of every part's random stream", group=_MLPERF_INSTANCES)
    workers: int = option(help="processes on this machine (default: one per CPU this process may use)",
                          default_factory=default_workers, group="scale")
    progress: bool = option(True, "progress bars (--no_progress: none)", group="scale",
                            aliases=(("--no_progress", {"action": "store_false"}),))
