#!/usr/bin/env bash
# The one GPU check of issue 28, sized for a 15-minute lease: at most ~7 minutes end to end,
# every step under a hard `timeout`, so a slow or failing step leaves time for the rest.
#
#   bash bench/gpu_quick.sh            on a GPU node (no network): wheels from ./.whl
#   bash bench/gpu_quick.sh --dry-run  on the CPU at toy shapes, this venv's Python and mpirun
#                                      (DRY_LIMIT_SCALE=N multiplies its step limits by N,
#                                      for a machine busy with other work: the test suite)
#
# Steps: env, wheels (mpich, mpi4py, pytest-mpi from ./.whl, prepared beforehand: README,
# "GPU check"), data (synthetic CIFAR-10 in the real on-disk format), supernet (reference vs
# grouped step at the paper shape: bench/supernet.py --device cuda --preset paper, skipped
# when it lacks those flags), compiled (reference vs grouped vs compiled cells at 0 % dead
# ops, FedMetaNAS at the paper shape, the compile time apart), updates (one FedMetaNAS and
# one FedNAS client update of 600 images, steps at 0/50/90 % dead ops and derived:
# bench/paper_updates.py), run_fedmetanas
# and run_fednas (6 rounds of the paper config under mpirun -n 3, seconds per round by
# stage), project (hours of the paper's protocol on one 8-GPU node beside Table 2:
# bench/project_paper.py). Everything lands in ONE archive, $OUT/gpu_quick.tar.gz (logs,
# JSON, the runs' configs and `fednas-mpi inspect`); the summary is printed last.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$REPO/gpu_out}
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_quick.XXXXXX")
RES=$WORK/gpu_quick
mkdir -p "$OUT" "$RES/runs"
export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T0=$(date +%s)

# Per step: seconds allowed (the GPU node's, then the dry run's). They add up to 7 min
# (a ceiling: steps that finish early leave it unspent).
if [ $DRY = 1 ]; then
    declare -A LIMIT=([env]=20 [wheels]=5 [data]=20 [supernet]=40 [compiled]=40 [updates]=40
        [run_fedmetanas]=40 [run_fednas]=40 [stages]=20 [project]=15)
    # a loaded machine (the test suite runs two files at a time) scales the dry run's limits
    for k in "${!LIMIT[@]}"; do LIMIT[$k]=$((LIMIT[$k] * ${DRY_LIMIT_SCALE:-1})); done
else
    declare -A LIMIT=([env]=15 [wheels]=25 [data]=30 [supernet]=55 [compiled]=65 [updates]=70
        [run_fedmetanas]=70 [run_fednas]=65 [stages]=15 [project]=10)
fi

# step NAME CMD...: run under its limit from $WORK, log to $RES/NAME.log, record the outcome
step() {
    local name=$1
    shift
    local t=$(date +%s) rc
    echo "== $(date +%T) $name (limit ${LIMIT[$name]} s)"
    (cd "$WORK" && timeout -k 5 "${LIMIT[$name]}" "$@") >"$RES/$name.log" 2>&1
    rc=$?
    tail -n 25 "$RES/$name.log"
    local verdict=ok
    [ $rc = 124 ] || [ $rc = 137 ] && verdict="TIMED OUT"
    [ $rc != 0 ] && [ "$verdict" = ok ] && verdict="failed (status $rc)"
    printf '%s\t%s\t%s\n' "$name" "$verdict" "$(($(date +%s) - t))" >>"$RES/steps.tsv"
}
skip() {
    echo "== $1: skipped: $2" | tee "$RES/$1.log"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >>"$RES/steps.tsv"
}

