#!/usr/bin/env bash
# The speed benchmark on one CUDA GPU, in one command, from the repository root:
#
#     bash bench/device.sh
#
# 1. versions and nvidia-smi;
# 2. `python3 -m reproresnet.bench.measure` on CUDA for WRN-16-4, pre-act ResNet-110 and ResNet-164:
#    this project's paths (eager, graph engine, 3 networks stacked) against the plain PyTorch
#    baseline (bench.json);
# 3. with the time left: (a) the eager path through torch.compile with its own CUDA graphs
#    (mode "reduce-overhead"), against which the graph engine can be judged
#    (bench-reduce-overhead.json); (b) two real epochs of each network through
#    train_one_epoch, the epoch's last, smaller batch included (bench-epochs.json);
# 4. with the time left, and only if BENCH_DATASET names a data set (cifar10 with
#    BENCH_DATA_DIR, or folder:PATH): a short training run of one network on real images.
#
# Records go to $OUT when it is set (the device tool sets it), else to results/bench-<gpu>/.
# Needs no network. Every step runs under `timeout`; the whole script keeps within
# BENCH_BUDGET_S seconds (default 450, for a 480-second slot). A step that fails or times
# out is reported and the next one still runs; the exit status says whether any failed.
# The benchmark rewrites its record after each network, so a step cut short keeps what it
# measured.
#
# Environment: OUT, BENCH_BUDGET_S, BENCH_ARCHS (default "wrn_16_4 preact_resnet110
# preact_resnet164"; step 3a runs the 110 and 164 first), BENCH_EXTRA (more flags, appended to
# steps 2 and 3, so they override), BENCH_DATASET, BENCH_DATA_DIR, BENCH_TRAIN_ARCH,
# BENCH_RECIPE, BENCH_EPOCHS (step 4), PYTHON (python3), BENCH_DEVICE (cuda; cpu
# only to try the script itself on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
budget=${BENCH_BUDGET_S:-450}
archs=(${BENCH_ARCHS:-wrn_16_4 preact_resnet110 preact_resnet164})
py=${PYTHON:-python3}
device=${BENCH_DEVICE:-cuda}
read -r -a extra <<<"${BENCH_EXTRA:-}"
failed=0
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $((budget - (SECONDS - start))); }

# Under the device tool everything also goes to $OUT/device.log, which comes back whole.
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/device.log") 2>&1
fi

# run_step NAME LIMIT_SECONDS required|optional COMMAND...: run under timeout; report, never
# abort the script. An optional step that runs out of time is no failure: its record keeps
# the networks it finished.
run_step() {
    local name=$1 limit=$2 kind=$3
    shift 3
    if ((limit < 45)); then
        echo "== $name: skipped, ${limit} s left"
        [[ $kind == optional ]] || failed=1
        return 0
    fi
    echo "== $name (limit ${limit} s, $(left) s of the budget left)"
    local rc=0
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "== $name: TIMED OUT after ${limit} s"
        [[ $kind == optional ]] || failed=1
    elif ((rc != 0)); then
        echo "== $name: FAILED (exit $rc)"
        failed=1
    fi
    return 0
}

min() { echo $(($1 < $2 ? $1 : $2)); }

echo "== versions"
uname -srm
"$py" - "$device" <<'EOF'
import platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
try:
    import torchvision
    print("torchvision", torchvision.__version__)
except ImportError:
    sys.exit("torchvision is missing: carry a wheel matching this torch (see bench/README.md)")
import numpy, pandas, tqdm, PIL
print("numpy", numpy.__version__, "pandas", pandas.__version__, "tqdm", tqdm.__version__, "pillow", PIL.__version__)
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible")
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs", f"sm_{p.major}{p.minor}")
EOF
nvidia-smi || echo "(nvidia-smi failed)"
nproc

if [[ -n "${OUT:-}" ]]; then
    dest=$OUT
else
    slug=$("$py" -c "import torch, sys; from reproresnet.bench.measure import device_slug; print(device_slug(torch.device(sys.argv[1])))" "$device")
    dest=results/bench-$slug
fi
mkdir -p "$dest"
echo "== records in $dest"

# Step 2: the benchmark proper: every path the library trains with, and the baseline.
run_step "benchmark" "$(min "$(left)" 300)" required \
    "$py" -m reproresnet.bench.measure --device "$device" --archs "${archs[@]}" --epochs 0 \
    --out "$dest/bench.json" "${extra[@]}"

# Step 3a: torch.compile's CUDA graphs on the eager path; deep, narrow nets are launch-bound.
variant_archs=()
for arch in preact_resnet110 preact_resnet164 "${archs[@]}"; do
    [[ " ${archs[*]} " == *" $arch "* && " ${variant_archs[*]} " != *" $arch "* ]] && variant_archs+=("$arch")
done
run_step "benchmark, compile mode reduce-overhead" "$(min "$(left)" 180)" optional \
    "$py" -m reproresnet.bench.measure --device "$device" --archs "${variant_archs[@]}" \
    --compile --compile-mode reduce-overhead --no-baseline --no-graph --stack 1 --steps 100 --warmup-steps 30 \
    --epochs 0 \
    --out "$dest/bench-reduce-overhead.json" "${extra[@]}"

# Step 3b: real epochs through train_one_epoch, the last batch of 80 included (run eagerly).
run_step "real epochs" "$(min "$(left)" 240)" optional \
    "$py" -m reproresnet.bench.measure --device "$device" --archs "${archs[@]}" --no-baseline \
    --steps 20 --warmup-steps 5 --data-batches 20 --epochs 2 \
    --out "$dest/bench-epochs.json" "${extra[@]}"

# Step 4: real data with the time left, only if BENCH_DATASET names a data set: "cifar10" (with
# BENCH_DATA_DIR holding cifar-10-batches-py, which must already be on the machine: at 163 MB it
# cannot travel with the 64 MiB working tree) or "folder:PATH", e.g. the JPEG mirror of
# CIFAR-10 extracted into a carried, git-ignored folder (label its numbers as the mirror's).
# One network, the recipe's schedule compressed to BENCH_EPOCHS epochs; resumable.
if [[ -n "${BENCH_DATASET:-}" ]]; then
    train_arch=${BENCH_TRAIN_ARCH:-wrn_16_4}
    run_step "real-data training, $train_arch on $BENCH_DATASET, ${BENCH_EPOCHS:-10} epochs" "$(left)" optional \
        "$py" -m reproresnet train --arch "$train_arch" --recipe "${BENCH_RECIPE:-wrn2016}" \
        --epochs "${BENCH_EPOCHS:-10}" --dataset "$BENCH_DATASET" ${BENCH_DATA_DIR:+--data-dir "$BENCH_DATA_DIR"} \
        --out "$dest/train-$train_arch" --resume --quiet
    rm -f "$dest/train-$train_arch/checkpoint.pt" "$dest/train-$train_arch/.lock"
else
    echo "== real-data training: skipped (set BENCH_DATASET, e.g. cifar10 or folder:PATH)"
fi

echo "== summary ($((SECONDS - start)) s)"
"$py" - "$dest" <<'EOF' || failed=1
import json, sys
from pathlib import Path
from reproresnet.bench.record import format_bench
for path in sorted(Path(sys.argv[1]).glob("bench*.json")):
    record = json.loads(path.read_text())
    print(f"-- {path.name}{'' if record['complete'] else ' (INCOMPLETE: a step ran out of time or failed)'}")
    print(format_bench(record))
EOF
exit $failed
