#!/usr/bin/env bash
# One GPU slot, start to end, from the repository root of a fresh machine:
#
#   OUT=/where/the/bundle/goes bash bench/campaign.sh [CAMPAIGN_SECONDS]
#
#  1. versions (torch, CUDA, the GPU; nothing the campaign does not import);
#  2. the CIFAR-10 JPEG mirror unpacked from $CAMPAIGN_MIRROR into data/cifar10-jpeg (once);
#  3. the previous call's bundle restored, if $CAMPAIGN_BUNDLE_IN holds one (bundle.json + parts;
#     default campaign-bundle/, the committed bundle of the last slot);
#  4. the training path exercised first: train, evaluate, checkpoint, resume, on synthetic data;
#  5. the self-check (until one has finished; later calls reuse its record, so every call trains
#     with the same switches): the fast path against fp32 eager, part by part, within its budget;
#  6. the campaign for CAMPAIGN_SECONDS (default 300), within what the script's limit leaves;
#  7. the campaign directory bundled into $OUT (at most 8 files, 16 MiB each, 64 MiB in all);
#  8. the status table.
#
# Every step runs under `timeout`; a failing step is reported and the later steps still run
# (the campaign records failed runs, the bundle keeps what was done). Run it again right after
# with the bundle of this call in CAMPAIGN_BUNDLE_IN, on this machine or a fresh one, to continue.
#
# Environment: OUT (bundle destination; default runs/bundle), CAMPAIGN_LIMIT_S (the whole
# script, default 520, for a 540 s command limit), CAMPAIGN_MIRROR (the mirror archive; default
# the first of ../shared/data/, shared/data/ and data/cifar10-jpeg.tar.gz), CAMPAIGN_BUNDLE_IN,
# CAMPAIGN_DIR (default runs/campaign), CAMPAIGN_DATA (where the mirror is or goes; default
# data/cifar10-jpeg, git-ignored), CAMPAIGN_DEVICE (cuda; cpu only to try the script),
# CAMPAIGN_ARGS (more `campaign` flags, e.g. a tiny plan for a CPU try), CAMPAIGN_TRAIN_ARGS
# (its --train-args), CAMPAIGN_SELFCHECK_ARGS (more `selfcheck` flags), PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
limit=${CAMPAIGN_LIMIT_S:-520}
campaign_s=${1:-300}
py=${PYTHON:-python3}
device=${CAMPAIGN_DEVICE:-cuda}
dir=${CAMPAIGN_DIR:-runs/campaign}
out=${OUT:-runs/bundle}
data=${CAMPAIGN_DATA:-data/cifar10-jpeg}
read -r -a extra <<<"${CAMPAIGN_ARGS:-}"
extra+=(--train-args "${CAMPAIGN_TRAIN_ARGS:-}")
# recompiles only: the cudagraphs log printed every op of the 110-layer graph (1 MB a run)
export PYTHONUNBUFFERED=1 TORCH_LOGS=${TORCH_LOGS:-recompiles}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out" "$dir/_campaign"
log=$dir/_campaign/slot-$(date -u +%Y%m%dT%H%M%SZ).log
exec > >(tee -a "$log") 2>&1  # the slot's whole output travels back in the bundle

left() { echo $((limit - (SECONDS - start))); }
min() { echo $(($1 < $2 ? $1 : $2)); }
step() {  # step NAME SECONDS COMMAND...: report, never abort
    local name=$1 seconds=$2 rc=0
    shift 2
    echo "== $name (limit ${seconds} s, $(left) s left, at $((SECONDS - start)) s)"
    timeout --kill-after=10 "$seconds" "$@" || rc=$?
    ((rc == 0)) || echo "== $name: FAILED (exit $rc$( ((rc == 124 || rc == 137)) && echo ', timed out'))"
    return $rc
}

echo "== versions"
"$py" - "$device" <<'EOF'
import platform, sys
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible")
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}")
EOF
nproc

if [[ ! -d $data/train ]]; then
    mirror=${CAMPAIGN_MIRROR:-}
    for candidate in {../shared/data,shared/data,data}/cifar10-jpeg.tar.gz; do
        [[ -z $mirror && -f $candidate ]] && mirror=$candidate
    done
    if [[ -n $mirror && -f $mirror ]]; then
        mkdir -p "$data" && step "unpack the mirror $mirror" 120 tar xzf "$mirror" -C "$data"
    else
        echo "== no mirror archive (set CAMPAIGN_MIRROR); the plan's data set must already be there"
    fi
fi

bundle_in=${CAMPAIGN_BUNDLE_IN-campaign-bundle}
if [[ -n $bundle_in && -f $bundle_in/bundle.json && ! -f $dir/_campaign/campaign.json ]]; then
    step "unbundle $bundle_in" 60 "$py" -m reproresnet unbundle "$bundle_in" --to "$dir"
fi

smoke=$(mktemp -d)
step "training path (synthetic data)" "$(min "$(left)" 120)" \
    "$py" -m reproresnet train --arch preact_resnet20 --dataset synthetic --limit-train 1000 --limit-test 500 \
    --epochs 2 --batch-size 128 --device "$device" --out "$smoke/run" --stop-after 100 --quiet &&
  step "training path, resumed (a complete run is only read)" 60 \
    "$py" -m reproresnet train --arch preact_resnet20 --dataset synthetic --limit-train 1000 --limit-test 500 \
    --epochs 2 --batch-size 128 --device "$device" --out "$smoke/run" --resume --quiet
rm -rf "$smoke"

check=$dir/_campaign/selfcheck.json
finished() {  # the record's top-level "ok" is written last
    [[ -f $check ]] && "$py" -c 'import json, sys; sys.exit("ok" not in json.load(open(sys.argv[1])))' "$check"
}
if ! finished; then
    # it keeps its budget (a check still running then is cut); the margin is for its imports
    step "self-check" "$(min "$(left)" 180)" "$py" -m reproresnet selfcheck --device "$device" --budget 150 \
        --out "$check" ${CAMPAIGN_SELFCHECK_ARGS:-}
fi
selfcheck=()
finished && selfcheck=(--selfcheck "$check")

bundle_s=30
budget=$(min "$campaign_s" $(($(left) - bundle_s - 15)))
if ((budget >= 30)); then
    step "campaign, budget ${budget} s" $((budget + 20)) "$py" -m reproresnet campaign --out "$dir" \
        --budget "$budget" --device "$device" --dataset "folder:$data" --tag jpeg "${selfcheck[@]}" "${extra[@]}"
else
    echo "== campaign: skipped, ${budget} s left"
fi

step "bundle into $out" "$(min "$(left)" 60)" "$py" -m reproresnet bundle "$dir" --to "$out"
ls -l "$out"
echo "== status ($((SECONDS - start)) s)"
"$py" -m reproresnet campaign --out "$dir" --status --device "$device" --dataset "folder:$data" \
    --tag jpeg "${selfcheck[@]}" "${extra[@]}"