# ---------------------------------------------------------------- shapes of each mode
DATA=$WORK/data
if [ $DRY = 1 ]; then
    DEVICE=cpu
    PER_BATCH=16 N_TEST=40 # 80 training images: 2 x 16 for the update, 10 clients of 4
    # toy shapes: a small DARTS network, tiny clients and batches (the schedule untouched)
    TOY=(--set model.darts.init_channels=4 --set model.darts.layers=3 --set model.darts.nodes=2
        --set algorithm.batch_size=8)
    UPDATE_SETS=("${TOY[@]}" --set partition.train_size=16 --set algorithm.local_epochs=1)
    RUN_SETS=("${TOY[@]}" --set partition.train_size=4 --set partition.eval_size=4
        --set runtime.device=cpu)
    # a plumbing check: 2 reps took 38 of its 40 s
    SUPERNET=(--device cpu --configs configs/cpu/digits/fedmetanas.yaml --reps 1
        --paths reference grouped)
    # the compile plumbing without code generation (inductor's gcc takes minutes on a CPU)
    COMPILED=(--device cpu --configs configs/cpu/digits/fedmetanas.yaml --reps 1 --warmup 1
        --paths grouped compiled --compile-backend aot_eager)
    MPIRUN=${FEDNAS_MPI_MPIRUN:-$(dirname "$PY")/mpirun}
    [ -x "$MPIRUN" ] || MPIRUN=$(command -v mpirun)
else
    DEVICE=cuda
    PER_BATCH=1000 N_TEST=10000 # a 5,000-image pool (clients draw with overlap), the real test set
    UPDATE_SETS=()
    RUN_SETS=()
    SUPERNET=(--device cuda --preset paper --reps 6 --paths reference grouped)
    # one network (each compiles its cells once): FedMetaNAS's, no dead ops
    COMPILED=(--device cuda --preset paper --configs configs/paper/cifar10/fedmetanas.yaml
        --reps 5 --warmup 2)
    MPIRUN=${FEDNAS_MPI_MPIRUN:-$(command -v mpirun)}
fi
# The 6-round run: the paper's schedule (shares of run.rounds) with the documented
# short-run override; the federation cut to one client per worker and one local epoch
# (the projection reads the client updates above, not these rounds' compute).
SHORT=(--set run.rounds=6 --set partition.num_clients=10 --set federation.clients_per_round=2
    --set algorithm.local_epochs=1 --set run.eval_every=2 --set "data.root=$DATA")
declare -A OVERRIDE=([fedmetanas]="--set algorithm.fedmetanas.final_round=0.5" [fednas]="")

# ---------------------------------------------------------------- steps
env_info() {
    if [ $DRY = 0 ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    fi
    "$PY" -c 'import os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda",
      torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
      "| cores", os.cpu_count())'
    git -C "$REPO" log -1 --format='commit %h %s' 2>/dev/null || true
}
# timeout runs programs, not shell functions: the functions and what they read are exported
export DRY PY REPO DATA PER_BATCH N_TEST
export -f env_info
step env bash -c env_info

if [ $DRY = 1 ]; then
    skip wheels "dry run: this environment's mpi4py and $MPIRUN"
