#!/usr/bin/env bash
# The GPU tables of the speed issue in one device call (a few minutes on an H100/H200), written to $OUT.
#
# A lent GPU machine has torch and transformers but not the offline model packages, so the tokenizer and
# generation config travel as a small folder (no weights: the models are built from configs). Here:
#   mkdir -p .device/vocabulary && echo /.device/ >>.git/info/exclude
#   cp ~/.cache/whisper_spec/transformers/base-*/{tokenizer.json,tokenizer_config.json,generation_config.json} .device/vocabulary/
# then run `bash evaluation/gpu_session.sh` there with `.device` carried.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
# whisper_spec's audio module imports librosa and soundfile; the timing never reads audio files, so on a
# machine without them empty stand-ins let the package import (transformers does not see them installed).
if ! python -c "import librosa, soundfile" 2>/dev/null; then
    stubs=$(mktemp -d)
    mkdir -p "$stubs/librosa" "$stubs/soundfile"
    touch "$stubs/librosa/__init__.py" "$stubs/soundfile/__init__.py"
    export PYTHONPATH="$stubs${PYTHONPATH:+:$PYTHONPATH}"
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "no nvidia-smi"; } | tee "$OUT/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
vocabulary=.device/vocabulary
# 1. float32, where rounding cannot flip a choice: CUDA-graph steps must give the plain path's tokens
python -m evaluation.gpu_timing --architecture "${ARCH:-large-v3}" --vocabulary "$vocabulary" --dtype float32 --batch 4 --tokens 64 --repeats 1 \
    --probabilities 0.7 --no-transformers --out "$OUT/float32" 2>&1 | tee "$OUT/float32.log"
# 2. the targets: float16, batch 1 and 16, oracle acceptance around 0.5-0.9
python -m evaluation.gpu_timing --architecture "${ARCH:-large-v3}" --vocabulary "$vocabulary" --batch 1 --batch 16 --repeats 3 \
    --probabilities 0.5,0.7,0.9 --out "$OUT/float16" 2>&1 | tee "$OUT/float16.log"
