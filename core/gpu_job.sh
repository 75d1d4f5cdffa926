#!/usr/bin/env bash
# One training job as one command: unpack and check the packed training set, train until a
# wall-clock budget, and leave a resumable run folder in OUT/run (see docs/training_gpu.md).
#
#   bash core/gpu_job.sh --packs data/packs --resume weights/train_state/gpu/32s_x4 --minutes 9 -- \
#       --variant 32s --scale 4 --batch 256 --lr-scaling sqrt --schedule cosine --warmup 200 \
#       --iters 60000 --val-split 16 --compile --save-every 1000 --val-every 2000
#
# Options before -- are the job's; everything after -- goes to core/train.py, which gets
# --data (the unpacked set) and --out (OUT/run) from the job, and --stop-after-minutes
# from --minutes less the time already spent and --reserve.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bash core/gpu_job.sh [options] -- TRAIN_ARGS...

  --packs DIR        folder from `python core/datapack.py pack` (manifest.json and the shards
                     this job carries; default data/packs)
  --resume DIR       a run folder to continue (its last.pt, or last.pt.part-NN pieces, and log.csv);
                     it is copied, never changed; omit it to start a new run
  --out DIR          where the run folder goes (default: $OUT); the run is DIR/run
  --minutes M        wall-clock minutes for the whole job, unpacking included (default 9)
  --reserve M        minutes kept back for loading the set and the last save (default 1)
  --speed-steps N    first time N end-to-end steps with eval/train_speed.py (report: run/train_speed.md)
  --split-mib N      cut files over N MiB into N MiB pieces, for machines that return small files
                     only (default 15; SHA256SUMS checks them when joined)
EOF
}

die() { echo "error: $*" >&2; exit 2; }

packs=data/packs resume="" out="${OUT:-}" minutes=9 reserve=1 speed_steps=0 split_mib=15
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        --packs|--resume|--out|--minutes|--reserve|--speed-steps|--split-mib)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --packs) packs=$2 ;; --resume) resume=$2 ;; --out) out=$2 ;; --minutes) minutes=$2 ;;
                --reserve) reserve=$2 ;; --speed-steps) speed_steps=$2 ;; --split-mib) split_mib=$2 ;;
            esac
            shift 2 ;;
        *) die "unknown option $1 (train.py's options go after --)" ;;
    esac
done
[ -n "$out" ] || die "no output folder: give --out DIR or set OUT"
[ $# -gt 0 ] || die "no train.py options after -- (at least --variant and --scale)"
for arg in "$@"; do
    case "$arg" in
        --data|--data=*|--out|--out=*|--stop-after-minutes*) die "the job sets ${arg%%=*} itself; leave it out" ;;
    esac
