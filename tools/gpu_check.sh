#!/usr/bin/env bash
# The GPU check: kdnas' CUDA tests and its GPU benchmark in one run of at most 8 minutes on a
# bare GPU machine that has its own PyTorch and no package registry.
#
#   tools/gpu_check.sh prepare              on a machine with the registry: the wheels kdnas
#                                           needs beside PyTorch, and the CIFAR-10 archive,
#                                           into .gpu_check/ (ignored by git; carry it)
#   tools/gpu_check.sh run [ARCHIVE]        on the GPU machine, from the checkout's root:
#                                           installs kdnas with --no-deps (and the carried
#                                           wheels it lacks) into a venv over the machine's
#                                           PyTorch, runs tests/test_device.py, then
#                                           `kdnas bench --device cuda`; figures go to
#                                           ${REPORTS:-reports}/benchmarks.json (key gpu) and
#                                           BENCHMARKS.md
#
# Settings (environment): DEVICE (cuda), CANDIDATES (12: a third of each family), WORKERS
# (say 2,8: a worker sweep instead of the full benchmark, written beside it), SKIP_TESTS=1
# (no CUDA tests: a second call that only sweeps), QUICK=1
# (the tiny workload: what the tests run on a CPU, with DEVICE=cpu and NO_INSTALL=1),
# NO_INSTALL=1 (use the python on PATH as it is), PYTHON (python3), REPORTS (reports), TESTS
# (tests/test_device.py: what pytest runs), BUDGET (470: seconds for the whole run; the
# benchmark stops at what is left and keeps the parts it finished).
set -euo pipefail
cd "$(dirname "$0")/.."
here=.gpu_check
py=${PYTHON:-python3}

prepare() {
    mkdir -p "$here/wheels"
    # what kdnas imports that a machine with PyTorch, torchvision, numpy and pandas may lack
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$here/wheels" \
        optuna alembic sqlalchemy colorlog mako greenlet tqdm pytest pluggy iniconfig \
        scikit-learn joblib threadpoolctl onnxscript onnx-ir ml_dtypes
    cp "${1:-../shared/datasets/cifar10-jpg.tar.gz}" "$here/cifar10-jpg.tar.gz"
    du -sh "$here"
}

install() {
    "$py" -m venv --system-site-packages "$here/venv"
    py="$here/venv/bin/python"
    local need=()
    for mod_whl in optuna:optuna alembic:alembic sqlalchemy:sqlalchemy colorlog:colorlog \
            mako:mako tqdm:tqdm pytest:pytest pluggy:pluggy iniconfig:iniconfig \
            sklearn:scikit_learn joblib:joblib threadpoolctl:threadpoolctl \
            onnxscript:onnxscript onnx_ir:onnx_ir ml_dtypes:ml_dtypes greenlet:greenlet; do
        "$py" -c "import ${mod_whl%%:*}" 2>/dev/null \
            || need+=("$(ls "$here"/wheels/"${mod_whl#*:}"-*.whl 2>/dev/null | head -1)")
    done
    [ ${#need[@]} -eq 0 ] || "$py" -m pip install -q --no-deps --no-index "${need[@]}"
    "$py" -m pip install -q --no-deps --no-build-isolation -e .
}

run() {
    local archive=${1:-$here/cifar10-jpg.tar.gz} device=${DEVICE:-cuda} t0=$SECONDS
    [ "${NO_INSTALL:-0}" = 1 ] || install
    "$py" -c "import torch, kdnas; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    if [ "${SKIP_TESTS:-0}" != 1 ]; then
        echo "== CUDA tests (${TESTS:-tests/test_device.py})"
        # shellcheck disable=SC2086  # TESTS may hold pytest's own arguments
        # one at a time (-o addopts=: no test processes side by side on the GPU, no xdist)
        "$py" -m pytest -q -p no:cacheprovider -o addopts= ${TESTS:-tests/test_device.py} \
            || echo "CUDA TESTS FAILED"
    fi
    echo "== GPU benchmark ($((SECONDS - t0)) s so far)"
    local quick=() trials=() sweep=()
    [ "${QUICK:-0}" = 1 ] && quick=(--quick)
    [ -n "${WORKERS:-}" ] && sweep=(--gpu-workers "$WORKERS")
    [ -n "${CANDIDATES:-}" ] && trials=(--trials "$CANDIDATES")
    # what is left of the 8 minutes (BUDGET s in all): at the limit the benchmark is
    # interrupted and keeps the parts it finished (it writes them after each part)
    local left=$(( ${BUDGET:-470} - (SECONDS - t0) ))
    [ "$left" -gt 10 ] || left=10
    timeout -s INT -k 60 "$left" "$py" -m kdnas.bench --workload gpu --device "$device" \
        --archive "$archive" --work "$here/work" --out "${REPORTS:-reports}" "${quick[@]}" \
        "${trials[@]}" "${sweep[@]}" \
        || echo "GPU BENCHMARK STOPPED (status $?, ${left} s left for it of" \
        "BUDGET ${BUDGET:-470} s): the parts it finished are in ${REPORTS:-reports}/"
    echo "== done in $((SECONDS - t0)) s"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
esac
