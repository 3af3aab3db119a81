"""Imports go one way (design.md, "Layers"): a module may import its own layer or those below it.

Every module of the package must be placed in a layer here, so a new module is a decision.
"""

import ast
from pathlib import Path

import bert_pretrain

PACKAGE = Path(bert_pretrain.__file__).parent

LAYERS = [
    # 0: helpers with no project imports
    {"errors", "atomic"},
    # 1: leaves, one concept each (torch / numpy / h5py / tokenizers / triton only). `model` uses the batch,
    # attention and fused_norm leaves that exist to keep it architecture-only.
    {"batch", "attention", "fused_norm", "fused_norm_kernels", "model", "tokenization", "data.shards", "optim",
     "lamb_compiled", "distributed", "mlperf", "metrics", "flops", "power", "step_profile"},
    # 2: data and state built from the leaves
    {"data", "data.builtin_corpus", "data.text", "data.wikidump", "data.instances", "data.prepare", "data.loader",
     "data.packing", "data.partition", "data.tasks", "data.prepare_options", "data.synthetic",
     "checkpoint", "evaluate", "inspect", "inspect_checkpoint", "step", "training_state"},
    # 3: composition
    {"config", "reference_flags"},
    # 4: wiring
    {"train", "train_setup", "train_observers", "bench", "bench_hf", "bench_timing", "convert", "demo"},
    # 5: entry
    {"cli", "__main__", "launch", ""},
]


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
    for level, names in enumerate(LAYERS):
        if name in names:
            return level
    raise AssertionError(f"module {name!r} is in no layer of tests/test_layers.py; place it there")


def test_every_import_points_down_or_sideways():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for target in project_imports(path):
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_model_knows_nothing_of_training():
    """The architecture uses its input type and its kernels (attention, the fused LayerNorm), nothing else."""
    assert project_imports(PACKAGE / "model.py") <= {"attention", "batch", "fused_norm"}
