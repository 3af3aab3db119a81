"""The run configuration: defaults < TOML < flags, reference launch lines, validation messages."""

import dataclasses
import shlex

import pytest
import tomllib
from conftest import REPO, run_cli

from bert_pretrain.cli import build_parser
from bert_pretrain.errors import InputError
from bert_pretrain.model import MODEL_SHAPES, BertConfig
from bert_pretrain.options.reference_flags import REFERENCE_ONLY
from bert_pretrain.options.train import RunConfig, load_config
from bert_pretrain.weights import read_bert_config

CONFIGS = sorted((REPO / "configs").glob("*.toml"))


@pytest.fixture
def paths(tmp_path) -> list[str]:
    (tmp_path / "shards").mkdir()
    (tmp_path / "eval").mkdir()
    (tmp_path / "bert_config.json").write_text("{}")
    return ["--input_dir", str(tmp_path / "shards"), "--eval_dir", str(tmp_path / "eval"),
            "--bert_config_path", str(tmp_path / "bert_config.json"), "--output_dir", str(tmp_path / "out")]


def load(argv, cuda=False, accelerator=None) -> RunConfig:
    """`cuda`: as on a machine with GPUs; `accelerator`: with another accelerator's devices ("xpu", ...)."""
    return load_config(build_parser().parse_args(["train", *argv]), accelerator="cuda" if cuda else accelerator)


def test_defaults_are_the_reference_defaults(paths):
    flat = load(paths).flat()
    assert flat["train_batch_size"] == 18 and flat["learning_rate"] == 4e-5 and flat["max_steps"] == 1536
    assert flat["max_samples_termination"] == 14_000_000 and flat["warmup_proportion"] == 0.01
    assert flat["keep_n_most_recent_checkpoints"] == 20 and flat["num_samples_per_checkpoint"] == 500_000
    assert flat["eval_batch_size"] == 128 and flat["seed"] == 42 and flat["target_mlm_accuracy"] == 0.0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_parses_to_its_values(path, paths):
    config = load(["--config", str(path), *paths], cuda=True)  # on a GPU: no fallback changes a value
    flat = config.flat()
    for key, value in tomllib.loads(path.read_text()).items():
        if key not in REFERENCE_ONLY:  # those only print a note
            assert flat[key] == value, key
    assert config.batch.train_batch_size % config.batch.gradient_accumulation_steps == 0


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("bert_config_*.json")))
def test_shipped_model_configs_parse(path):
    assert read_bert_config(path).vocab_size == 30522


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path, paths):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("train_batch_size = 32\nlearning_rate = 1e-3\nfp16 = true\n")
    config = load(["--config", str(run_toml), "--learning_rate", "2e-3", "--no-fp16", *paths], cuda=True)
    assert config.batch.train_batch_size == 32  # file over default
    assert config.optimizer.learning_rate == 2e-3  # flag over file
    assert config.system.precision == "fp32" and not config.system.fp16
    assert config.optimizer.max_steps == 1536  # default kept


def test_the_time_cadence_of_checkpoints_is_a_flag_and_a_toml_key(tmp_path, paths):
    assert load(paths).checkpoint.checkpoint_every_minutes == 0  # by samples only, as the reference
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("checkpoint_every_minutes = 30\n")
    assert load(["--config", str(run_toml), *paths]).checkpoint.checkpoint_every_minutes == 30
    assert load(["--checkpoint_every_minutes", "2.5", *paths]).checkpoint.checkpoint_every_minutes == 2.5


# DeepSparkHub's train_bert_pretraining_amp_dist.sh, its run_pretraining.py flags as written there.
DEEPSPARKHUB_LINE = ("--do_train --eval_iter_start_samples 150000 --eval_iter_samples 150000 --num_eval_examples 10000 "
            "--warmup_proportion=0 --warmup_steps=0 --start_warmup_step=0 --phase2 --max_seq_length=512 "
            "--max_predictions_per_seq=76 --train_mlm_accuracy_window_size=0 --max_samples_termination=4500000 "
            "--log_freq=10 --cache_eval_data --min_samples_to_start_checkpoints 150000 "
            "--num_samples_per_checkpoint 150000 --keep_n_most_recent_checkpoints 3 --opt_lamb_beta_1=0.9 "
            "--opt_lamb_beta_2=0.999 --weight_decay_rate=0.01 --fused_gelu_bias --dense_seq_output "
            "--dwu-num-rs-pg=1 --dwu-num-ar-pg=1 --dwu-num-blocks=1 --fp16 --fused_mha --distributed_lamb "
            "--dist_backend nccl --exchange_padding --target_mlm_accuracy 0.720 --seed=17103 --skip_checkpoint "
            "--train_batch_size 81 --learning_rate=3.6e-4 --max_steps 7400 --eval_batch_size 52 "
            "--gradient_accumulation_steps=3")
