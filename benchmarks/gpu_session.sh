#!/usr/bin/env bash
# A research session on the lent GPU machine (no network, none of our packages).
#
#   benchmarks/gpu_session.sh corpus PACKAGE...           # nanochat data: this machine's Python source
#   benchmarks/gpu_session.sh start TASK PROFILE BUDGET   # `threadlab run` with its TUI, in tmux
#   benchmarks/gpu_session.sh wait SECONDS                # wait (a device call lasts <= 10 min)
#   benchmarks/gpu_session.sh screen NAME                 # the TUI as it is now: $OUT/NAME.ansi
#   benchmarks/gpu_session.sh runs                        # a line per finished training run
#   benchmarks/gpu_session.sh report NAME                 # figures into $OUT/NAME.json, and a copy of state.db
#
# Carried in the working tree, git-ignored (name them all in every call's carry: an
# ignored path not carried is removed by the next call, even under a running engine):
# .whl/ (wheels of our pure dependencies for Python 3.12: aiosqlite optuna sqlalchemy
# alembic colorlog mako watchfiles greenlet, and textual with the versions of its own
# dependencies that we test with), .bw/ (`dpkg -x` of the Debian packages of bubblewrap, tmux,
# libevent-core and libutempter) and, optionally, .gpudata/ (prepared task data, THREADLAB_DATA_DIR).
# The builtin corpus (3.4M tokens) is far too small for a GPU: a 60 s gpu-quick run goes over
# it 13 times. `corpus` prepares nanochat from the .py files of the named packages of this
# machine's site-packages instead (torch scipy sympy ...: ~40M tokens), offline.
# State lives in /tmp/threadlab-session, which outlives one call while the machine stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
S=/tmp/threadlab-session
mkdir -p "$S"
if [ ! -d "$S/site" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$S/site" .whl/*.whl
fi
# the data outside the working tree: each call re-syncs .gpudata, which would delete what the
# session adds there under the running engine
if [ ! -d "$S/data" ]; then
  if [ -d .gpudata ]; then cp -r .gpudata "$S/data"; else mkdir -p "$S/data"; fi
fi
export PYTHONPATH="$S/site:$PWD" PATH="$PWD/.bw/usr/bin:$PATH" THREADLAB_DATA_DIR="$S/data" PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH="$PWD/.bw/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"  # tmux's libevent
DB="$S/state.db"
TMUX_CMD=(tmux -L threadlab -f /dev/null)

case "$1" in
corpus)
  shift
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$S/corpus" && mkdir -p "$S/corpus"
  for pkg in "$@"; do
    [ -d "$site/$pkg" ] || { echo "no package $pkg in $site"; continue; }
    (cd "$site" && find "$pkg" -name '*.py' -size -1000k -print0 | xargs -0 cp --parents -t "$S/corpus")
  done
  du -sh "$S/corpus"
  python3 -m engine.cli prepare nanochat --profile gpu-quick --source "dir:$S/corpus" 2>&1 | grep -v '%|' || true
  ;;
start)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  setsid nohup nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 1000 > "$S/nvidia-smi.csv" 2>/dev/null < /dev/null &
  # the TUI in a real terminal (tmux) for the whole session; the engine it starts is detached
  # (the pane stays after the TUI exits, so that `screen` shows why)
  "${TMUX_CMD[@]}" new-session -d -s session -x 180 -y 50 -e COLORTERM=truecolor \
    "python3 -m engine.cli run '$PWD/tasks/$2' --profile '$3' --threads 2 --budget '$4' --db '$DB'; echo TUI exited \$?; sleep 86400"
  sleep 60
  "${TMUX_CMD[@]}" capture-pane -p -t session | head -12
  python3 -m engine.cli status --db "$DB" || true
  ;;
wait)
  end=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 30
    python3 -m engine.cli status --db "$DB" > "$S/status.txt" 2>&1 || true
    head -4 "$S/status.txt"
    grep -q "engine: stopped" "$S/status.txt" && break
  done
  ;;
screen)
  mkdir -p "$OUT"
  "${TMUX_CMD[@]}" capture-pane -p -e -t session > "$OUT/$2.ansi"
  "${TMUX_CMD[@]}" capture-pane -p -t session
  ;;
runs)
  for f in $(ls "$S"/state.run/runs/*/out/harness.json 2>/dev/null | sort -t/ -k5 -n); do
    echo "$f" | grep -o 'runs/[0-9]*' | tr '\n' ' '
    python3 -c "import json,sys; h=json.load(open(sys.argv[1])); print({k: h.get(k) for k in ('tokens', 'train_s', 'setup_s', 'peak_memory_gb')})" "$f"
  done
  ;;
report)
  mkdir -p "$OUT"
  python3 -m engine.cli status --db "$DB" > "$OUT/$2-status.txt" 2>&1 || true
  python3 benchmarks/session_report.py "$DB" --nvidia-smi "$S/nvidia-smi.csv" --out "$OUT/$2.json"
  cp "$S/nvidia-smi.csv" "$OUT/$2-nvidia-smi.csv"
  # the session's record (why runs failed, every event): a consistent copy, the engine may still run
  python3 -c "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))" \
    "$DB" "$OUT/$2-state.db" || true
  # what each training run said about itself (tokens, train_s, setup_s), in one file
  python3 - "$S" "$OUT/$2-harness.json" <<'PY'
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1]) / "state.run" / "runs"
found = {p.parent.parent.name: json.loads(p.read_text()) for p in runs.glob("*/out/harness.json")}
pathlib.Path(sys.argv[2]).write_text(json.dumps(dict(sorted(found.items(), key=lambda kv: int(kv[0]))), indent=1))
PY
  cp "$S/state.run/prepare.log" "$OUT/$2-prepare.log" 2>/dev/null || true
  # the runs' own logs, for the note: evaluator timings and isolation
  for d in $(find "$S" -maxdepth 6 -name eval.log | head -3); do echo "== $d"; tail -5 "$d"; done
  ;;
esac
