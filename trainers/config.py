"""Structured training configs: one dataclass per component, merged with a YAML recipe and
``dotted.key=value`` overrides by omegaconf, then checked. Every problem is a :class:`ConfigError`
with a one-line message naming the key and the fix."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from shardlab.envs.maze import DISTRIBUTION_MODES, OBSERVATIONS, RANK_SEED_STRIDE, WORLD_DIM, MazeEnvConfig
from shardlab.trainers.kinds import get_kind

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
LOGGERS = ("tensorboard", "csv", "wandb")  # trainer.loggers: Lightning loggers built by trainers/loggers.py
DEFAULT_LOGGERS = ("tensorboard", "csv")
# "*-true" precisions cast the whole network; the PPO and classification modules feed it float32
# tensors they build themselves (rollouts, in-memory images), so only the decision transformer can
TRUE_PRECISIONS = ("16-true", "bf16-true", "64-true")
MAX_SEED = 2**32 - 1  # Lightning/numpy seeds are unsigned 32-bit
MAX_INT32 = 2**31 - 1  # procgen's seed and level options are signed 32-bit


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""


@dataclass
class ActivationConfig:
    """The activation of a network and the options of the sparse kinds (models/sparse.py); every
    algo's model section extends it. The default relu is the dense network."""

    activation: str = "relu"  # relu, kwta, topk, l1 (ReLU + l1_coef·mean|activation| loss) or gelu
    sparse_layers: list[str] = field(default_factory=lambda: ["*"])  # fnmatch patterns over the activation sites
    percent_on: float = 0.1  # kwta/topk: fraction of units kept
    boost_strength: float = 1.0  # kwta: boost factor exp((percent_on − duty_cycle)·boost_strength)
    duty_cycle_period: int = 1000  # kwta: samples averaged in the duty cycle
    kwta_local: bool = False  # kwta/topk on conv maps: per location over channels, not over C·H·W
    k_inference_factor: float = 1.0  # kwta: percent_on × this many winners in eval mode (nupic: 1.5)
    l1_coef: float = 0.0  # activation=l1: weight of the summed mean |activation| in the loss


def activation_options(model: DictConfig) -> dict:
    """The models.sparse options (make_activation keywords) a model section sets."""
    return dict(percent_on=model.percent_on, boost_strength=model.boost_strength,
                duty_cycle_period=model.duty_cycle_period, local=model.kwta_local,
                k_inference_factor=model.k_inference_factor)


@dataclass
class ModelConfig(ActivationConfig):
    """Policy network: IMPALA with channel widths 16·scale, 32·scale, 32·scale; ``sparse_layers``
    are patterns over models.impala.RELU_SITES."""

    kind: str = "impala"
    scale: int = 1
    channels_last: bool = True  # faster convolutions on CPUs and on GPUs with tensor cores


@dataclass
class PPOConfig:
    """PPO hyperparameters, named as in the published training code."""

    lr: float = 5e-4
    lr_schedule: str = "linear"  # linear decay to 0 over the run, or constant
    adam_eps: float = 1e-5
    num_steps: int = 256  # rollout length per env
    epochs: int = 3
    minibatch_size: int = 2048  # per rank; must divide num_envs × num_steps
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip_eps: float = 0.2  # policy ratio clip, also the value clip when clip_value
    clip_value: bool = True
    value_coef: float = 0.5  # weight of 0.5·(V − R)², as in the published code
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    normalize_reward: bool = True  # divide rewards by the running std of discounted returns
    reward_clip: float = 10.0


@dataclass
class TrainerConfig:
    """Lightning trainer, run length and checkpointing; step counts are env steps over all ranks."""

    total_steps: int = 25_000_000
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: int = 1  # per node; > 1 runs DDP, each rank with its own envs
    num_nodes: int = 1
    precision: str = "32-true"
    checkpoint_every: int = 1_000_000  # env steps between checkpoints
    keep_checkpoints: int = 3  # step-*.ckpt files kept besides last.ckpt
    seed: int = 0
    progress_bar: bool = True
    # where metric rows go besides metrics.jsonl: tensorboard (<run_dir>/tb), csv (<run_dir>/csv), wandb
    loggers: list[str] = field(default_factory=lambda: list(DEFAULT_LOGGERS))


@dataclass
class TrainConfig:
    """A PPO maze run."""

    name: str = "maze_ppo"
    algo: str = "ppo"
    env: MazeEnvConfig = field(default_factory=MazeEnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def _schema(algo: str = "ppo", source: str = "config") -> DictConfig:
    return OmegaConf.structured(get_kind(algo, source).load("schema"))


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_leaf_keys(value, full + ".") if isinstance(value, DictConfig) else [full])
    return keys


