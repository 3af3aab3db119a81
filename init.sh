#!/usr/bin/env bash
# Create ./.venv with bert-pretrain (editable) and its test tools. Safe to run again.
#
# A torch that is already importable by $PYTHON (e.g. your CUDA build, or an NGC container's) is
# reused through --system-site-packages and never replaced. Without one, the CPU build
# torch==$TORCH_VERSION is installed; on a GPU box, install your CUDA torch first, then run this.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "init.sh: reusing torch $("$PYTHON" -c 'import torch; print(torch.__version__)') from $PYTHON"
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "init.sh: no torch found; installing the CPU build torch==$TORCH_VERSION"
    .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
fi
# torch is a dependency with no upper bound, so pip keeps the one that is there; the fp8 extra (torchao,
# which depends on no torch) lets the fp8 tests run, the corpora extra (pyarrow, zstandard) prepare's record tests.
.venv/bin/python -m pip install -q -e ".[test,fp8,corpora]"
# The Triton kernels (--fused_norm) are tested on any CPU in Triton's interpreter. A GPU torch brings its
# own triton (CUDA's, or ROCm's under another package name): an importable one is never replaced.
if ! .venv/bin/python -c "import triton" 2>/dev/null && [ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ]; then
    echo "init.sh: installing triton for the tests of the Triton kernels (run in its interpreter on the CPU)"
    .venv/bin/python -m pip install -q triton
fi
echo "init.sh: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')); commands: .venv/bin/bert-pretrain --help"