# NVIDIA's MLPerf v1.0 run.sub line with config_DGXA100_1x8x56x1.sh's values filled in (8 GPUs x 56).
NVIDIA_1X8X56_LINE = (
    "--train_batch_size=56 --learning_rate=3.5e-4 --opt_lamb_beta_1=0.9 --opt_lamb_beta_2=0.999 "
    "--warmup_proportion=0.0 --warmup_steps=0.0 --start_warmup_step=0.0 --max_steps=7100 --phase2 "
    "--max_seq_length=512 --max_predictions_per_seq=76 --do_train --skip_checkpoint "
    "--train_mlm_accuracy_window_size=0 --target_mlm_accuracy=0.720 --weight_decay_rate=0.01 "
    "--max_samples_termination=4500000 --eval_iter_start_samples=150000 --eval_iter_samples=150000 "
    "--eval_batch_size=16 --cache_eval_data --fp16 --fused_gelu_bias --fused_mha --dense_seq_output --unpad "
    "--unpad_fmha --exchange_padding --distributed_lamb --dwu-num-rs-pg=1 --dwu-num-ar-pg=1 --dwu-num-blocks=1 "
    "--gradient_accumulation_steps=1 --log_freq=0")
# The recipes' fixed eval interval of 150,000 samples is left to the MLPerf rule in the shipped files.
FIXED_EVAL = {"eval_iter_start_samples", "eval_iter_samples"}


@pytest.mark.parametrize("recipe, line", [("bert_large_deepsparkhub.toml", DEEPSPARKHUB_LINE),
                                          ("bert_large_mlperf.toml", NVIDIA_1X8X56_LINE)])
def test_the_shipped_bert_large_recipes_are_the_reference_lines(paths, recipe, line):
    """Every option and reference-only note of the reference's launch line, from the shipped file alone."""
    from_file = load([*paths, "--config", str(REPO / "configs" / recipe)], cuda=True)
    from_line = load([*paths, *shlex.split(line)], cuda=True)
    differ = {k for k in from_line.flat() if from_file.flat()[k] != from_line.flat()[k]}
    assert differ == FIXED_EVAL and from_line.run.eval_iter_samples == 150_000
    assert from_file.run.eval_iter_samples is None  # the MLPerf rule: 150,000 at these global batches
    if recipe == "bert_large_deepsparkhub.toml":  # the launcher's recipe: its notes too
        assert from_file.notes == from_line.notes and len(from_file.notes) >= 4


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_the_shipped_model_configs_have_the_standard_shapes(name, shared_data):
    config = BertConfig.from_json_file(REPO / "configs" / f"bert_config_{name}.json")
    assert {k: getattr(config, k) for k in MODEL_SHAPES[name]} == MODEL_SHAPES[name]
    if name == "base":  # google-research's own BERT-base config
        assert config == BertConfig.from_json_file(shared_data / "configs" / "bert_config_base_uncased.json")


def test_the_deepsparkhub_launch_line_runs_unchanged(paths):
    config = load([*paths, *shlex.split(DEEPSPARKHUB_LINE)], cuda=False)
    assert config.batch.micro_batch_size == 27 and config.optimizer.max_steps == 7400
    assert config.run.seed == 17103 and config.checkpoint.phase2 and config.checkpoint.skip_checkpoint
    notes = "\n".join(config.notes)
    for flag in ("--fused_gelu_bias", "--dense_seq_output", "--dwu-num-rs-pg=1", "--fused_mha",
                 "--distributed_lamb"):
        assert flag in notes
    assert "train_mlm_accuracy_window_size" not in notes  # its value 0 is the reference's own default
    # no GPU here: the two GPU-only settings fall back, each with its note
    assert config.system.precision == "fp32" and config.system.dist_backend == "gloo"
    assert "--fp16 needs a GPU" in notes and "nccl needs GPUs" in notes


