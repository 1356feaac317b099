"""``benchmark.py explore``: round trips of `shardlab explore` in a real headless browser.

The explorer's app is served by uvicorn on 127.0.0.1 (a free port, a thread of this process) and
driven by Selenium through the system Chromium, as a user would: on the largest maze the network's
training world holds (``/api/info`` ``max_size``), ``--interactions`` times each of

* ``cheese`` — a click in cheese mode on a random open square (the whole field recomputed);
* ``steer`` — one key step of the steering slider (cheese vector added at the default layer);
* ``layer`` — a switch of the activation layer or, every other time, of the channel (steering off).

Each round trip is the page's own measurement, ``window.exploreTimings``: from the input event to
after the repaint that shows the answer (``performance.now()`` both ends), and the page reports the
server's compute time beside it. p50/p95/max per kind and over all are printed and written as JSON
(``--out``). The target for the CPU recipes is p95 <= 250 ms; the published-size ``maze_ppo`` (scale
4, 25×25 mazes) is reported, not held to it. A recipe without a trained checkpoint is measured on
a freshly initialised network of its architecture (the same work per request).

``--screenshot PNG`` also saves the maze page (the decision square inspected, steering on) as a
picture, e.g. ``docs/images/explore_maze.png`` from the demo checkpoint with ``--interactions 0``.

Run as ``python scripts/benchmark.py explore ...`` or ``python scripts/benchmarks/explore.py ...``.
The helpers here (browser, background server, waiting on the page) are shared with
``tests/test_explore_browser.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import sys
import threading
import time
from typing import Any, Optional

SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(SCRIPTS)
if __package__ in (None, ""):  # run as a file (or loaded by path): make `benchmarks` and `shardlab` importable
    sys.path[:0] = [path for path in (REPO, SCRIPTS) if path not in sys.path]

from benchmarks.common import finish_report, progress  # noqa: E402

NAME = "explore"
HELP = ("`shardlab explore` round trips (input -> repaint) in headless Chromium: move cheese, steering "
        "slider, layer/channel switch; p50/p95/max ms (target p95 <= 250 ms on the CPU recipes)")
KINDS = {"cheese": ("cheese",), "steer": ("steer",), "layer": ("layer", "channel")}
TARGET_P95_MS = 250.0
DEFAULT_RECIPES = ("maze_ppo_cpu",)
# the page's breakdown of a round trip: server compute, the whole request (server, transfer, JSON
# parsing), drawing the answer, waiting for the paint
PARTS = ("server_ms", "fetch_ms", "draw_ms", "paint_ms")
# the distribution's packages first; GitHub's Ubuntu runners ship Google Chrome and name their
# chromedriver's folder in CHROMEWEBDRIVER
BROWSER_PATHS = {"chromium": ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium"),
                 "chromedriver": ("chromedriver", "/usr/bin/chromedriver",
                                  os.path.join(os.environ.get("CHROMEWEBDRIVER", "/nonexistent"), "chromedriver"))}


# -- browser and server (shared with tests/test_explore_browser.py) -----------------------------
def _first_executable(candidates: tuple[str, ...]) -> Optional[str]:
    """The first candidate that is a command on PATH or an executable file."""
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None and os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            path = candidate
        if path is not None:
            return path
    return None


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) executables; RuntimeError with a one-line reason when one is missing."""
    found = []
    for name, candidates in BROWSER_PATHS.items():
        path = _first_executable(candidates)
        if path is None:
            raise RuntimeError(f"{name} not found (apt-get install chromium chromium-driver)")
        found.append(path)
    return found[0], found[1]


