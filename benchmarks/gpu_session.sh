#!/usr/bin/env bash
# Run on the GPU machine (the device tool's `run`, with carry [".gpu"]), from the repository root, after
# benchmarks/gpu_prepare.sh here. Phases, in the order given:
#   check     benchmarks/gpu_check.py: host syncs, fp32/bf16/fp16, compile and CUDA graphs, cache, NCCL
#   timing    benchmarks/gpu_recipe.py: the 240-epoch resnet32x4 -> resnet8x4 recipe on a CIFAR-100-sized
#             synthetic set, 3 timed epochs per variant, the whole schedule projected from them
#   accuracy  the same recipe, shortened to ACCURACY_EPOCHS (default 30), on CIFAR-10 with CUDA graphs
#   dg        kdlab dg on RotatedMNIST at DomainBed's budget (configs/dg/rotated_mnist_domainbed: whole
#             domains, Adam 1e-3, 5000 steps, training-domain validation), targets 0 and 75 degrees, seed 0:
#             the mnist_cnn teacher (DomainBed's ERM), ce, KD, KD+SWAD and KD+WAKD students; compare with
#             DomainBed's published ERM row (domainbed/results/2020_10_06_7df6f06/results.tex: 95.9 +- 0.1
#             at 0 degrees, 96.4 +- 0.0 at 75, training-domain validation; the paper's numbers)
#   tests     the CPU test suite under the GPU machine's Python and torch
# JSON results and one log per phase go to $OUT (the device tool brings them back).
set -uo pipefail
out=${OUT:-/tmp/kdlab-gpu}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 KDLAB_CACHE=/tmp/kdlab-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
for phase in "$@"; do
    case $phase in
        check) python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" ;;
        timing) python3 benchmarks/gpu_recipe.py --timed-epochs 3 --out "$out/gpu_recipe_timing.json" ;;
        accuracy) python3 benchmarks/gpu_recipe.py --variants "" --accuracy --accuracy-variant cudagraphs \
                      --epochs "${ACCURACY_EPOCHS:-30}" --cifar10 .gpu/cifar10-jpeg.tar.gz \
                      --out "$out/gpu_recipe_accuracy.json" ;;
        dg) dgc=configs/dg/rotated_mnist_domainbed
            python3 -m kdlab.cli.main dg $dgc/ce.yaml $dgc/kd.yaml $dgc/kd_swad.yaml $dgc/kd_wakd.yaml \
                --teacher $dgc/teacher.yaml --targets 0 5 --seeds 0 --out-dir "$out/dg" data.root=.gpu ;;
        tests) python3 -m pytest -x -p no:cacheprovider tests ;;
        *) echo "unknown phase $phase (check, timing, accuracy, dg, tests)"; exit 2 ;;
    esac 2>&1 | tee "$out/$phase.log"
done