def test_the_nvidia_launch_line_with_float_counts_runs_unchanged(paths):
    line = NVIDIA_1X8X56_LINE + (" --allreduce_post_accumulation --allreduce_post_accumulation_fp16 --use_cuda_graph "
                                 "--local_rank=3 --seed=251")
    config = load([*paths, *shlex.split(line)], cuda=True)
    assert config.optimizer.warmup_steps == 0 and config.optimizer.max_steps == 7100
    assert config.system.precision == "fp16" and config.run.log_freq == 0
    notes = "\n".join(config.notes)
    assert "--unpad --unpad_fmha" in notes and "--local_rank=3" in notes
    assert config.data.exchange_padding and "exchange_padding" not in notes  # a real option here
    assert all(note.startswith("note: ") and "\n" not in note for note in config.notes)


@pytest.mark.parametrize("argv, words", [
    (["--train_batch_size", "10", "--gradient_accumulation_steps", "3"],
     ["--train_batch_size 10", "not divisible", "--gradient_accumulation_steps 3", "--train_batch_size 9"]),
    (["--fp16", "--bf16"], ["--fp16", "--bf16", "choose one", "--no-fp16"]),
    (["--target_mlm_accuracy", "72"], ["--target_mlm_accuracy", "[0, 1]"]),
    (["--opt_lamb_beta_1", "1.0"], ["--opt_lamb_beta_1", "[0, 1)"]),
    (["--max_steps", "0"], ["--max_steps", "at least 1"]),
    (["--init_tf_checkpoint", "model.ckpt-28252.index"],
     ["--init_tf_checkpoint model.ckpt-28252.index", "bert-pretrain convert", "--init_checkpoint"]),
    (["--init_checkpoint", "/nonexistent/model.pt"], ["--init_checkpoint", "/nonexistent/model.pt"]),
])
def test_bad_values_are_named_with_the_fix(argv, words, paths):
    with pytest.raises(InputError) as err:
        load([*paths, *argv])
    for word in words:
        assert word in str(err.value)


def test_required_paths_and_folders(paths, tmp_path):
    with pytest.raises(InputError, match="--input_dir is required"):
        load(paths[2:])
    with pytest.raises(InputError, match="--input_dir .*missing: no such folder"):
        load([*paths, "--input_dir", str(tmp_path / "missing")])
    with pytest.raises(InputError, match="--target_mlm_accuracy needs --eval_dir"):
        load([*paths[:2], *paths[4:], "--target_mlm_accuracy", "0.72"])
    with pytest.raises(InputError, match="--eval_iter_samples -1 turns them off"):
        load([*paths, "--target_mlm_accuracy", "0.72", "--eval_iter_samples", "-1"])
    assert load([*paths, "--eval_iter_samples", "-1"]).run.eval_iter_samples == -1  # no target: no evals is fine


def test_fp16_without_a_gpu_falls_back_to_fp32_with_a_note(paths):
    config = load([*paths, "--fp16"], cuda=False)
    assert config.system.precision == "fp32"
    assert any("--fp16 needs a GPU" in note for note in config.notes)
    assert load([*paths, "--bf16"], cuda=False).system.precision == "bf16"
    assert load([*paths, "--fp16"], cuda=True).system.precision == "fp16"


@pytest.mark.parametrize("text, words", [
    ("train_batch_size = 8\nlearnig_rate = 1e-3\n", ["learnig_rate", "did you mean 'learning_rate'"]),
    ("train_batch_size = 'eight'\n", ["train_batch_size", "must be a whole number"]),
    ("max_steps = 7100.5\n", ["max_steps", "must be a whole number"]),
    ("fp16 = 1\n", ["fp16", "must be true or false"]),
    ("attention = 'fastest'\n", ["attention", "one of"]),
    ("train_batch_size = \n", ["not valid TOML"]),
])
def test_bad_toml_is_named(text, words, tmp_path, paths):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(text)
    with pytest.raises(InputError) as err:
        load(["--config", str(run_toml), *paths])
    assert str(run_toml) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_toml_accepts_integral_floats_and_resume_true(tmp_path, paths):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("max_steps = 7100.0\nresume_from_checkpoint = true\nfused_mha = true\n")
    config = load(["--config", str(run_toml), *paths])
    assert config.optimizer.max_steps == 7100 and config.checkpoint.resume_from_checkpoint == "latest"
    assert any("--fused_mha" in note for note in config.notes)