def headless_chrome(width: int = 1440, height: int = 1000) -> Any:
    """Headless Chromium driven by the system chromedriver; Selenium Manager never runs (no download)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1",
                     # a headless window counts as hidden: keep its timers and frames at full speed
                     "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                     "--disable-backgrounding-occluded-windows", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


class BackgroundServer:
    """An ASGI app served by uvicorn on 127.0.0.1 (a free port) in a daemon thread, for a ``with`` block."""

    def __init__(self, app: Any):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))  # the OS picks the port: no race with another test's server
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name=f"explore-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """The page's address."""
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the explore server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def wait_idle(driver: Any, timeout: float = 60.0) -> None:
    """Wait until the page has no request in flight and has repainted (``body[data-busy="0"]``)."""
    from selenium.common.exceptions import TimeoutException

    # the browser tells when the flag flips (no polling to compete with the server for the CPU)
    driver.set_script_timeout(timeout)
    try:
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1], body = document.body;
            if (body.dataset.busy === "0") { done(true); return; }
            const watch = new MutationObserver(() => {
              if (body.dataset.busy === "0") { watch.disconnect(); done(true); }
            });
            watch.observe(body, {attributes: true, attributeFilter: ["data-busy"]});""")
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        raise TimeoutError(f"the page stayed busy for {timeout:.0f} s; status line: {status}") from None


def open_page(driver: Any, url: str) -> dict:
    """Load the page, wait for its first drawing, and return its /api/info."""
    driver.get(url)
    wait_idle(driver)
    return driver.execute_script("return fetch('/api/info').then((r) => r.json())")


def page_ascii(driver: Any) -> str:
    """The maze the page holds (its ASCII box mirrors it until the user types there)."""
    return driver.execute_script("return document.getElementById('ascii').value")


def set_mode(driver: Any, mode: str) -> None:
    """Pick a click mode as a user does: a click on its button."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'#mode input[value="{mode}"] + span').click()