def _unknown_key_message(full_key: str, source: str, schema: DictConfig) -> str:
    valid = _leaf_keys(schema)
    close = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.6)
    if not close:  # a right leaf under a wrong parent, e.g. ppo.num_envs
        leaf = full_key.rsplit(".", 1)[-1]
        close = [k for k in valid if k.rsplit(".", 1)[-1] == leaf][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see the dataclasses in trainers/config.py"
    return f"unknown config key '{full_key}' in {source}{hint}"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    for key, value in other.items():
        if isinstance(base.get(key), DictConfig) and not isinstance(value, (dict, DictConfig)):
            raise ConfigError(f"config key '{key}' in {source} must be a section of keys "
                              f"(e.g. {key}.{next(iter(base[key]))}), got {value!r}")
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as exc:
        raise ConfigError(_unknown_key_message(str(exc.full_key), source, base)) from None
    except ValidationError as exc:
        expected = _expected_type(str(exc.full_key), OmegaConf.get_type(base))
        raise ConfigError(f"config key '{exc.full_key}' in {source} expects {expected}, "
                          f"got {exc.value!r}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {str(exc).splitlines()[0]}") from None


def _expected_type(full_key: str, schema: type) -> str:
    node: Any = schema()
    for part in full_key.split("."):
        node = getattr(node, part, None)
    return type(node).__name__ if node is not None else "a valid value"


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML recipe into a dict, with one-line errors for missing or malformed files."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found; pass a YAML recipe such as "
                          "configs/train/maze_ppo_cpu.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; pass a YAML recipe") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where} is not valid YAML: "
                          f"{getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def parse_overrides(overrides: list[str]) -> dict:
    """``['ppo.lr=3e-4', 'env.rand_region=null']`` → nested dict, values parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' must look like dotted.key=value, e.g. ppo.lr=3e-4")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:  # the value is parsed as YAML: an unclosed [ or {, a stray :
        bad = next((item for item in overrides if not _parses(item.split("=", 1)[1])), overrides[0])
        raise ConfigError(f"override '{bad}': the value is not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "check its brackets and put a space after each colon, e.g. model.hidden=[64,64]") from None


def _parses(value: str) -> bool:
    try:
        yaml.safe_load(value)
    except yaml.YAMLError:
        return False
    return True


def build_config(recipe: dict, overrides: list[str] = (), source: str = "config") -> DictConfig:
    """Defaults ← recipe ← overrides, type-checked and validated; returns a read-only config.

    The ``algo`` key (default ``ppo``) picks the schema from :data:`trainers.kinds.KINDS`.
    """
    if not isinstance(recipe, (dict, DictConfig)):
        raise ConfigError(f"{source} must hold a mapping of config keys, not {type(recipe).__name__}")
    parsed = parse_overrides(list(overrides))
    algo = parsed.get("algo", recipe.get("algo", "ppo"))
    cfg = _merge(_schema(algo, source), recipe, source)
    cfg = _merge(cfg, parsed, "overrides")
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> DictConfig:
    """Load a YAML recipe with overrides into a validated :class:`TrainConfig`."""
    return build_config(read_yaml(path), overrides, source=str(path))


def need(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``ok``: the one-line form every validator uses."""
    if not ok:
        raise ConfigError(message)


def need_finite(section: DictConfig, prefix: str, keys: Sequence[str]) -> None:
    """ConfigError naming the first of ``keys`` of ``section`` that is NaN or infinite."""
    for key in keys:
        value = section[key]
        need(value is None or math.isfinite(value), f"{prefix}.{key} must be a finite number, got {value}")


def need_seed(value: int, key: str, high: int = MAX_SEED) -> None:
    """ConfigError unless a seed lies in [0, high]."""
    need(0 <= value <= high, f"{key} must be an integer in [0, {high}], got {value}")


def need_mixed_precision(trainer: DictConfig, algo: str) -> None:
    """ConfigError for a "*-true" precision, which casts the network but not the inputs a PPO or
    classification module builds itself (the run would stop with a dtype error)."""
    need(trainer.precision not in TRUE_PRECISIONS,
         f"trainer.precision={trainer.precision} does not work with algo {algo} (its inputs stay float32); "
         "use 32-true, 16-mixed or bf16-mixed")


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express, by the kind's validator; raises ConfigError."""
    name = cfg.name  # the default run directory is runs/<name>: a path here would write elsewhere
    need(bool(name.strip()) and name not in (".", "..") and "/" not in name and "\\" not in name,
         f"name must be a plain folder name, not a path (a run goes to runs/<name> unless --run-dir says "
         f"otherwise), got {name!r}")
    validate_trainer(cfg.trainer)
    get_kind(cfg.algo).load("validate")(cfg)


