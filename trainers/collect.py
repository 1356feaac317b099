"""``shardlab collect``: roll out a policy on a MiniGrid/BabyAI env and write a trajectory dataset.

Sources: ``bot`` (minigrid's BabyAI expert, BabyAI-* levels only), ``random`` (uniform actions) or a
``ppo_minigrid`` checkpoint. ``--epsilon`` and ``--temperature`` take comma lists; the episodes are
split evenly over every (epsilon, temperature) pair, which spreads the returns for offline RL.
Each env keeps a fixed quota of episodes, so short episodes are not over-represented.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs.minigrid import MiniGridEnv, MiniGridEnvConfig, check_config, make_single
from shardlab.envs.rollout import rollout
from shardlab.paths import file_in_the_way
from shardlab.trainers.trajectories import (DatasetError, Trajectories, concat, from_episodes, load_trajectories,
                                   save_trajectories)

SETTING_SEED_STRIDE = 10_007  # env seeds of setting k start at seed + k·stride


class CollectError(ValueError):
    """Bad collect input; the message says what to change."""


@dataclass(frozen=True)
class Setting:
    """One behaviour of the mixture: ε-random actions on top of the source at a softmax temperature."""

    epsilon: float
    temperature: float


def parse_floats(text: str, name: str, low: float, high: float, low_open: bool = False) -> list[float]:
    """``"0,0.3"`` → [0.0, 0.3], each in [low, high] (or (low, high]); CollectError otherwise."""
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise CollectError(f"--{name} must be a comma list of numbers, got {text!r}") from None
    if not values:
        raise CollectError(f"--{name} needs at least one value")
    for value in values:
        if not (low < value if low_open else low <= value) or value > high or not np.isfinite(value):
            bracket = "(" if low_open else "["
            close = ")" if high == float("inf") else "]"
            raise CollectError(f"--{name} values must be in {bracket}{low:g}, {high:g}{close}, got {value:g}")
    return list(dict.fromkeys(values))


class Policy:
    """Picks actions for a batch of envs: the source's choice, or a uniform one with probability ε."""

    description = ""

    def __init__(self, env: MiniGridEnv, setting: Setting, seed: int):
        self.env, self.setting = env, setting
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def start(self, index: int) -> None:
        """Env ``index`` began a new episode."""

    def source_actions(self, obs: torch.Tensor) -> np.ndarray:
        """The source's actions for every env."""
        raise NotImplementedError

    def act(self, obs: torch.Tensor) -> np.ndarray:
        """ε-mixed actions for every env."""
        actions = self.source_actions(obs)
        explore = self.rng.random(len(actions)) < self.setting.epsilon
        actions[explore] = self.rng.integers(self.env.num_actions, size=int(explore.sum()))
        self.taken(actions)
        return actions

    def taken(self, actions: np.ndarray) -> None:
        """The actions actually sent to the envs."""


class RandomPolicy(Policy):
    """Uniformly random actions."""

    description = "uniform random actions"

    def source_actions(self, obs: torch.Tensor) -> np.ndarray:
        return self.rng.integers(self.env.num_actions, size=self.env.num_envs)


