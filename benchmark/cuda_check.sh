#!/usr/bin/env bash
# The GPU check, for a machine with CUDA and the requirements installed:
#   1. the test suite with every training run on the GPU (`pytest --cuda`; the learning tests
#      then assert the same reached returns with the networks on the GPU),
#   2. training throughput on the CPU and on the GPU, one after the other on the same machine.
# Traffic tests are left out where SUMO is not installed. Logs go to $OUT (default cuda_check/).
#
#     bash benchmark/cuda_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-cuda_check}
mkdir -p "$OUT"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"

deselect=()
python -c "import libsumo" 2>/dev/null || deselect=(-k "not tsc")
timeout 330 python -m pytest --cuda -n "${WORKERS:-8}" -p no:cacheprovider "${deselect[@]}" 2>&1 | tee "$OUT/pytest_cuda.log"

for env_id in mpe-spread ant-2x4; do
    for device in "" "--cuda"; do
        echo "== $env_id ${device:-cpu}"
        timeout 150 python benchmark/train_sps.py --algo mappo happo mat --env-id "$env_id" \
            --total-timesteps 12000 --env-steps 200 $device
    done
done 2>&1 | tee "$OUT/train_sps.log"
