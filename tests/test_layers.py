"""Imports go one way: a module may import its own level or those below it, never above.

The levels, bottom up, with what each subpackage may use:
  0 helpers        errors, atomic, strict_json, folder_lock (one writer per output folder), parent_death (a child
                   that ends with its parent), regular_file (an input is a regular file, not a FIFO or device),
                   failure_cause (a worker's error line for torchrun's agent): no project imports beyond each other
  0 options/       every command's flags (dataclass fields -> argparse and TOML); helpers only, and no torch,
                   h5py or numpy (test_the_command_line_is_built_without_heavy_imports)
  1 kernels/       Triton and compiled pieces; only helpers (each has a plain reference in its tests)
  2 leaves         batch, attention, model, optim, distributed, tf_table, fp8, devices: one concept each; model
                   uses only its input type, attention and kernels/ (test_model_knows_nothing_of_training); fp8
                   converts the model from outside, as build.py compiles it; devices is what differs between
                   accelerators, and with the CUDA-only pieces the one place that names torch.cuda
                   (test_only_the_device_module_and_cuda_only_pieces_name_torch_cuda)
  3 data/          the files on disk and reading them: the shard schema, the vocab file, rows -> batches, the
                   training stream; helpers and leaves (the Batch type)
  4 prepare/       text -> sentences -> WordPiece -> instances -> shards, offline; writes through data/shards
                   and data/vocab, and imports no torch (test_prepare_imports_no_torch); records (JSON Lines,
                   Parquet, Arrow) import pyarrow and zstandard, the corpora extra, only when such a file is read
  4 state          step, build, weights, tf_checkpoint, evaluate: built from leaves and data/
  5 train/, bench/ peers: each uses everything below and never the other
  6 tools          convert, inspect_checkpoint, demo, prepare/reference/mlperf (prepare-mlperf: NVIDIA's exact data
                   and the converted TF checkpoint): commands that reuse the levels below
  7 entry          cli, __main__, launch

Every module of the package must be placed here, so a new module is a decision.
"""
import ast
from pathlib import Path

import bert_pretrain

PACKAGE = Path(bert_pretrain.__file__).parent
SUBPACKAGE_LEVELS = {"options": 0, "kernels": 1, "data": 3, "prepare": 4, "train": 5, "bench": 5}
MODULE_LEVELS = {
    "errors": 0, "atomic": 0, "strict_json": 0, "folder_lock": 0, "parent_death": 0, "regular_file": 0,
    "failure_cause": 0,
    "batch": 2, "attention": 2, "model": 2, "optim": 2, "distributed": 2, "tf_table": 2, "fp8": 2,
    "devices": 2,
    "step": 4, "build": 4, "weights": 4, "tf_checkpoint": 4, "evaluate": 4,
    "convert": 6, "inspect_checkpoint": 6, "demo": 6,
    # prepare-mlperf also converts MLCommons' TensorFlow checkpoint (convert, torch): a tool, kept beside the
    # reference method whose data step it runs
    "prepare.reference.mlperf": 6,
    "cli": 7, "__main__": 7, "launch": 7, "": 7,
}
PEERS = [("train", "bench"), ("prepare", "step"), ("prepare", "build"), ("prepare", "weights"), ("prepare", "tf_checkpoint"),
         ("prepare", "evaluate")]  # same level, no imports either way


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bert_pretrain"):
            base = node.module.removeprefix("bert_pretrain").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if (PACKAGE / (candidate.replace(".", "/") + ".py")).exists() else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bert_pretrain"):
                    found.add(alias.name.removeprefix("bert_pretrain").lstrip("."))
    return found


def layer_of(name: str) -> int:
    top = name.split(".")[0]
    level = MODULE_LEVELS.get(name, SUBPACKAGE_LEVELS.get(top))
    if level is None:
        raise AssertionError(f"module {name!r} has no level in tests/test_layers.py; place it there")
    return level