def test_resume_flag_alone_means_the_newest_checkpoint(paths):
    assert load([*paths, "--resume_from_checkpoint"]).checkpoint.resume_from_checkpoint == "latest"
    assert load([*paths, "--resume_from_checkpoint", "x.pt"]).checkpoint.resume_from_checkpoint == "x.pt"


def test_config_is_frozen(paths):
    config = load(paths)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch.train_batch_size = 1


def test_help_teaches_every_option_and_the_cli_reports_bad_input_in_one_line(paths):
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for name in load(paths).flat():
        if name != "precision":
            assert f"--{name}" in result.stdout
    assert "global batch" in result.stdout and "--config" in result.stdout
    bad = run_cli("train", *paths, "--train_batch_size", "10", "--gradient_accumulation_steps", "4")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "not divisible" in bad.stderr and "Traceback" not in bad.stderr


def test_choices_written_out_here_are_the_ones_the_code_runs(paths):
    """options/fields.py lists attention backends and compile modes literally (the parser imports no torch)."""
    from bert_pretrain.attention import BACKENDS
    from bert_pretrain.options.fields import ATTENTION_BACKENDS, COMPILE_MODES

    assert ATTENTION_BACKENDS == BACKENDS

    fields = {f.name: f for f in dataclasses.fields(load(paths).system)}
    assert tuple(fields["attention"].metadata["argparse"]["choices"]) == BACKENDS
    assert tuple(fields["compile_mode"].metadata["argparse"]["choices"]) == COMPILE_MODES
    assert load(["--compile_mode", "max-autotune-no-cudagraphs", *paths]).system.compile_mode == \
        "max-autotune-no-cudagraphs"


def test_any_device_pytorch_knows_is_taken_and_checked_when_the_run_starts(paths):
    """--device is not a fixed list: a vendor's device name parses (torch.device checks it at run time, see
    tests/test_devices.py); the parser imports no torch."""
    for name in ("xpu", "npu", "hpu", "mps", "cuda:1", "privateuseone"):
        assert load(["--device", name, *paths]).system.device == name


def test_on_an_accelerator_other_than_cuda(paths):
    """fp16 runs (autocast and GradScaler by device type); the recipe's --dist_backend nccl gives way to the
    device's default; compilation stays opt-in (measured only on CUDA)."""
    config = load(["--fp16", "--dist_backend", "nccl", *paths], accelerator="xpu")
    assert config.system.precision == "fp16" and config.system.dist_backend is None
    assert "note: --dist_backend nccl is CUDA's; using xpu's default collective backend" in config.notes
    assert (config.system.compile, config.system.compile_optimizer) == (False, False)
    explicit = load(["--device", "xpu:0", "--fp16", *paths])  # named, on a machine whose 'auto' would be the CPU
    assert explicit.system.precision == "fp16"
    on_cpu = load(["--device", "cpu", "--fp16", "--dist_backend", "nccl", *paths], accelerator="xpu")
    assert on_cpu.system.precision == "fp32" and on_cpu.system.dist_backend == "gloo"


def test_lamb_is_compiled_with_the_model_unless_told_otherwise(paths):
    def system(*flags, cuda=False):
        config = load([*flags, *paths], cuda=cuda).system
        return config.compile, config.compile_optimizer

    assert system() == (False, False)  # the CPU: neither
    assert system(cuda=True) == (True, True)  # a GPU: both
    assert system("--no_compile", cuda=True) == (False, False)
    for off in ("--no_compile_optimizer", "--no-compile_optimizer"):
        assert system(off, cuda=True) == (True, False)
    assert system("--compile_optimizer") == (False, True)  # the LAMB alone, on the CPU
