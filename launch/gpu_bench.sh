#!/usr/bin/env bash
# The benchmark's model-side parts on a GPU machine lent by the workplace's device tool: ours only
# (SFT and DPO steps, sampling, MFU against the chip's bf16 peak measured in the same run, growth),
# absolute figures in $OUT/gpu.json and $OUT/gpu.txt, plus nvidia-smi's view of the chip.
#
#   launch/gpu_bench.sh wheels   # here, once: the pure-Python packages the GPU image lacks -> .whl/
#   launch/gpu_bench.sh run      # there: device run with command "bash launch/gpu_bench.sh run",
#                                #   carry [".whl"], timeout_s ~540
#
# The GPU image has jax (CUDA), flax, optax, orbax, transformers, sentencepiece and tensorstore but
# no TensorFlow, and nothing can be installed from the network there; JetStream's engine modules
# import seqio (TensorFlow) for type names only, so `run` puts launch/gpu_stubs (a two-class seqio
# stand-in) on PYTHONPATH. BENCH_ARGS adds benchmark flags (e.g. "--dim=2048 --layers=16").
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(google-jetstream==0.2.2 ml-collections==1.1.0 tensorboardX==2.6.4)

case "${1:-}" in
  wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 -d .whl "${WHEELS[@]}"
    ;;
  run)
    out="${OUT:-/tmp/gpu_bench}"
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" > /dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH="/tmp/site:$PWD/launch/gpu_stubs:$PWD" PYTHONUNBUFFERED=1
    (nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1
    python3 -c 'import jax, seqio; print(jax.__version__, jax.devices(), seqio.__file__)' \
      | tee "$out/devices.txt"
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
    python3 -m selfreward_jax.benchmark --no_peers --only=sft,dpo,sampling,mfu,growth \
      --peak_size=8192 --out="$out/gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$out/gpu.txt"
    ;;
  *)
    echo "usage: launch/gpu_bench.sh wheels|run" >&2
    exit 2
    ;;
esac