class CheckpointPolicy(Policy):
    """A trained actor-critic sampled at a softmax temperature."""

    def __init__(self, env: MiniGridEnv, setting: Setting, seed: int, model: torch.nn.Module,
                 preprocess: Callable[[torch.Tensor], torch.Tensor], description: str):
        super().__init__(env, setting, seed)
        self.model, self.preprocess, self.description = model, preprocess, description

    def source_actions(self, obs: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            logits, _ = self.model(self.preprocess(obs))
        probs = torch.softmax(logits.float() / self.setting.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).numpy().astype(np.int64)


class BotPolicy(Policy):
    """minigrid's BabyAI expert bot, one per env, told which action was really taken (for ε > 0)."""

    description = "BabyAI expert bot (minigrid.utils.baby_ai_bot)"

    def __init__(self, env: MiniGridEnv, setting: Setting, seed: int):
        super().__init__(env, setting, seed)
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._bot_class = BabyAIBot
        self.bots: list = [None] * env.num_envs
        self.last: list[Optional[int]] = [None] * env.num_envs
        self.failures = 0  # episodes where the bot raised (then it acts randomly until the episode ends)

    def start(self, index: int) -> None:
        self.bots[index] = self._bot_class(self.env.envs[index])
        self.last[index] = None

    def source_actions(self, obs: torch.Tensor) -> np.ndarray:
        actions = np.empty(self.env.num_envs, np.int64)
        for i, bot in enumerate(self.bots):
            if bot is not None:
                try:
                    actions[i] = int(bot.replan(self.last[i]))
                    continue
                except Exception:  # the bot gives up on some layouts (e.g. an opened box) with various errors
                    self.bots[i] = None
                    self.failures += 1
            actions[i] = self.rng.integers(self.env.num_actions)
        return actions

    def taken(self, actions: np.ndarray) -> None:
        self.last = [int(a) for a in actions]


def _check_bot_env(env_cfg: MiniGridEnvConfig) -> None:
    env = make_single(env_cfg)
    env.reset(seed=0)
    has_instructions = hasattr(env.unwrapped, "instrs")
    env.close()
    if not has_instructions:
        raise CollectError(f"the BabyAI bot plans from BabyAI instructions, which {env_cfg.env_id} does not have; "
                           "use it on BabyAI-* levels (e.g. BabyAI-GoToLocal-v0) or pass --source random "
                           "or a ppo_minigrid checkpoint")


def _load_checkpoint_policy(path: str) -> tuple[torch.nn.Module, dict, str]:
    """(model, env config dict, description) of a ppo_minigrid checkpoint; CollectError otherwise."""
    from shardlab.trainers.checkpointing import CheckpointError
    from shardlab.trainers.restore import load_trained

    try:
        trained = load_trained(path)
    except CheckpointError as exc:
        raise CollectError(str(exc)) from None
    if trained.config.algo != "ppo_minigrid":
        raise CollectError(f"checkpoint {path} is a {trained.config.algo!r} run; collect needs a ppo_minigrid "
                           "policy (train one with configs/train/minigrid_ppo_doorkey.yaml)")
    from omegaconf import OmegaConf

    env = OmegaConf.to_container(trained.config.env)
    description = f"ppo_minigrid checkpoint {path} ({trained.steps} env steps, trained on {env['env_id']})"
    return trained.model, env, description


def collect(args: argparse.Namespace) -> Trajectories:
    """Collect ``args.episodes`` episodes as the arguments describe and save them; returns what was written."""
    if args.episodes < 1:
        raise CollectError(f"--episodes must be >= 1, got {args.episodes}")
    if args.num_envs < 1:
        raise CollectError(f"--num-envs must be >= 1, got {args.num_envs}")
    if args.seed < 0:
        raise CollectError(f"--seed must be >= 0 (gymnasium seeds are non-negative), got {args.seed}")
    if args.append and args.force:
        raise CollectError("--append and --force contradict each other: --append adds episodes to --out, "
                           "--force replaces it; pass one")
    if not args.out.strip():
        raise CollectError("--out is empty; give a dataset file name such as data/doorkey.npz")
    epsilons = parse_floats(args.epsilon, "epsilon", 0.0, 1.0)
    temperatures = parse_floats(args.temperature, "temperature", 0.0, float("inf"), low_open=True)
    if os.path.isdir(args.out):
        raise CollectError(f"--out {args.out} is a directory; give a file name such as {args.out}/data.npz")
    folder = os.path.dirname(os.path.abspath(args.out))
    blocker = file_in_the_way(folder)
    if blocker is not None:
        raise CollectError(f"--out {args.out}: {blocker} is a file, not a folder; write the dataset elsewhere")
    if os.path.exists(args.out) and not (args.append or args.force):
        raise CollectError(f"{args.out} exists; pass --append to add episodes to it or --force to overwrite it")
    existing = load_trajectories(args.out) if args.append and os.path.exists(args.out) else None
    source = args.source
    model, obs_mode, description = None, args.obs or "image", ""
    if source not in ("bot", "random"):
        model, trained_env, description = _load_checkpoint_policy(source)
        obs_mode = args.obs or trained_env["obs"]
    elif temperatures != [1.0]:
        raise CollectError(f"--temperature only applies to checkpoint sources, not --source {source}")
    env_cfg = MiniGridEnvConfig(env_id=args.env, num_envs=args.num_envs, obs=obs_mode, seed=args.seed,
                                max_steps=args.max_steps)
    try:
        check_config(env_cfg)
    except ValueError as exc:
        raise CollectError(str(exc).replace("env.env_id", "--env").replace("env.max_steps", "--max-steps")
                           .replace("env.seed", "--seed")) from None
    if source == "bot":
        _check_bot_env(env_cfg)
    if model is not None:
        from shardlab.models.minigrid_policy import preprocess

        if tuple(model.obs_shape) != _obs_shape(env_cfg):
            raise CollectError(f"checkpoint {source} takes observations of shape {tuple(model.obs_shape)} but "
                               f"{args.env} with --obs {obs_mode} gives {_obs_shape(env_cfg)}")
    settings = [Setting(e, t) for e, t in itertools.product(epsilons, temperatures)]
    per_setting = np.full(len(settings), args.episodes // len(settings))
    per_setting[:args.episodes % len(settings)] += 1
    if existing is not None:
        _check_appendable(existing, env_cfg, args.out)
        _warn_repeated_seeds(existing, _level_seeds(args.seed, args.num_envs, per_setting), args.out)
    bar = tqdm(total=args.episodes, desc="collect", unit="ep", disable=args.no_progress, file=sys.stderr,
               **progress_kwargs())
    dataset: Optional[Trajectories] = None
    for k, (setting, episodes) in enumerate(zip(settings, per_setting)):
        if episodes == 0:
            continue
        seed = args.seed + SETTING_SEED_STRIDE * k
        env = MiniGridEnv(MiniGridEnvConfig(**{**env_cfg.__dict__, "seed": seed,
                                               "num_envs": min(args.num_envs, int(episodes))}))
        if source == "bot":
            policy: Policy = BotPolicy(env, setting, seed)
        elif source == "random":
            policy = RandomPolicy(env, setting, seed)
        else:
            policy = CheckpointPolicy(env, setting, seed, model, preprocess, description)
        part = _roll_out(env, policy, int(episodes), bar)
        env.close()
        what = policy.description + (f", temperature {setting.temperature:g}" if model is not None else "")
        what += f", epsilon {setting.epsilon:g}" if setting.epsilon else ""
        part.metadata.update({"env_id": args.env, "obs": obs_mode, "num_actions": env.num_actions,
                              "policy": what, "seeds": [seed], "source": source,
                              "epsilon": setting.epsilon, "temperature": setting.temperature,
                              "max_steps": env.envs[0].unwrapped.max_steps})
        if isinstance(policy, BotPolicy):
            part.metadata["bot_failures"] = policy.failures
        dataset = part if dataset is None else concat(dataset, part)
    bar.close()
    return save_trajectories(args.out, dataset if existing is None else concat(existing, dataset))


def _level_seeds(seed: int, num_envs: int, per_setting: np.ndarray) -> set[int]:
    """The env seeds a collection resets with: setting k's envs start at seed + k·stride."""
    return {seed + SETTING_SEED_STRIDE * k + i for k, episodes in enumerate(per_setting)
            for i in range(min(num_envs, int(episodes)))}


def _warn_repeated_seeds(existing: Trajectories, seeds: set[int], path: str) -> None:
    """Warn when new episodes would replay levels ``existing`` recorded (older files: their first seeds)."""
    repeated = sorted(seeds & (set(existing.level_seeds.tolist()) | set(existing.metadata.get("seeds", []))))
    if repeated:
        print(f"shardlab collect: warning: {path} already holds episodes from seed(s) "
              f"{repeated[:8]}{' …' if len(repeated) > 8 else ''}; their layouts will repeat "
              "(pass another --seed for new ones)", file=sys.stderr)


def _check_appendable(existing: Trajectories, env_cfg: MiniGridEnvConfig, path: str) -> None:
    """Refuse before collecting if the new episodes could not join ``existing``."""
    for key, value in (("env_id", env_cfg.env_id), ("obs", env_cfg.obs)):
        if existing.metadata.get(key, value) != value:
            raise CollectError(f"cannot append {key} {value!r} episodes to {path}, which holds "
                               f"{existing.metadata[key]!r} episodes; write another --out file")


def _obs_shape(env_cfg: MiniGridEnvConfig) -> tuple[int, ...]:
    from shardlab.envs.minigrid import observation_shape

    return observation_shape(env_cfg)


def _roll_out(env: MiniGridEnv, policy: Policy, episodes: int, bar: tqdm) -> Trajectories:
    """Step every env until each has finished its quota of episodes; the recorded episodes in env order."""
    quota = np.full(env.num_envs, episodes // env.num_envs)
    quota[:episodes % env.num_envs] += 1
    records: list[list[dict]] = [[] for _ in range(env.num_envs)]
    current = [{"obs": [], "actions": [], "rewards": []} for _ in range(env.num_envs)]
    obs = env.reset()
    missions = env.missions  # of the episodes being played (read before each step)
    for i in range(env.num_envs):
        policy.start(i)

    def record(t, obs, actions, reward, done, finished) -> None:
        nonlocal missions
        chosen = actions.numpy()
        for i in range(env.num_envs):
            if len(records[i]) >= quota[i]:
                continue  # this env's quota is met; it keeps stepping with the batch, unrecorded
            episode = current[i]
            episode["obs"].append(obs[i].numpy())
            episode["actions"].append(chosen[i])
            episode["rewards"].append(float(reward[i]))
            if done[i]:
                # env i's k-th episode: the k-th level of the generator env.reset(seed=env.seed + i) started
                records[i].append({**episode, "terminated": bool(env.last_terminated[i]),
                                   "truncated": bool(env.last_truncated[i]), "mission": missions[i],
                                   "level_seed": env.seed + i, "level_index": len(records[i])})
                current[i] = {"obs": [], "actions": [], "rewards": []}
                bar.update(1)
        for i in np.flatnonzero(done.numpy()):
            policy.start(int(i))
        missions = env.missions

    rollout(env, lambda obs: torch.from_numpy(policy.act(obs)), obs=obs, on_step=record, quota=quota)
    flat = [episode for per_env in records for episode in per_env]
    return from_episodes(observations=[np.stack(e["obs"]) for e in flat], actions=[e["actions"] for e in flat],
                         rewards=[e["rewards"] for e in flat], terminated=[e["terminated"] for e in flat],
                         truncated=[e["truncated"] for e in flat], missions=[e["mission"] for e in flat],
                         metadata={}, level_seeds=[e["level_seed"] for e in flat],
                         level_indices=[e["level_index"] for e in flat])


def main(args: argparse.Namespace) -> int:
    """Run ``shardlab collect``; 0 on success, 2 on bad input (one line on stderr)."""
    try:
        dataset = collect(args)
    except (CollectError, DatasetError) as exc:
        print(f"shardlab collect: error: {exc}", file=sys.stderr)
        return 2
    stats = dataset.metadata["return_stats"]
    print(f"wrote {args.out}: {dataset.num_episodes} episodes, {dataset.num_steps} steps, return "
          f"{stats['mean']:.3f} ± {stats['std']:.3f} (min {stats['min']:.3f}, max {stats['max']:.3f}), "
          f"success {stats['success_rate']:.1%}", file=sys.stderr)
    return 0