elif ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
    install_wheels() {
        "$PY" -m pip install -q --no-index --no-deps --no-compile --ignore-installed \
            --prefix /tmp/pfx "$REPO"/.whl/*.whl
    }
    export -f install_wheels
    step wheels bash -c install_wheels
    site=$("$PY" -c 'import sys; print("/tmp/pfx/lib/python%d.%d/site-packages" % sys.version_info[:2])')
    export PATH=/tmp/pfx/bin:$PATH PYTHONPATH=$PYTHONPATH:$site
    export LD_LIBRARY_PATH=/tmp/pfx/lib:${LD_LIBRARY_PATH:-}
    MPIRUN=/tmp/pfx/bin/mpirun
else
    skip wheels "no .whl/*.whl (README, GPU check: pip download ... -d .whl); trying the image's MPI"
fi
export FEDNAS_MPI_MPIRUN=$MPIRUN

write_data() {
    "$PY" -c "import time; t = time.time()
from pathlib import Path
from fednas_mpi.harness.datafiles import write_cifar10
write_cifar10(Path('$DATA'), per_batch=$PER_BATCH, n_test=$N_TEST)
print('synthetic CIFAR-10 (cifar-10-batches-py, python pickles): 5 x $PER_BATCH train,',
      '$N_TEST test images in %.1f s' % (time.time() - t))"
}
export -f write_data
step data bash -c write_data

# bench/supernet.py takes --device (and --preset paper for the paper shape) once issue 28's
# other half lands; until then this step says so instead of failing
need=(--device)
[ $DRY = 0 ] && need+=(--preset)
help=$("$PY" "$REPO/bench/supernet.py" --help 2>&1)
missing=$(for f in "${need[@]}"; do grep -q -- "$f" <<<"$help" || echo "$f"; done | xargs)
if [ -n "$missing" ]; then
    skip supernet "bench/supernet.py has no $missing yet"
    skip compiled "bench/supernet.py has no $missing yet"
else
    step supernet "$PY" "$REPO/bench/supernet.py" "${SUPERNET[@]}" --dead 0 0.5 0.9 --derived \
        --json "$RES/supernet.json"
    step compiled "$PY" "$REPO/bench/supernet.py" "${COMPILED[@]}" --dead 0 \
        --json "$RES/compiled.json"
fi

if [ $DRY = 0 ]; then # GPU utilisation and memory, once a second, over the measured steps
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
        >"$RES/nvidia_smi.csv" 2>&1 &
    SMI=$!
fi
step updates "$PY" "$REPO/bench/paper_updates.py" updates --device $DEVICE --set "data.root=$DATA" \
    "${UPDATE_SETS[@]}" --json "$RES/updates.json"

for m in fedmetanas fednas; do
    if [ -z "$MPIRUN" ] || ! [ -x "$MPIRUN" ]; then
        skip run_$m "no mpirun (wheels missing?)"
        continue
    fi
    # shellcheck disable=SC2086  # OVERRIDE holds whole --set words
    step run_$m "$MPIRUN" -n 3 "$PY" -m fednas_mpi "$REPO/configs/paper/cifar10/$m.yaml" \
        --out "$WORK/runs/$m" "${SHORT[@]}" "${RUN_SETS[@]}" ${OVERRIDE[$m]}
    cp "$WORK/runs/$m/config.yaml" "$RES/runs/$m.config.yaml" 2>/dev/null
    cp "$WORK/runs/$m/genotype.json" "$RES/runs/$m.genotype.json" 2>/dev/null
    (cd "$WORK" && "$PY" -m fednas_mpi inspect "runs/$m") >"$RES/runs/$m.inspect.txt" 2>&1
done
[ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null

runs=$(for m in fedmetanas fednas; do [ -d "$WORK/runs/$m" ] && echo "$WORK/runs/$m"; done)
if [ -n "$runs" ]; then
    # shellcheck disable=SC2086
    step stages "$PY" "$REPO/bench/paper_updates.py" stages $runs --json "$RES/stages.json"
else
    skip stages "no run finished"
fi
step project "$PY" "$REPO/bench/project_paper.py" --updates "$RES/updates.json" \
    --runs "$RES/stages.json" --supernet "$RES/supernet.json" --json "$RES/projection.json"

# ---------------------------------------------------------------- archive and summary
tar -czf "$OUT/gpu_quick.tar.gz" -C "$WORK" gpu_quick
echo
echo "== summary ($([ $DRY = 1 ] && echo 'dry run, CPU, toy shapes' || echo GPU), $(($(date +%s) - T0)) s)"
column -t -s $'\t' "$RES/steps.tsv" 2>/dev/null || cat "$RES/steps.tsv"
for f in supernet compiled updates stages project; do
    [ -s "$RES/$f.log" ] && grep -E '^\||ms|->|step |evaluation:|^Projected' "$RES/$f.log" | tail -n 30
done
echo "archive: $OUT/gpu_quick.tar.gz"
rm -rf "$WORK"
# the status: 0 when every step that ran passed
! grep -qE $'\t(failed|TIMED)' <(tar -xzOf "$OUT/gpu_quick.tar.gz" gpu_quick/steps.tsv)