def validate_trainer(trainer: DictConfig) -> None:
    """Checks of the ``trainer`` section every kind shares."""
    need(trainer.total_steps >= 1, f"trainer.total_steps must be >= 1, got {trainer.total_steps}")
    need(trainer.devices >= 1 and trainer.num_nodes >= 1, "trainer.devices and trainer.num_nodes must be >= 1")
    need(trainer.accelerator in ACCELERATORS,
         f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got {trainer.accelerator!r}")
    need(trainer.precision in PRECISIONS,
         f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {trainer.precision!r}")
    need(trainer.checkpoint_every >= 1, "trainer.checkpoint_every must be >= 1 step")
    need(trainer.keep_checkpoints >= 0, "trainer.keep_checkpoints must be >= 0")
    need_seed(trainer.seed, "trainer.seed")
    unknown = [name for name in trainer.loggers if name not in LOGGERS]
    need(not unknown, f"trainer.loggers has unknown logger {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(LOGGERS)}")
    need(len(set(trainer.loggers)) == len(trainer.loggers),
         f"trainer.loggers names a logger twice: {list(trainer.loggers)}")


def validate_ppo(cfg: DictConfig) -> None:
    """Checks of a maze PPO config."""
    env, ppo = cfg.env, cfg.ppo
    need(cfg.model.kind == "impala", f"model.kind must be 'impala', got {cfg.model.kind!r}")
    need(cfg.model.scale >= 1, f"model.scale must be >= 1, got {cfg.model.scale}")
    validate_sparse(cfg.model)
    need(env.num_envs >= 1, f"env.num_envs must be >= 1, got {env.num_envs}")
    need(env.distribution_mode in DISTRIBUTION_MODES,
         f"env.distribution_mode must be one of {', '.join(DISTRIBUTION_MODES)}, got {env.distribution_mode!r}")
    need(env.rand_region is None or env.rand_region >= 0,
         f"env.rand_region must be >= 0 (0 = the top-right corner) or null, got {env.rand_region}")
    world = WORLD_DIM.get(env.distribution_mode)
    need(env.rand_region is None or world is None or env.rand_region <= world,
         f"env.rand_region {env.rand_region} is larger than the {world}×{world} {env.distribution_mode}-mode "
         f"world; use at most {world} (or null for the cheese anywhere)")
    need(env.obs in OBSERVATIONS, f"env.obs must be one of {', '.join(OBSERVATIONS)}, got {env.obs!r}")
    need(env.max_maze_size is None or (env.max_maze_size >= 3 and env.max_maze_size % 2 == 1),
         f"env.max_maze_size must be odd and >= 3 (or null), got {env.max_maze_size}")
    need(env.max_maze_size is None or world is None or env.max_maze_size <= world,
         f"env.max_maze_size {env.max_maze_size} is larger than the {world}×{world} {env.distribution_mode}-mode "
         f"world; use at most {world} (or null for any size)")
    need(env.min_maze_size is None or (env.min_maze_size >= 3 and env.min_maze_size % 2 == 1
                                       and env.min_maze_size <= (env.max_maze_size or world or env.min_maze_size)),
         f"env.min_maze_size must be odd, >= 3 and <= env.max_maze_size (or null), got {env.min_maze_size}")
    need(env.num_levels >= 0 and env.start_level >= 0, "env.num_levels and env.start_level must be >= 0")
    need(env.num_levels <= MAX_INT32 and env.start_level <= MAX_INT32,
         f"env.num_levels and env.start_level must be <= {MAX_INT32} (procgen's levels are 32-bit)")
    ranks = cfg.trainer.devices * cfg.trainer.num_nodes  # rank r's envs are seeded env.seed + r·stride
    need_seed(env.seed, "env.seed", MAX_INT32 - RANK_SEED_STRIDE * (ranks - 1))
    need_finite(env, "env", ["cheese_reward"])
    need_mixed_precision(cfg.trainer, cfg.algo)
    validate_ppo_section(ppo, env.num_envs)


def validate_ppo_section(ppo: DictConfig, num_envs: int) -> None:
    """Checks of a ``ppo`` section (PPOConfig) for ``num_envs`` envs per rank."""
    need_finite(ppo, "ppo", ["lr", "adam_eps", "gamma", "gae_lambda", "clip_eps", "value_coef", "entropy_coef"])
    need(ppo.lr > 0, f"ppo.lr must be > 0, got {ppo.lr}")
    need(ppo.lr_schedule in ("linear", "constant"),
         f"ppo.lr_schedule must be linear or constant, got {ppo.lr_schedule!r}")
    need(ppo.num_steps >= 1 and ppo.epochs >= 1, "ppo.num_steps and ppo.epochs must be >= 1")
    batch = num_envs * ppo.num_steps
    need(ppo.minibatch_size >= 1, f"ppo.minibatch_size must be >= 1, got {ppo.minibatch_size}")
    need(batch % ppo.minibatch_size == 0,
         f"ppo.minibatch_size {ppo.minibatch_size} must divide env.num_envs × ppo.num_steps = {batch}")
    need(0 < ppo.gamma <= 1 and 0 <= ppo.gae_lambda <= 1, "ppo.gamma must be in (0, 1] and ppo.gae_lambda in [0, 1]")
    for key in ("clip_eps", "value_coef", "entropy_coef", "max_grad_norm", "reward_clip", "adam_eps"):
        need(ppo[key] >= 0, f"ppo.{key} must be >= 0, got {ppo[key]}")


def validate_sparse(model: DictConfig) -> None:
    """Checks of the sparse-activation keys of ModelConfig."""
    from shardlab.models.impala import sparse_sites  # deferred, as in check_runnable: models import torch

    validate_sparse_options(model)
    need(model.activation == "relu" or bool(sparse_sites(model.sparse_layers)),
         f"model.sparse_layers {list(model.sparse_layers)} match no ReLU of the policy; use hook-point "
         "names or patterns such as '*', '*relu2_out', 'embedder.relufc_out'")


def validate_sparse_options(model: DictConfig) -> None:
    """Checks of the activation options every network's model section shares (activation,
    percent_on, boost_strength, k_inference_factor, duty_cycle_period, l1_coef)."""
    from shardlab.models.sparse import KINDS

    need(model.activation in KINDS, f"model.activation must be one of {', '.join(KINDS)}, got {model.activation!r}")
    need_finite(model, "model", ["percent_on", "boost_strength", "k_inference_factor", "l1_coef"])
    need(0 < model.percent_on <= 1, f"model.percent_on must be in (0, 1], got {model.percent_on}")
    need(model.boost_strength >= 0, f"model.boost_strength must be >= 0, got {model.boost_strength}")
    need(model.k_inference_factor >= 1 and model.percent_on * model.k_inference_factor <= 1,
         f"model.k_inference_factor must be >= 1 with percent_on × factor <= 1, got {model.k_inference_factor}")
    need(model.duty_cycle_period >= 1, f"model.duty_cycle_period must be >= 1, got {model.duty_cycle_period}")
    need(model.l1_coef >= 0, f"model.l1_coef must be >= 0, got {model.l1_coef}")
    need(model.l1_coef == 0 or model.activation == "l1",
         f"model.l1_coef={model.l1_coef} only acts with model.activation=l1 (got {model.activation!r})")


def check_runnable(cfg: DictConfig) -> None:
    """Checks that depend on this machine (validate() only checks the config itself)."""
    import torch  # deferred: config handling alone should not need torch

    accelerator, devices = cfg.trainer.accelerator, cfg.trainer.devices
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        if available < devices:
            raise ConfigError(f"trainer.accelerator={accelerator} with trainer.devices={devices} but this "
                              f"machine has {available} CUDA GPU(s); use trainer.accelerator=cpu or fewer devices")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("trainer.accelerator=mps but this machine has no Apple MPS device; "
                          "use trainer.accelerator=cpu or auto")
    if accelerator == "tpu" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("trainer.accelerator=tpu needs torch_xla, which is not installed; "
                          "use trainer.accelerator=cpu or auto")
    check_loggers_installed(cfg.trainer.loggers)


def check_loggers_installed(names: Sequence[str]) -> None:
    """ConfigError when a chosen logger's optional package is missing (wandb is an extra)."""
    if "wandb" in names:
        try:
            importlib.import_module("wandb")  # only whether it imports; a run imports it later
        except ImportError:
            raise ConfigError("trainer.loggers has wandb but wandb is not installed; "
                              "pip install 'shardlab[wandb]' or drop it") from None


def to_dict(cfg: DictConfig) -> dict:
    """The resolved config as plain Python containers (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True)
