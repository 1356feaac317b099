#!/usr/bin/env bash
# Train the DoorKey-5x5 PPO policy (if its run has no checkpoint yet) and collect a trajectory
# dataset for the decision transformer whose returns spread from failures (0) to near-optimal (~0.97):
# the trained policy with ε-random actions at several ε, plus uniformly random episodes.
#
#   scripts/make_doorkey_data.sh                       # → data/doorkey_ppo.npz
#   RUN=runs/my_ppo OUT=data/x.npz EPISODES=300 scripts/make_doorkey_data.sh
#
# EPISODES is per ε setting (5 settings) and for the random part; each collect call is seeded, so the
# same checkpoint gives the same file. The file records every episode's level seed (env seeds
# 0 + 10,007·k + i and 1,000,000 + i), which the decision-transformer evals keep away from.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-runs/minigrid_ppo_doorkey}
OUT=${OUT:-data/doorkey_ppo.npz}
EPISODES=${EPISODES:-400}
ENV_ID=MiniGrid-DoorKey-5x5-v0
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny networks: one thread per process is fastest

if [ ! -f "$RUN/checkpoints/last.ckpt" ]; then
    shardlab train configs/train/minigrid_ppo_doorkey.yaml --run-dir "$RUN"
fi
mkdir -p "$(dirname "$OUT")"
shardlab collect --env "$ENV_ID" --source "$RUN/checkpoints/last.ckpt" --episodes $((5 * EPISODES)) \
    --epsilon 0,0.5,0.75,0.9,0.95 --temperature 1 --seed 0 --out "$OUT" --force
shardlab collect --env "$ENV_ID" --source random --episodes "$EPISODES" --seed 1000000 --out "$OUT" --append
python - "$OUT" <<'EOF'
import sys

import numpy as np

from trainers.trajectories import load_trajectories

data = load_trajectories(sys.argv[1])
stats = data.metadata["return_stats"]
print(f"{sys.argv[1]}: {data.num_episodes} episodes, {data.num_steps} steps; return mean {stats['mean']:.3f} "
      f"std {stats['std']:.3f} min {stats['min']:.3f} max {stats['max']:.3f}; success {stats['success_rate']:.1%}")
for part in data.metadata["parts"]:
    s = part["return_stats"]
    print(f"  {part['episodes']:5d} episodes  return {s['mean']:.3f} ± {s['std']:.3f}  success "
          f"{s['success_rate']:6.1%}  {part['policy']}")
edges = np.linspace(0, 1, 11)
counts, _ = np.histogram(data.episode_returns, bins=edges)
print("  return histogram:", " ".join(f"[{a:.1f},{b:.1f}):{c}" for a, b, c in zip(edges, edges[1:], counts)))
EOF