def click_square(driver: Any, square: tuple[int, int], size: int) -> None:
    """A mouse click on square (x, y) of the maze canvas (y = 0 at the bottom)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "maze")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    width, height = canvas.size["width"], canvas.size["height"]
    x, y = square
    # offsets from the element's centre (Selenium 4)
    dx = (x + 0.5) * width / size - width / 2
    dy = (size - 1 - y + 0.5) * height / size - height / 2
    ActionChains(driver).move_to_element_with_offset(canvas, round(dx), round(dy)).click().perform()


def maze_squares(ascii: str) -> tuple[int, list[tuple[int, int]], tuple[int, int], Optional[tuple[int, int]]]:
    """(size, open squares, mouse, cheese) of an ASCII maze, squares (x, y) with y = 0 at the bottom."""
    rows = [row.strip() for row in ascii.strip().splitlines() if row.strip()]
    size = len(rows)
    found: dict[str, tuple[int, int]] = {}
    free = []
    for r, row in enumerate(rows):
        for x, char in enumerate(row):
            square = (x, size - 1 - r)
            if char in "MC":
                found[char] = square
            elif char == ".":
                free.append(square)
    return size, free, found.get("M", (0, 0)), found.get("C")


# -- the measurement ------------------------------------------------------------------------------
def select_by_value(driver: Any, element_id: str, value: str) -> None:
    """Choose an option of a <select> as a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def type_number(driver: Any, element_id: str, value: Any) -> None:
    """Replace an input's text by typing it (an input event per key; a one-digit number is one event)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(str(value))


def new_maze(driver: Any, seed: int, size: int) -> None:
    """Ask the page for a new maze of ``size`` from ``seed`` and wait for it."""
    from selenium.webdriver.common.by import By

    type_number(driver, "seed", seed)
    type_number(driver, "size", size)
    driver.find_element(By.ID, "new-maze").click()
    wait_idle(driver)


def interact(driver: Any, info: dict, interactions: int, seed: int = 0) -> list[dict]:
    """``interactions`` round trips of each kind on the largest maze, each a single input event
    waited on; the page's timing entries of those interactions only."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rng = random.Random(seed)
    new_maze(driver, seed, info["max_size"])
    timings: list[dict] = []

    def timed(action: Any) -> None:
        driver.execute_script("window.exploreTimings.length = 0")
        action()
        wait_idle(driver)
        timings.extend(driver.execute_script("return window.exploreTimings"))

    set_mode(driver, "cheese")
    for _ in range(interactions):
        size, free, _, _ = maze_squares(page_ascii(driver))
        timed(lambda: click_square(driver, rng.choice(free), size))
    slider = driver.find_element(By.ID, "steer-coefficient")
    for i in range(interactions):
        timed(lambda: slider.send_keys(Keys.ARROW_LEFT if i % 2 else Keys.ARROW_RIGHT))  # one step, one input event
    driver.find_element(By.ID, "steer-on").click()  # steering off: the plain view of each layer
    wait_idle(driver)
    layers = [layer for layer in info["layers"] if layer["name"] != info["default_layer"]] or info["layers"]
    channel = driver.find_element(By.ID, "channel")
    for i in range(interactions):
        if i % 2 == 0:
            timed(lambda: select_by_value(driver, "layer", layers[(i // 2) % len(layers)]["name"]))
        else:  # the number input's arrow key: the next channel, one input event
            timed(lambda: channel.send_keys(Keys.ARROW_UP))
    return timings


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95 and max of ``values`` (nearest-rank p95: with 20 samples, the 19th)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(-(-0.95 * len(ordered) // 1)) - 1))
    return {"n": len(ordered), "p50": statistics.median(ordered), "p95": ordered[rank], "max": ordered[-1]}


def summarise(timings: list[dict]) -> dict[str, Any]:
    """Per kind and overall: round trip and server percentiles (ms)."""
    rows: dict[str, Any] = {}
    for kind, whats in (*KINDS.items(), ("all", tuple(w for ws in KINDS.values() for w in ws))):
        entries = [entry for entry in timings if entry["what"] in whats]
        if not entries:
            continue
        rows[kind] = {"round_trip_ms": percentiles([entry["ms"] for entry in entries])}
        for part in PARTS:  # the page's breakdown of each round trip
            values = [entry[part] for entry in entries if entry.get(part) is not None]
            if values:
                rows[kind][part] = percentiles(values)
    return rows


def screenshot(driver: Any, url: str, path: str, seed: int = 0, steer: Optional[float] = -1.0) -> str:
    """Save the maze page as a PNG: a seeded maze of the training size, its decision square inspected,
    steering on at ``steer`` (None: off). Returns ``path``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    info = open_page(driver, url)
    decision = None
    for tried in range(seed, seed + 20):  # the first maze from ``seed`` on with a decision square
        new_maze(driver, tried, info.get("train_max_size") or info["max_size"])
        shown = driver.find_element(By.ID, "maze").get_attribute("data-decision")
        decision = tuple(int(v) for v in shown.split(",")) if shown else None
        if decision is not None:
            break
    view_script = "return document.getElementById('maze-caption').textContent"
    size, _, _, _ = maze_squares(page_ascii(driver))
    if decision is not None:
        set_mode(driver, "inspect")
        click_square(driver, decision, size)
        wait_idle(driver)
    if steer is not None and info["layers"]:
        slider = driver.find_element(By.ID, "steer-coefficient")
        driver.execute_script("arguments[0].value = arguments[1]", slider, steer + 0.1)
        slider.send_keys(Keys.ARROW_LEFT)  # a real input event lands on the coefficient
        wait_idle(driver)
    driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    window = driver.get_window_size()
    driver.set_window_size(window["width"], height + 140)  # the window's frame; the page then fits unscrolled
    try:
        wait_idle(driver)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        driver.find_element(By.TAG_NAME, "body").screenshot(path)
    finally:
        driver.set_window_size(window["width"], window["height"])
    progress(f"wrote {path} ({driver.execute_script(view_script)})")
    return path


# -- sources --------------------------------------------------------------------------------------
def trained_of(checkpoint: Optional[str], recipe: Optional[str]) -> Any:
    """The maze network to serve: a checkpoint, or a freshly initialised network of a recipe;
    ConfigError (one line) for a missing file or name, or a network that is not a maze policy."""
    from shardlab import configs
    from shardlab.evals.maze.inputs import fresh_network
    from shardlab.trainers.checkpointing import CheckpointError
    from shardlab.trainers.config import ConfigError, load_config
    from shardlab.trainers.restore import load_trained, wrap_policy

    try:
        if checkpoint:
            trained = load_trained(checkpoint)
        else:
            config = load_config(configs.resolve("recipe", recipe))
            trained = wrap_policy(fresh_network(config, 0), config)
    except (CheckpointError, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from None
    if trained.kind != "ppo":
        raise ConfigError(f"{checkpoint or recipe} is a {trained.kind!r} network; the explore benchmark times the maze "
                          "page (a maze PPO checkpoint or recipe)")
    return trained


def app_of(trained: Any) -> Any:
    """The explorer's Starlette app over ``trained``."""
    from shardlab.explore.app import make_app, open_session

    return make_app(open_session(trained))


def measure_source(driver: Any, label: str, trained: Any, interactions: int, screenshot_path: Optional[str]
                   ) -> dict[str, Any]:
    """Serve ``trained``, run the interactions in ``driver``, and summarise."""
    with BackgroundServer(app_of(trained)) as server:
        info = open_page(driver, server.url)
        report: dict[str, Any] = {"source": label, "recipe": info.get("recipe"), "obs": info.get("obs"),
                                  "maze_size": info["max_size"], "world_dim": info.get("world_dim"),
                                  "scale": int(trained.config.model.get("scale", 0) or 0),
                                  "interactions": interactions}
        if interactions:
            progress(f"{label}: {interactions} interactions of each kind on {info['max_size']}×{info['max_size']} mazes")
            timings = interact(driver, info, interactions)
            report["timings"] = timings
            report["summary"] = summarise(timings)
        if screenshot_path:
            report["screenshot"] = screenshot(driver, server.url, screenshot_path)
    return report


def format_report(reports: list[dict[str, Any]]) -> str:
    """The printed table: one row per source and kind, round trip percentiles and the parts' medians."""
    lines = [f"{'source':<26} {'kind':<7} {'n':>3} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}   "
             f"{'median: server':>14} {'request':>8} {'draw':>5} {'paint':>6}"]
    for report in reports:
        for kind, row in report.get("summary", {}).items():
            trip = row["round_trip_ms"]
            parts = [row[part]["p50"] if part in row else float("nan") for part in PARTS]
            lines.append(f"{report['source'][:26]:<26} {kind:<7} {trip['n']:>3} {trip['p50']:>7.0f} {trip['p95']:>7.0f} "
                         f"{trip['max']:>7.0f}   {parts[0]:>14.0f} {parts[1]:>8.0f} {parts[2]:>5.0f} {parts[3]:>6.0f}")
    lines.append(f"round trip = input event -> repaint in headless Chromium (request = server + transfer + JSON); "
                 f"target p95 <= {TARGET_P95_MS:.0f} ms on the CPU recipes; {os.cpu_count()} CPUs")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``benchmark.py explore``."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="a trained maze checkpoint to serve")
    source.add_argument("--recipe", nargs="+", metavar="NAME",
                        help="recipes (configs/train/NAME.yaml or a path) measured on a freshly initialised "
                             f"network each (default {' '.join(DEFAULT_RECIPES)})")
    parser.add_argument("--interactions", type=int, default=20, help="round trips of each kind (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the server (default: torch's own)")
    parser.add_argument("--screenshot", metavar="PNG", help="also save the maze page as a picture")
    parser.add_argument("--out", "--json", dest="out", metavar="FILE", help="also write the numbers to this JSON file")


def run(args: argparse.Namespace) -> int:
    """Measure every source in one browser and print the table."""
    from shardlab.trainers.config import ConfigError

    if args.interactions < 0:
        raise ConfigError(f"--interactions must be >= 0, got {args.interactions}")
    try:
        browser_paths()
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    named = [(args.checkpoint, None)] if args.checkpoint else [(None, r) for r in (args.recipe or DEFAULT_RECIPES)]
    # every network loads before the browser starts, so a wrong name fails at once
    sources = [(checkpoint or f"{recipe} (fresh)", trained_of(checkpoint, recipe)) for checkpoint, recipe in named]
    reports = []
    driver = headless_chrome()
    try:
        for label, trained in sources:
            shot = args.screenshot if len(sources) == 1 else None
            reports.append(measure_source(driver, label, trained, args.interactions, shot))
    finally:
        driver.quit()
    report = {"benchmark": "explore", "target_p95_ms": TARGET_P95_MS, "cpu_count": os.cpu_count(),
              "sources": reports}
    return finish_report(format_report(reports), report, args.out)


def main(argv: Optional[list[str]] = None) -> int:
    """``python scripts/benchmarks/explore.py`` without the benchmark.py dispatcher."""
    parser = argparse.ArgumentParser(prog="explore.py", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    from shardlab.trainers.config import ConfigError
    try:
        return run(args)
    except ConfigError as exc:
        print(f"benchmark explore: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