def test_every_import_points_down_or_sideways():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target in project_imports(path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_peers_do_not_import_each_other():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for a, b in PEERS + [(b, a) for a, b in PEERS]:
            if name.split(".")[0] == a and layer_of(name) == layer_of(a):
                wrong += [f"{name} imports {t}" for t in project_imports(path) if t.split(".")[0] == b]
    assert not wrong, "\n".join(wrong)


def test_no_module_shadows_the_standard_library():
    import sys

    clashes = [p for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert not clashes, f"named after a standard-library module: {clashes}"


def test_model_knows_nothing_of_training():
    """The architecture uses its input type and its kernels (attention, the fused LayerNorm), nothing else."""
    assert project_imports(PACKAGE / "model.py") <= {"attention", "batch", "kernels.fused_norm"}


# What may name torch.cuda: the device module, and the pieces that run only on NVIDIA GPUs, each chosen by
# capability with a fallback that runs anywhere: flash attention's CUDA kernels (attention), float8 tensor cores
# (fp8), the Triton kernels (kernels/), NVML's power counters (bench/power). Anything else asks devices.
NAMES_TORCH_CUDA = {"devices", "attention", "fp8", "bench.power"}
NAMES_TORCH_CUDA_PACKAGES = {"kernels"}


def names_torch_cuda(source: str) -> list[int]:
    """The lines of `source` that use torch.cuda (attribute, `import torch.cuda`, `from torch import cuda`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "cuda" and isinstance(node.value, ast.Name) \
                and node.value.id == "torch":
            lines.append(node.lineno)
        elif isinstance(node, ast.Import) and any(a.name.split(".")[:2] == ["torch", "cuda"] for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.split(".")[:2] == ["torch", "cuda"]
                or (node.module == "torch" and any(a.name == "cuda" for a in node.names))):
            lines.append(node.lineno)
    return sorted(lines)


def test_names_torch_cuda_finds_each_spelling():
    code = ("import torch\nimport torch.cuda\nfrom torch import cuda\nfrom torch.cuda import amp\n"
            "torch.cuda.synchronize()\nx = torch.backends.cuda\n'torch.cuda in a string'\n")
    assert names_torch_cuda(code) == [2, 3, 4, 5]


def test_only_the_device_module_and_cuda_only_pieces_name_torch_cuda():
    """Any PyTorch accelerator: device calls go through devices.py, so a new device needs no change elsewhere."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name in NAMES_TORCH_CUDA or name.split(".")[0] in NAMES_TORCH_CUDA_PACKAGES:
            continue
        wrong += [f"{name}:{line}" for line in names_torch_cuda(path.read_text())]
    assert not wrong, f"torch.cuda named outside devices.py and the CUDA-only pieces: {wrong}"


def _imported_modules(code: str) -> set[str]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_prepare_imports_no_torch():
    """Data preparation runs on machines without torch (and its workers start faster without it)."""
    names = [module_name(p) for p in sorted((PACKAGE / "prepare").rglob("*.py"))]
    offline = [n for n in names if layer_of(n) == SUBPACKAGE_LEVELS["prepare"]]
    loaded = _imported_modules("\n".join(f"import bert_pretrain.{n}" for n in offline))
    assert "bert_pretrain.prepare.pipeline" in loaded and "torch" not in loaded
    assert "bert_pretrain.prepare.records" in loaded and not {"pyarrow", "zstandard"} & loaded  # optional extra


def test_the_command_line_is_built_without_heavy_imports():
    """`bert-pretrain --help` works where torch, h5py or numpy are missing or broken: building every parser
    imports none of them."""
    loaded = _imported_modules("from bert_pretrain import cli\ncli.build_parser()")
    assert "bert_pretrain.options.train" in loaded
    assert not {"torch", "h5py", "numpy"} & loaded, sorted({"torch", "h5py", "numpy"} & loaded)
