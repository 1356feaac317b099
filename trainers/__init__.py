"""Training: one LightningModule per kind (``ppo``, ``ppo_minigrid``, ``dt``, ``classify``) with its
torch-free config schema (``*_config.py``), the kind table tying each to its env and network
(``kinds``), their data (``datasets``, ``trajectories``, ``dt_data``, and ``collect`` for
``shardlab collect``), and the shared run loop (``run``, ``base``, ``lightning_setup``) with
checkpointing, restoring, loggers, precision, stopping and the Lightning progress callback. The
``shardlab`` command is shardlab/cli.py; envs, the rollout loop and episode records are in envs/,
the networks and their builders in models/.
"""

from shardlab import __version__

__all__ = ["__version__"]
