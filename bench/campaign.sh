#!/usr/bin/env bash
# One call of a GPU slot, start to end, from the repository root:
#
#   OUT=/where/the/bundle/goes bash bench/campaign.sh [CAMPAIGN_SECONDS]
#
#  1. the data, where bench/README.md's device calls put it: the mirror already unpacked in
#     $CAMPAIGN_DATA (data/cifar10-jpeg, git-ignored: an earlier call on this machine), else the
#     carried archive $CAMPAIGN_MIRROR (data/cifar10-jpeg.tar.gz), checked against its sha256
#     and unpacked; else the script stops in its first second, saying where it looked;
#  2. the machine (nproc, the GPU by nvidia-smi; the campaign prints torch's versions itself);
#  3. a bundle restored ($CAMPAIGN_BUNDLE_IN, default campaign-bundle/: the committed bundle of
#     the last slot, if there is one) only if the campaign directory holds no campaign yet: a
#     second call on the same (still warm) machine continues from the run directories the
#     first one left, with no round trip through a bundle;
#  4. the campaign, one process, for CAMPAIGN_SECONDS (default: all that the limit leaves): it
#     probes the device (reproresnet/campaign/probe.py, seconds), reads the mirror once, runs (or reuses)
#     the in-process self-check that chooses the engine, precision, layout and stack size, then
#     trains the plan's networks, each one's seeds as one stacked network, and prints the
#     variant table and the status table;
#  5. the campaign directory bundled into $OUT (at most 8 files, 16 MiB each, 64 MiB in all).
#
# Every step runs under `timeout`; a failing step is reported and the later steps still run
# (the campaign records failed runs, the bundle keeps what was done). No smoke run on the GPU:
# CI runs the training path on a CPU.
#
# Environment: OUT (bundle destination; default runs/bundle), CAMPAIGN_LIMIT_S (the whole
# script; default 550 on a first call, for the device tool's timeout_s 570, and 130 when an
# earlier call's campaign is there to continue: what a 15-minute slot surely has left, see
# bench/README.md), CAMPAIGN_MIRROR (the archive; default data/cifar10-jpeg.tar.gz),
# CAMPAIGN_MIRROR_SHA256 (its sha256; default the JPEG mirror's), CAMPAIGN_BUNDLE_IN (a previous
# call's bundle for a fresh machine; default campaign-bundle, '' for none), CAMPAIGN_DIR
# (default runs/campaign), CAMPAIGN_DATA (the unpacked mirror; default data/cifar10-jpeg,
# git-ignored), CAMPAIGN_DEVICE (cuda; cpu only to try the script), CAMPAIGN_ARGS (more
# `campaign` flags, e.g. a tiny plan for a CPU try), CAMPAIGN_TRAIN_ARGS (its --train-args),
# PYTHON (python3).
set -uo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
campaign_s=${1:-100000}
py=${PYTHON:-python3}
device=${CAMPAIGN_DEVICE:-cuda}
dir=${CAMPAIGN_DIR:-runs/campaign}
out=${OUT:-runs/bundle}
data=${CAMPAIGN_DATA:-data/cifar10-jpeg}
mirror=${CAMPAIGN_MIRROR:-data/cifar10-jpeg.tar.gz}
# The archive's sha256, as book/methods.md gives it (tests/test_bench.py holds the two equal).
mirror_sha256=${CAMPAIGN_MIRROR_SHA256:-1eeb753345949d7d9fecc3c6a53562608d45ba5b6f282cd58053eabc3928ea0b}
if [[ -f $dir/_campaign/campaign.json ]]; then limit=${CAMPAIGN_LIMIT_S:-130}; else limit=${CAMPAIGN_LIMIT_S:-550}; fi
read -r -a extra <<<"${CAMPAIGN_ARGS:-}"
extra+=(--train-args "${CAMPAIGN_TRAIN_ARGS:-}")
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The data first: a slot without it stops here, before anything is written.
at() { [[ $1 == /* ]] && echo "$1" || echo "$PWD/$1"; }
if [[ -d $data/train && -d $data/test ]]; then
    unpack=""
elif [[ ! -f $mirror ]]; then
    echo "== no data: neither the unpacked mirror $(at "$data")/{train,test} nor the archive $(at "$mirror")" \
         "(copy cifar10-jpeg.tar.gz there and carry it: bench/README.md); stopped" >&2
    exit 2
elif ! sha=$(sha256sum "$mirror" | cut -d' ' -f1) || [[ $sha != "$mirror_sha256" ]]; then
    echo "== no data: $(at "$mirror") has sha256 ${sha:-(unreadable)}, not the mirror's $mirror_sha256; stopped" >&2
    exit 2
else
    unpack=$mirror
fi

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
echo "== machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>/dev/null || echo 'no nvidia-smi')"

if [[ -n $unpack ]]; then  # into a folder beside $data, renamed when whole: a cut unpacking is never the data
    rm -rf "$data.partial" && mkdir -p "$data.partial"
    if step "unpack the mirror $unpack (sha256 checked) into $data" 120 tar xzf "$unpack" -C "$data.partial" &&
        [[ -d $data.partial/train && -d $data.partial/test ]]; then
        rm -rf "$data" && mv "$data.partial" "$data"
    else
        echo "== no data: $unpack did not unpack into train/ and test/ folders; stopped"
        exit 2
    fi
else
    echo "== data: the mirror already unpacked in $data"
fi

bundle_in=${CAMPAIGN_BUNDLE_IN-campaign-bundle}
if [[ -f $dir/_campaign/campaign.json ]]; then
    echo "== continuing the campaign in $dir (left by an earlier call on this machine)"
elif [[ -n $bundle_in && -f $bundle_in/bundle.json ]]; then
    step "unbundle $bundle_in" 60 "$py" -m reproresnet unbundle "$bundle_in" --to "$dir"
fi

bundle_s=30
budget=$(min "$campaign_s" $(($(left) - bundle_s - 15)))
if ((budget >= 30)); then
    step "campaign, budget ${budget} s" $((budget + 20)) "$py" -m reproresnet campaign --out "$dir" \
        --budget "$budget" --device "$device" --dataset "folder:$data" --tag jpeg "${extra[@]}"
else
    echo "== campaign: skipped, ${budget} s left"
fi

step "bundle into $out" "$(min "$(left)" 60)" "$py" -m reproresnet bundle "$dir" --to "$out"
ls -l "$out"
echo "== done ($((SECONDS - start)) s)"
