#!/usr/bin/env bash
# Wall time of one small study (4 configs) run three ways: the local process pool, a Dask
# LocalCluster, and a running `dask scheduler` with two one-thread `dask worker`s on
# 127.0.0.1; then whether the three summary.csv files are identical.
#   bash benchmarks/sweep_backends.sh [WORKDIR]     (needs dask[distributed]; ~3.5 min on 2 cores)
set -u
D=$(realpath -m "${1:-/tmp/llcgrok_sweep_backends}"); rm -rf "$D"; mkdir -p "$D"; cd "$D"
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
cat > study.yaml <<'Y'
task: {name: x_plus_y, p: 23}
model: {num_layers: 1, d_model: 32, num_heads: 4}
train: {num_steps: 600, batch_size: 128, eval_batches: 1, num_checkpoints: 6}
llc: {num_chains: 2, num_draws: 50, batch_size: 64, calibrate: true, nbeta: 30,
      calibration: {epsilons: [1.0e-5, 1.0e-4, 1.0e-3], nbetas: [30.0]}}
grid: {axes: {model.num_layers: [1, 2]}, seeds: [0, 1]}
Y
# time a sweep: wall seconds, exit code, how it ran
t() { local s=$EPOCHREALTIME; "$@" > /dev/null 2>>"$D/err.log"; local rc=$?
      awk -v a="$s" -v b="$EPOCHREALTIME" -v rc=$rc -v how="${*:8}" 'BEGIN { printf "%6.1f s  exit %d  %s\n", b - a, rc, how }'; }
t llcgrok sweep study.yaml --out $D/local --no-report --quiet --workers 2
t llcgrok sweep study.yaml --out $D/lc --no-report --quiet --cluster local --workers 2
python3 -m dask scheduler --host 127.0.0.1 --port $PORT --no-dashboard > sched.log 2>&1 &
for i in 0 1; do python3 -m dask worker tcp://127.0.0.1:$PORT --nthreads 1 --no-dashboard --local-directory $D/w$i > w$i.log 2>&1 & done
sleep 8  # the sweep itself waits for workers; this keeps their start-up out of its time
t llcgrok sweep study.yaml --out $D/sched --no-report --quiet --scheduler tcp://127.0.0.1:$PORT
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null
for d in lc sched; do cmp -s local/summary.csv $d/summary.csv && echo "$d summary.csv identical to local" || echo "$d summary.csv DIFFERS"; done