done
for number in "$minutes" "$reserve"; do
    [[ "$number" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "not a number of minutes: $number"
done
[[ "$speed_steps" =~ ^[0-9]+$ ]] || die "--speed-steps takes a whole number, not $speed_steps"
[[ "$split_mib" =~ ^[1-9][0-9]*$ ]] || die "--split-mib takes a whole number of MiB, not $split_mib"
# the job works from the repository root: make the caller's paths absolute first
packs=$(realpath -m "$packs") out=$(realpath -m "$out")
if [ -n "$resume" ]; then
    resume=$(realpath -m "$resume")
    [ -f "$resume/last.pt" ] || compgen -G "$resume/last.pt.part-*" >/dev/null \
        || die "--resume $resume holds no last.pt (nor last.pt.part-NN pieces)"
fi

start=$(date +%s)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}
run="$out/run"
work=$(mktemp -d "${TMPDIR:-/tmp}/drsan_job.XXXXXX")
trap 'rm -rf "$work"' EXIT
# the scripts import the kit as drsan_kit: point that name at this checkout, installed or not
ln -s "$repo" "$work/drsan_kit"
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

job() {
    cd "$repo"
    echo "job: $(date -u +%FT%TZ) on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

    "$py" core/datapack.py unpack --packs "$packs" --out "$work/train"

    if [ -n "$resume" ] && [ ! -e "$run/last.pt" ]; then
        if [ -f "$resume/last.pt" ]; then   # a whole last.pt wins: a CPU may have trained on since
            cp "$resume/last.pt" "$run/last.pt"
        else
            cat "$resume"/last.pt.part-* > "$run/last.pt"
            if [ -f "$resume/SHA256SUMS" ]; then
                (cd "$run" && grep ' last.pt$' "$resume/SHA256SUMS" | sha256sum -c --quiet -) \
                    || die "$resume: the joined last.pt.part-* do not match its SHA256SUMS"
            fi
        fi
        [ -f "$resume/log.csv" ] && cp "$resume/log.csv" "$run/log.csv"
        echo "resuming from $resume"
    fi

    if [ "$speed_steps" != 0 ]; then
        local speed_args=() prev=""
        for arg in "$@"; do
            case "$prev" in --variant|--scale|--batch|--patch) speed_args+=("$prev" "$arg") ;; esac
            [ "$arg" = "--compile" ] && speed_args+=(--compile)
            prev=$arg
        done
        "$py" eval/train_speed.py --data "$work/train" "${speed_args[@]}" --steps "$speed_steps" \
            --warmup 3 --out "$run/train_speed.md"
    fi

    local budget
    budget=$("$py" -c "import sys; print(round($minutes - $reserve - ($(date +%s) - $start) / 60, 2))")
    "$py" -c "import sys; sys.exit(0 if $budget > 0.05 else 1)" \
        || die "no time left to train ($budget minutes after unpacking; raise --minutes or lower --reserve)"
    echo "training for at most $budget minutes"
    local rc=0 rows_before=0 batch=16 prev=""
    [ -f "$run/log.csv" ] && rows_before=$(( $(wc -l < "$run/log.csv") - 1 ))
    for arg in "$@"; do [ "$prev" = "--batch" ] && batch=$arg; prev=$arg; done
    "$py" core/train.py --data "$work/train" --out "$run" "$@" --stop-after-minutes "$budget" || rc=$?

    # the machine returns files of a bounded size: checksums first, then pieces of what is too large
    (cd "$run" && sha256sum $(ls last.pt model.pt 2>/dev/null) > SHA256SUMS 2>/dev/null) || true
    for file in "$run"/last.pt "$run"/model.pt; do
        if [ -f "$file" ] && [ "$(stat -c %s "$file")" -gt $(( split_mib * 1048576 )) ]; then
            split -b "${split_mib}M" -d -a 2 "$file" "$file.part-" && rm "$file"
            echo "$(basename "$file") cut into $(ls "$file".part-* | wc -l) pieces: cat $(basename "$file").part-* > $(basename "$file")"
        fi
    done
    "$py" - "$run/log.csv" "$rows_before" "$batch" <<'EOF' || true
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
mine, batch = rows[int(sys.argv[2]):], int(sys.argv[3])
vals = [float(r["val_psnr"]) for r in rows if r["val_psnr"]]
print(f"run: iteration {rows[-1]['iteration']}, {float(rows[-1]['seconds']) / 60:.1f} training minutes in all"
      + (f", best held-out PSNR(Y) {max(vals):.3f} dB" if vals else ""))
if len(mine) >= 2:   # from this job's first log line on: compilation and warm-up left out
    its = int(mine[-1]["iteration"]) - int(mine[0]["iteration"])
    secs = float(mine[-1]["seconds"]) - float(mine[0]["seconds"])
    print(f"this job: {its * batch / max(secs, 1e-9):,.0f} patches/s over iterations "
          f"{mine[0]['iteration']}-{mine[-1]['iteration']} (batch {batch})")
EOF
    echo "job: $(( $(date +%s) - start )) s, train.py exit status $rc; files in $run:"
    ls -l "$run"
    return $rc
}

mkdir -p "$run"
job "$@" 2>&1 | tee -a "$run/job.log"
