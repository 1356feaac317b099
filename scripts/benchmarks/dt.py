"""``benchmark.py dt``: training tokens/s of the decision-transformer LightningModule against a
plain-PyTorch loop of the same model, in the same process, interleaved.

Both sides build the model, the dataset windows, the per-step seeded window sampling, the masked
action loss, AdamW with the warmup + cosine schedule and grad-norm clipping from the same functions
of ``trainers/dt.py``, on the same config and data. The trainer side is the real ``DTModule`` under
the ``pl.Trainer`` ``trainers.run.fit`` builds (``trainers.lightning_setup.build_trainer``; no logger,
no checkpoints, no progress bar, one process); the plain side is a hand-written loop (sample →
forward → loss → backward → clip → step → schedule). Each measurement runs ``--warmup`` untimed
steps, then ``--steps`` timed ones, the clock read at step boundaries (for the trainer from a
callback after the optimizer step, so Lightning's per-step overhead is inside the window). A token
is one position of the model's sequence (``batch × tokens per window``, padding included), the same
count on both sides. Logging and validation intervals are pushed past the run so neither side
validates. Repeats alternate the order.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import finish_report

NAME = "dt"
HELP = ("decision-transformer training tokens/s: Lightning DTModule vs a plain PyTorch loop "
        "(target ratio >= 0.9)")
TARGET_RATIO = 0.9
DEFAULT_CONFIG = os.path.join("configs", "train", "dt_doorkey.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py dt``."""
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.d_model=128")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"training recipe (default {DEFAULT_CONFIG})")
    parser.add_argument("--data", help="trajectory dataset (default: a synthetic one, 300 random episodes)")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per measurement (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported (default 3)")
    parser.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")


def synthetic_dataset(path: str, episodes: int = 300, seed: int = 0) -> str:
    """Random DoorKey-shaped episodes (7×7×3 views, 7 actions, lengths 5–60) written to ``path``."""
    import numpy as np

    from shardlab.trainers.trajectories import from_episodes, save_trajectories

    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 61, episodes)
    obs = [rng.integers(0, 3, (n, 7, 7, 3)).astype(np.uint8) for n in lengths]
    actions = [rng.integers(0, 7, n) for n in lengths]
    rewards = [np.r_[np.zeros(n - 1), rng.random()].astype(np.float32) for n in lengths]
    traj = from_episodes(obs, actions, rewards, [True] * episodes, [False] * episodes,
                         ["use the key to open the door and then get to the goal"] * episodes,
                         {"env_id": "MiniGrid-DoorKey-5x5-v0", "obs": "image", "num_actions": 7, "max_steps": 250})
    save_trajectories(path, traj)
    return path


def _config(args: argparse.Namespace, data: str, total_steps: int) -> Any:
    from shardlab.trainers.config import load_config

    return load_config(args.config, [*args.overrides, f"data.path={data}", f"trainer.total_steps={total_steps}",
                                     f"monitor.log_every={total_steps + 1}", f"monitor.validate_every={total_steps + 1}",
                                     "trainer.progress_bar=false"])


