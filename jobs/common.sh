# Shared by the jobs/*.sbatch scripts (sourced, not run): launch fednas-mpi so that a SLURM
# signal or preemption stops it cleanly and the job requeues and resumes by itself.
#
# Variables (set them with `sbatch --export=ALL,CONFIG=...` or export them before sbatch):
#   CONFIG      run configuration (YAML); not needed once RUN_DIR holds the run's config.yaml
#   RUN_DIR     run directory; holds the checkpoints, so it must be on a shared file system
#   RANKS       MPI ranks (default: SLURM_NTASKS); rank 0 aggregates, the others simulate
#   MPIRUN      launcher (default: mpirun; use "srun --mpi=pmix" or similar with a site MPI
#               that was built for SLURM); it is called as: $MPIRUN -n $RANKS ...
#   FEDNAS      the fednas-mpi command (default: fednas-mpi from PATH, e.g. an activated venv)
#   EXTRA_ARGS  more arguments, e.g. "--set run.rounds=200"
#
# What happens on a signal (sbatch --signal=B:USR1@SECONDS, scancel --signal=USR1 --batch,
# or SIGTERM): the trap below creates RUN_DIR/STOP; rank 0 finishes the round in progress,
# writes its checkpoint (atomic: complete or absent) and exits with status 3; the script then
# requeues the job (scontrol requeue, needs --requeue). The requeued job finds the newest
# valid checkpoint in RUN_DIR and resumes from it with no manual step. A run that is already
# complete when the job (re)starts prints "nothing to resume" and the job ends.

fednas_run() {
    local config="${CONFIG:-}" run_dir="${RUN_DIR:?set RUN_DIR to the run directory}"
    local ranks="${RANKS:-${SLURM_NTASKS:-1}}" mpirun="${MPIRUN:-mpirun}"
    local fednas="${FEDNAS:-fednas-mpi}" stop=0 rc pid
    local -a args
    mkdir -p "$run_dir"
    rm -f "$run_dir/STOP"  # a stop request of an earlier job is done with
    # One command starts the run when RUN_DIR holds no checkpoint yet (also after a job
    # killed before its first one) and resumes it otherwise; without CONFIG it uses the
    # run's own config.yaml. A CONFIG that disagrees with the run is refused (status 2).
    args=(${config:+"$config"} --out "$run_dir" --resume)
    echo "[$(date +%T)] job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}):" \
         "starting or resuming ${config:-the run} in $run_dir on $ranks ranks"
    trap 'stop=1; echo "[$(date +%T)] signal: rank 0 stops after the current round"; touch "$run_dir/STOP"' USR1 TERM
    # shellcheck disable=SC2086  # MPIRUN, FEDNAS and EXTRA_ARGS may hold several words
    $mpirun -n "$ranks" $fednas "${args[@]}" ${EXTRA_ARGS:-} &
    pid=$!
    # `wait` returns early when a trapped signal arrives; keep waiting for the launcher.
    while :; do
        wait "$pid"; rc=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    trap - USR1 TERM
    rm -f "$run_dir/STOP"
    if [ "$rc" = 3 ] || { [ "$stop" = 1 ] && [ "$rc" != 0 ]; }; then
        echo "[$(date +%T)] stopped (status $rc); requeueing job ${SLURM_JOB_ID:-?}"
        if [ -n "${SLURM_JOB_ID:-}" ]; then
            scontrol requeue "$SLURM_JOB_ID" && return 0
        fi
        echo "fednas_run: could not requeue; resume with: fednas-mpi --resume $run_dir" >&2
    fi
    return "$rc"
}
