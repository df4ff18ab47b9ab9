#!/usr/bin/env bash
# Fetch the benchmark anchors into ignored folders (never committed): run once, from the repo root,
# on a machine with network access. The GPU machine has none, so both folders travel with `carry`.
#   .whl/      pure-Python wheels installed there with pip --target (fla-core, optuna, rich, ...)
#   .anchors/  mamba_ssm's Triton SSD files under a stub package (its __init__ imports CUDA
#              extensions the GPU machine lacks), importable with PYTHONPATH=.anchors/mamba_stub
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
# fla-core needs only einops (present there); optuna needs colorlog, tqdm (+ numpy, packaging, present).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
    -d .whl fla-core==0.6.0 optuna==5.0.0 colorlog==6.12.0 tqdm==4.70.1 \
    rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
mkdir -p .anchors
if [ ! -f .anchors/mamba_ssm-2.3.2.post1.tar.gz ]; then
    # pip reads the sdist's metadata by running its setup.py, which imports torch and wheel:
    # use a Python that has both (e.g. PYTHON=/path/to/venv/bin/python)
    MAMBA_SKIP_CUDA_BUILD=TRUE "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation \
        -d .anchors mamba-ssm==2.3.2.post1
fi
tmp=$(mktemp -d)
tar xzf .anchors/mamba_ssm-2.3.2.post1.tar.gz -C "$tmp"
src="$tmp/mamba_ssm-2.3.2.post1/mamba_ssm"
dst=.anchors/mamba_stub/mamba_ssm
rm -rf .anchors/mamba_stub
mkdir -p "$dst/ops/triton" "$dst/utils"
touch "$dst/__init__.py" "$dst/ops/__init__.py" "$dst/ops/triton/__init__.py" "$dst/utils/__init__.py"
cp "$src"/ops/triton/*.py "$dst/ops/triton/"
cp "$src"/utils/torch.py "$src"/utils/determinism.py "$dst/utils/"
rm -rf "$tmp"
echo "anchors ready: $(ls .whl | wc -l) wheels in .whl/, mamba stub in .anchors/mamba_stub"