def measure_trainer(cfg: Any, warmup: int, steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``steps`` timed optimizer steps of DTModule under a pl.Trainer."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from shardlab.trainers.config import to_dict
    from shardlab.trainers.dt import DTModule
    from shardlab.trainers.lightning_setup import build_trainer, expected_warnings_silenced

    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    module = DTModule(to_dict(cfg))
    marks: list[tuple[float, float]] = []

    class Clock(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if trainer.global_step in (warmup, warmup + steps):
                marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory(prefix="shardlab-bench-dt-") as root:
        # the Trainer trainers.run.fit builds, on one CPU, without loggers or checkpoint callbacks
        trainer = build_trainer(module, root_dir=root, accelerator="cpu", precision=cfg.trainer.precision,
                                max_steps=warmup + steps, callbacks=[Clock()])
        with expected_warnings_silenced():
            trainer.fit(module)
    return marks[1][0] - marks[0][0], marks[1][1] - marks[0][1]


def measure_plain(cfg: Any, warmup: int, steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``steps`` timed optimizer steps of a plain PyTorch loop doing the same work."""
    import torch

    from shardlab.models.decision_transformer import build_decision_transformer
    from shardlab.trainers.config import build_config, to_dict
    from shardlab.trainers.dt import (TrainingData, action_loss, batch_generator, fill_spec, make_optimizer,
                                      read_dataset)

    torch.manual_seed(cfg.trainer.seed)
    traj = read_dataset(cfg.data.path)
    cfg = build_config(fill_spec(to_dict(cfg), traj))
    model = build_decision_transformer(cfg).train()
    data = TrainingData(cfg, traj, model)
    optimizer, schedule = make_optimizer(model, cfg.optim, cfg.trainer.total_steps)
    start = cpu = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start, cpu = time.perf_counter(), time.process_time()
        windows = data.train.sample(cfg.optim.batch_size, batch_generator(cfg.trainer.seed, 0, step))
        loss, _, _ = action_loss(model(**windows.inputs()), windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        schedule.step()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved repeats of both measurements; rates in tokens/s and their median ratio."""
    import torch

    from shardlab.models.decision_transformer import build_decision_transformer
    from shardlab.trainers.config import ConfigError, build_config, to_dict
    from shardlab.trainers.dt import fill_spec, read_dataset

    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        raise ConfigError("--steps and --repeats must be >= 1 and --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="shardlab-bench-dt-data-") as folder:
        data = args.data or synthetic_dataset(os.path.join(folder, "synthetic.npz"))
        cfg = _config(args, data, args.warmup + args.steps)
        model = build_decision_transformer(build_config(fill_spec(to_dict(cfg), read_dataset(data))))
        tokens_per_step = cfg.optim.batch_size * model.sequence_length(cfg.model.context, model.max_mission_tokens)
        runs = []
        for repeat in range(args.repeats):
            order = ("trainer", "plain") if repeat % 2 == 0 else ("plain", "trainer")
            for name in order:
                seconds, cpu = (measure_trainer if name == "trainer" else measure_plain)(cfg, args.warmup, args.steps)
                tokens = tokens_per_step * args.steps
                runs.append({"name": name, "repeat": repeat, "seconds": seconds, "cpu_seconds": cpu,
                             "tokens_per_sec": tokens / seconds, "tokens_per_cpu_sec": tokens / cpu})
                print(f"[{time.strftime('%H:%M:%S')}] repeat {repeat + 1}/{args.repeats} {name}: "
                      f"{tokens / seconds:,.0f} tokens/s ({tokens / cpu:,.0f} per CPU second)", flush=True,
                      file=sys.stderr)
    by_name = {name: [r for r in runs if r["name"] == name] for name in ("trainer", "plain")}
    rates = {name: statistics.median(r["tokens_per_sec"] for r in rows) for name, rows in by_name.items()}
    cpu_rates = {name: statistics.median(r["tokens_per_cpu_sec"] for r in rows) for name, rows in by_name.items()}
    ratios = [t["tokens_per_sec"] / p["tokens_per_sec"] for t, p in zip(by_name["trainer"], by_name["plain"])]
    cpu_ratios = [t["tokens_per_cpu_sec"] / p["tokens_per_cpu_sec"] for t, p in zip(by_name["trainer"], by_name["plain"])]
    return {"benchmark": "dt", "config": {"recipe": args.config, "overrides": list(args.overrides),
                                          "data": args.data or "synthetic", "batch_size": cfg.optim.batch_size,
                                          "context": cfg.model.context, "d_model": cfg.model.d_model,
                                          "n_layers": cfg.model.n_layers, "tokens_per_step": tokens_per_step},
            "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()[0], "runs": runs, "rates": rates, "cpu_rates": cpu_rates,
            "ratio_trainer_over_plain": statistics.median(ratios), "ratios_per_repeat": ratios,
            "cpu_ratio_trainer_over_plain": statistics.median(cpu_ratios), "cpu_ratios_per_repeat": cpu_ratios,
            "target_ratio": TARGET_RATIO}


def format_report(report: dict[str, Any]) -> str:
    """A short table of the medians and the ratio against its target."""
    c = report["config"]
    lines = [f"decision transformer training: {c['n_layers']} layers, d {c['d_model']}, context {c['context']}, "
             f"batch {c['batch_size']} ({c['tokens_per_step']:,} tokens/step), data {c['data']}",
             f"{report['steps']} timed steps after {report['warmup']} warm-up, {report['repeats']} interleaved "
             f"repeats, {report['threads']} torch threads, load average {report['load_average']:.2f}",
             f"  trainer (Lightning DTModule)   {report['rates']['trainer']:>12,.0f} tokens/s",
             f"  plain PyTorch loop             {report['rates']['plain']:>12,.0f} tokens/s",
             f"  trainer / plain                {report['ratio_trainer_over_plain']:>12.3f}   (target >= "
             f"{report['target_ratio']}; per repeat " + ", ".join(f"{r:.3f}" for r in report["ratios_per_repeat"]) + ")",
             f"  per CPU second: trainer {report['cpu_rates']['trainer']:,.0f}, plain {report['cpu_rates']['plain']:,.0f} "
             f"tokens, ratio {report['cpu_ratio_trainer_over_plain']:.3f} (per repeat "
             + ", ".join(f"{r:.3f}" for r in report["cpu_ratios_per_repeat"]) + ")"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Time the DT trainer against the plain loop, interleaved."""
    report = measure(args)
    return finish_report(format_report(report), report, args.json)
