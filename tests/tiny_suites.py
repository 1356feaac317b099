"""Small configs the tests share: a tiny PPO maze run and a suite that runs in seconds on it."""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAZE_RECIPE = os.path.join(ROOT, "configs", "train", "maze_ppo_cpu.yaml")
# overrides of MAZE_RECIPE: 128 env steps and 2 optimizer steps per iteration
TINY_PPO = ["env.num_envs=4", "ppo.num_steps=32", "ppo.minibatch_size=64", "ppo.epochs=1",
            "env.distribution_mode=easy", "trainer.checkpoint_every=128", "trainer.progress_bar=false",
            "trainer.keep_checkpoints=10"]

# goal_misgeneralization on 8 mazes, with a threshold that always holds
GOAL_MISGENERALIZATION = """
seed: 3
evals:
  goal_misgeneralization: {mazes: 8, decision_mazes: 8}
thresholds:
  goal_misgeneralization.p_neither: {max: 1.0}
"""


def metrics_rows(run_dir) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def assert_rows_have_intervals(metrics) -> None:
    """Every estimate row (``kind == "estimate"``) carries a 95% interval with its method and unit,
    and that interval contains its value; an undefined (NaN) row says why in ``note``; counts,
    settings and data rows carry no interval. ``metrics``: Metric objects or results.json rows."""
    import math

    problems = []
    for m in metrics:
        row = m if isinstance(m, dict) else m.__dict__
        name, value = row["name"], row["value"]
        undefined = value is None or (isinstance(value, float) and math.isnan(value))
        kind = row.get("kind", "estimate")
        if kind != "estimate":
            if row.get("ci_low") is not None or row.get("ci_high") is not None:
                problems.append(f"{name}: a {kind} row with an interval")
            continue
        if undefined:
            if not row.get("note"):
                problems.append(f"{name}: undefined without a note saying why")
            continue
        if row.get("ci_low") is None or row.get("ci_high") is None:
            if not row.get("note"):  # e.g. "one maze: no interval"
                problems.append(f"{name}: an estimate without ci_low/ci_high")
            continue
        if not row.get("method") or not row.get("unit"):
            problems.append(f"{name}: interval without method or unit")
        if not row["ci_low"] - 1e-9 <= value <= row["ci_high"] + 1e-9 and "bootstrap" not in str(row.get("method")):
            problems.append(f"{name}: value {value} outside its interval [{row['ci_low']}, {row['ci_high']}]")
        if row["ci_low"] > row["ci_high"]:
            problems.append(f"{name}: ci_low > ci_high")
    assert not problems, "\n".join(problems)


def record_finetune_episodes(monkeypatch) -> list:
    """Patch finetune_to_cheese's episode player to record the states of every call; the list it fills."""
    from shardlab.evals.maze import finetune_to_cheese

    played = []
    real = finetune_to_cheese.first_episodes

    def recording(policy, env_cfg, **kwargs):
        played.append(list(kwargs["states"]))
        return real(policy, env_cfg, **kwargs)
    monkeypatch.setattr(finetune_to_cheese, "first_episodes", recording)
    return played


# overrides of MAZE_RECIPE for a run with a step checkpoint every 32 env steps (2 envs × 16 steps)
# on the native env, so that the sweeps' evals play there too (quicker; procgen-exact, tests/test_maze_native.py)
SWEEP_PPO = ["env.num_envs=2", "ppo.num_steps=16", "ppo.minibatch_size=32", "ppo.epochs=1",
             "trainer.checkpoint_every=32", "trainer.keep_checkpoints=10", "trainer.progress_bar=false",
             "env.backend=native"]


def train_sweep_run(run, total_steps: int, *extra: str) -> str:
    """Train MAZE_RECIPE with SWEEP_PPO for ``total_steps`` env steps into ``run``: a run directory
    with a checkpoint every 32 env steps."""
    from shardlab import cli

    assert cli.main(["train", MAZE_RECIPE, *SWEEP_PPO, f"trainer.total_steps={total_steps}", *extra,
                     "--run-dir", str(run)]) == 0
    return str(run)


def sweep_args(run: str, suite: str, out, *extra: str) -> list[str]:
    """``shardlab eval RUN --suite SUITE --out OUT`` on 2 mazes, quietly: the sweep tests' command."""
    return ["eval", str(run), "--suite", str(suite), "--out", str(out), "--limit", "2", "--no-progress",
            "--loggers", "none", *extra]


class throwaway_eval:
    """``with throwaway_eval("name", run) as cls:`` registers an eval whose ``run(ctx)`` is ``run``
    (a Result-returning function; ``kinds`` as for @register) and forgets it afterwards."""

    def __init__(self, name: str, run, kinds=None):
        self.name, self.run, self.kinds = name, run, kinds

    def __enter__(self) -> type:
        from dataclasses import dataclass

        from shardlab.evals.suite.base import register

        @dataclass
        class Config:
            pass

        body = {"Config": Config, "__init__": lambda self, config: setattr(self, "config", config),
                "run": lambda self, ctx: self.__class__.function(ctx), "function": staticmethod(self.run)}
        if self.kinds is not None:
            body["kinds"] = tuple(self.kinds)
        return register(self.name)(type(f"Throwaway_{self.name}", (), body))

    def __exit__(self, *exc) -> None:
        from shardlab.evals.suite.base import DECLARED

        DECLARED.pop(self.name, None)
