"""`shardlab explore` in a real browser: headless Chromium driven by Selenium over the real app
(uvicorn in a thread, 127.0.0.1). What the page shows after clicks, slider moves and layer switches
is read back as a user reads it (the inspect table, the activation readout, the played frames) and
checked against the evals' own functions on the same maze: ``vector_field``, ``cheese_vector`` +
``hooked``/``add``, ``run_with_cache``, ``shortest_path``. One browser and one server per network
for the whole module; the helpers (browser, server, clicks) are scripts/benchmarks/explore.py's."""

from __future__ import annotations

import base64
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("explore_bench", os.path.join(ROOT, "scripts", "benchmarks", "explore.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

try:
    bench.browser_paths()
except RuntimeError as _missing:
    pytest.skip(f"no browser for the explore tests: {_missing}", allow_module_level=True)
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[test])")
pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e .[explore])")

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from shardlab.envs import maze_geometry, maze_state  # noqa: E402
from shardlab.envs.maze_build import parse_ascii  # noqa: E402
from shardlab.evals.maze.common import activation_square_cell, policy_input  # noqa: E402
from shardlab.evals.maze.retargeting import target_edit  # noqa: E402
from shardlab.evals.maze.steering import cheese_vector  # noqa: E402
from shardlab.evals.maze.vector_field import FOLDED_ACTIONS, vector_field  # noqa: E402
from shardlab.models.hooks import add, hooked, run_with_cache  # noqa: E402
from shardlab.trainers.restore import load_trained  # noqa: E402

pytestmark = [pytest.mark.slow("browser"), pytest.mark.usefixtures("one_thread")]
TOLERANCE = 1e-3  # the page shows probabilities with 4 decimals


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver():
    browser = bench.headless_chrome()
    yield browser
    browser.quit()


def _served(*args, **kwargs):
    """A running server over ``open_source(*args, **kwargs)``, for a ``with`` block."""
    from shardlab.explore.app import make_app, open_source

    grad = torch.is_grad_enabled()
    try:
        session = open_source(*args, **kwargs)
    finally:
        torch.set_grad_enabled(grad)  # opening a session turns autograd off in this thread; later tests need it
    return bench.BackgroundServer(make_app(session))


@pytest.fixture(scope="module")
def maze_server(tiny_maze_checkpoint):
    with _served(tiny_maze_checkpoint) as server:
        yield server


@pytest.fixture(scope="module")
def policy(tiny_maze_checkpoint):
    """The same checkpoint loaded apart from the server: the evals' numbers are computed on it."""
    trained = load_trained(tiny_maze_checkpoint)
    return trained.model.eval(), trained.config.env.obs


@pytest.fixture(scope="module")
def oracle_server():
    with _served("oracle:cheese_seeker", recipe="maze_ppo_cpu") as server:
        yield server


@pytest.fixture(scope="module")
def dt_server(tmp_path_factory):
    from shardlab import cli
    from tests.test_dt_trainer import RECIPE, tiny_args, tiny_dataset

    root = tmp_path_factory.mktemp("explore_dt")
    data = tiny_dataset(root / "d.npz")
    assert cli.main(["train", RECIPE, *tiny_args(data, steps=4), "--run-dir", str(root / "run")]) == 0
    with _served(str(root / "run" / "checkpoints" / "last.ckpt")) as server:
        yield server


# -- reading the page ----------------------------------------------------------------------------
def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def probs(driver, prefix: str) -> np.ndarray:
    """The five folded probabilities a row of the inspect table shows (p: inspected, m: mouse, b: unedited)."""
    return np.array([float(text_of(driver, f"{prefix}-{move}")) for move in FOLDED_ACTIONS])


def shown_numbers(driver) -> dict:
    """Every number of the inspect table, as text."""
    return {element.get_attribute("id"): element.text
            for element in driver.find_elements(By.CSS_SELECTOR, "#inspect td")} | {"value": text_of(driver, "value")}


def fresh_maze(driver, url: str, seed: int) -> tuple[dict, int, list, tuple, tuple]:
    """The page over a new seeded maze of the training size: (info, size, open squares, mouse, cheese)."""
    info = bench.open_page(driver, url)
    bench.new_maze(driver, seed, info.get("train_max_size") or info["max_size"])
    return (info, *bench.maze_squares(bench.page_ascii(driver)))


def inspect(driver, square, size: int) -> None:
    bench.set_mode(driver, "inspect")
    bench.click_square(driver, square, size)
    bench.wait_idle(driver)
    assert driver.find_element(By.ID, "p-left").get_attribute("data-square") == f"{square[0]},{square[1]}"


def exported_state(driver) -> bytes:
    """The procgen state bytes the page's Export offers for download."""
    driver.find_element(By.ID, "export").click()
    bench.wait_idle(driver)
    href = driver.find_element(By.ID, "download-state").get_attribute("href")
    assert href.startswith("data:application/octet-stream;base64,")
    return base64.b64decode(href.split(",", 1)[1])


def state_matches_page(driver, state: bytes) -> None:
    """The exported state holds the maze the page's ASCII shows."""
    inner, mouse = parse_ascii(bench.page_ascii(driver))
    assert np.array_equal(maze_state.inner_grid(state), inner)
    assert maze_state.mouse_square(state) == mouse


def plain_forward(model, state: bytes, obs: str) -> tuple[np.ndarray, float]:
    with torch.inference_mode():
        logits, value = model(policy_input(model, [state], obs))
    return logits, float(value.reshape(-1)[0])


def no_alert(driver) -> bool:
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def far_square(free: list, away_from) -> tuple:
    """The open square farthest (Manhattan) from ``away_from``."""
    return max(free, key=lambda s: abs(s[0] - away_from[0]) + abs(s[1] - away_from[1]))


# -- maze policies -------------------------------------------------------------------------------
def test_cheese_click_moves_the_cheese_and_the_numbers_match_the_evals(driver, maze_server, policy):
    model, obs = policy
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=3)
    assert driver.find_element(By.ID, "maze").size["width"] > 300
    assert driver.find_element(By.ID, "observation").get_attribute("src").startswith("data:image/png;base64,")
    square = free[len(free) // 2]
    inspect(driver, square, size)
    before = probs(driver, "p")
    target = far_square([s for s in free if s != square], cheese)
    bench.set_mode(driver, "cheese")
    bench.click_square(driver, target, size)
    bench.wait_idle(driver)
    assert bench.maze_squares(bench.page_ascii(driver))[3] == target, "the cheese moved to the clicked square"
    shown = probs(driver, "p")
    assert np.abs(shown - before).max() > 0, "the field at the inspected square changed with the cheese"
    state = exported_state(driver)
    state_matches_page(driver, state)
    assert maze_state.cheese_square(state) == target
    field = vector_field(model, state, obs)
    np.testing.assert_allclose(shown, field.at(square), atol=TOLERANCE)
    np.testing.assert_allclose(probs(driver, "m"), field.at(mouse), atol=TOLERANCE)
    _, value = plain_forward(model, state, obs)
    assert abs(float(text_of(driver, "value")) - value) < TOLERANCE
    assert "error" not in driver.find_element(By.ID, "status").get_attribute("class")
    timings = driver.execute_script("return window.exploreTimings")
    assert {"cheese", "inspect"} <= {entry["what"] for entry in timings}
    assert all(entry["ms"] > 0 for entry in timings)


def test_steering_slider_matches_the_cheese_vector_added_by_hooks(driver, maze_server, policy):
    model, obs = policy
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=3)
    square = far_square([s for s in free if s != mouse], mouse)
    inspect(driver, square, size)
    unsteered = probs(driver, "p")
    slider = driver.find_element(By.ID, "steer-coefficient")
    # 20 key steps of 0.1 from -1: twenty input events while requests are in flight; the page must
    # end on the last value, whatever it merged on the way
    slider.send_keys(*[Keys.ARROW_LEFT] * 20)
    bench.wait_idle(driver)
    assert text_of(driver, "steer-value") == "-3.0"
    assert driver.find_element(By.ID, "steer-on").is_selected()
    steered = probs(driver, "p")
    assert np.abs(steered - unsteered).max() > 0
    state = exported_state(driver)
    state_matches_page(driver, state)
    layer = driver.find_element(By.ID, "layer").get_attribute("value")
    assert layer == info["default_layer"]
    vector = cheese_vector(model, [state], obs, layer)
    with hooked(model, edits={layer: add(vector, -3.0)}):
        field = vector_field(model, state, obs)
        _, value = plain_forward(model, state, obs)
    np.testing.assert_allclose(steered, field.at(square), atol=TOLERANCE)
    np.testing.assert_allclose(probs(driver, "m"), field.at(mouse), atol=TOLERANCE)
    assert abs(float(text_of(driver, "value")) - value) < TOLERANCE
    # the unedited row is the plain field
    np.testing.assert_allclose(probs(driver, "b"), vector_field(model, state, obs).at(square), atol=TOLERANCE)
    steer_requests = [e for e in driver.execute_script("return window.exploreTimings") if e["what"] == "steer"]
    assert 1 <= len(steer_requests) <= 20 and sum(e["merged"] for e in steer_requests) == 20


def test_retargeting_matches_the_eval_edit(driver, maze_server, policy):
    model, obs = policy
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=8)
    square, target = far_square(free, cheese), far_square(free, mouse)
    inspect(driver, square, size)
    for element_id, text in (("retarget-channels", "1, 2"), ("retarget-value", "3"), ("retarget-radius", "1")):
        bench.type_number(driver, element_id, text)  # retargeting is off: nothing is sent yet
    bench.set_mode(driver, "target")
    bench.click_square(driver, target, size)
    assert text_of(driver, "retarget-target") == f"({target[0]}, {target[1]})"
    driver.find_element(By.ID, "retarget-on").click()
    bench.wait_idle(driver)
    assert text_of(driver, "retarget-readout").startswith("channels 1, 2 set to 3.00, 3.00")
    state = exported_state(driver)
    layer = next(entry for entry in info["layers"] if entry["name"] == info["default_layer"])
    values = np.full(2, 3.0, np.float32)
    squares = vector_field(model, state, obs).squares

    def edit(batch: int):
        return {layer["name"]: target_edit([state] * batch, [target] * batch, obs, layer["side"], [1, 2], values, 1)[0]}

    with hooked(model, edits=edit(len(squares))):
        field = vector_field(model, state, obs)
    with hooked(model, edits=edit(1)):
        _, value = plain_forward(model, state, obs)
    np.testing.assert_allclose(probs(driver, "p"), field.at(square), atol=TOLERANCE)
    np.testing.assert_allclose(probs(driver, "m"), field.at(mouse), atol=TOLERANCE)
    assert abs(float(text_of(driver, "value")) - value) < TOLERANCE


def _activation(driver) -> dict:
    canvas = driver.find_element(By.ID, "activation")
    return {"layer": canvas.get_attribute("data-layer"), "channel": int(canvas.get_attribute("data-channel")),
            "min": float(canvas.get_attribute("data-min")), "max": float(canvas.get_attribute("data-max")),
            "grid": np.array(json.loads(canvas.get_attribute("data-grid")))}


def _pixel(driver, square, size: int) -> list[int]:
    """The heatmap's colour inside square (x, y), off the centre (walls carry a dot there)."""
    return driver.execute_script(
        "const c = document.getElementById('activation'), n = arguments[2];"
        "const x = Math.floor((arguments[0] + 0.25) * c.width / n), y = Math.floor((n - 1 - arguments[1] + 0.25) * c.height / n);"
        "return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);", square[0], square[1], size)


def test_layer_and_channel_switch_show_run_with_cache_activations(driver, maze_server, policy):
    model, obs = policy
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=4)
    first = _activation(driver)
    assert (first["layer"], first["channel"]) == (info["default_layer"], 0)
    layer = next(entry for entry in info["layers"] if entry["name"] != info["default_layer"] and entry["channels"] > 5)
    bench.select_by_value(driver, "layer", layer["name"])
    bench.wait_idle(driver)
    bench.type_number(driver, "channel", 5)
    bench.wait_idle(driver)
    shown = _activation(driver)
    assert (shown["layer"], shown["channel"]) == (layer["name"], 5)
    assert (shown["min"], shown["max"]) != (first["min"], first["max"])
    state = exported_state(driver)
    state_matches_page(driver, state)
    with torch.inference_mode():
        _, acts = run_with_cache(model, policy_input(model, [state], obs), [layer["name"]])
    channel_map = acts[layer["name"]][0, 5].float().numpy()
    world_dim = maze_state.layout(state).world_dim
    expected = np.array([[channel_map[activation_square_cell((x, y), size, world_dim, obs, channel_map.shape[-1])]
                          for x in range(size)] for y in range(size)])
    np.testing.assert_allclose(shown["grid"], expected, atol=TOLERANCE, rtol=1e-4)
    assert abs(shown["min"] - expected.min()) < TOLERANCE and abs(shown["max"] - expected.max()) < TOLERANCE
    # the drawing follows the numbers: red at a positive maximum, blue at a negative minimum
    for value, pick in ((expected.max(), np.argmax), (expected.min(), np.argmin)):
        y, x = np.unravel_index(pick(expected), expected.shape)
        red, _, blue, _ = _pixel(driver, (int(x), int(y)), size)
        if value > 0.05 * np.abs(expected).max():
            assert red > blue, (value, red, blue)
        elif value < -0.05 * np.abs(expected).max():
            assert blue > red, (value, red, blue)
    assert text_of(driver, "act-readout").startswith(f"{layer['name']} ch 5")


def test_export_then_load_gives_back_the_same_maze_and_numbers(driver, maze_server, tmp_path):
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=5)
    inspect(driver, free[0], size)
    state = exported_state(driver)
    exported = bench.page_ascii(driver)
    numbers = shown_numbers(driver)
    picture = driver.execute_script("return document.getElementById('maze').toDataURL()")
    png = driver.find_element(By.ID, "download-png").get_attribute("href")
    assert png.startswith("data:image/png;base64,") and base64.b64decode(png.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    def move_cheese():
        bench.set_mode(driver, "cheese")
        _, now_free, _, now_cheese = bench.maze_squares(bench.page_ascii(driver))
        bench.click_square(driver, far_square(now_free, now_cheese), size)
        bench.wait_idle(driver)
        assert bench.page_ascii(driver) != exported

    move_cheese()
    box = driver.find_element(By.ID, "ascii")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(exported)
    driver.find_element(By.ID, "load-ascii").click()
    bench.wait_idle(driver)
    assert bench.page_ascii(driver) == exported
    assert shown_numbers(driver) == numbers
    assert driver.execute_script("return document.getElementById('maze').toDataURL()") == picture
    # and the state bytes, loaded as a file
    move_cheese()
    path = tmp_path / "maze.state"
    path.write_bytes(state)
    driver.find_element(By.ID, "state-file").send_keys(str(path))
    bench.wait_idle(driver)
    assert bench.page_ascii(driver) == exported
    assert shown_numbers(driver) == numbers


def test_server_errors_show_in_the_status_line(driver, maze_server):
    fresh_maze(driver, maze_server.url, seed=6)
    box = driver.find_element(By.ID, "ascii")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys("#M\nC.")
    driver.find_element(By.ID, "load-ascii").click()
    bench.wait_idle(driver)
    status = driver.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class").split()
    assert "odd side" in status.text and "\n" not in status.text.strip()
    assert no_alert(driver)
    # the page still works: the next maze clears the error
    driver.find_element(By.ID, "new-maze").click()
    bench.wait_idle(driver)
    assert "error" not in status.get_attribute("class").split()


def test_wall_and_mouse_clicks_edit_the_maze(driver, maze_server):
    info, size, free, mouse, cheese = fresh_maze(driver, maze_server.url, seed=9)
    square = far_square(free, mouse)

    def char_at(x: int, y: int) -> str:
        rows = bench.page_ascii(driver).splitlines()
        return rows[size - 1 - y][x]

    bench.set_mode(driver, "wall")
    bench.click_square(driver, square, size)
    bench.wait_idle(driver)
    assert char_at(*square) == "#"
    bench.click_square(driver, square, size)
    bench.wait_idle(driver)
    assert char_at(*square) == "."
    bench.click_square(driver, mouse, size)  # refused on the page: the mouse stands there
    status = driver.find_element(By.ID, "status")
    assert "error" in status.get_attribute("class").split() and "mouse" in status.text and no_alert(driver)
    bench.set_mode(driver, "mouse")
    bench.click_square(driver, square, size)
    bench.wait_idle(driver)
    assert char_at(*square) == "M" and char_at(*mouse) == "."
    assert text_of(driver, "mouse-square") == f"mouse ({square[0]}, {square[1]})"
    assert driver.find_element(By.ID, "maze").get_attribute("data-mouse") == f"{square[0]},{square[1]}"


def test_greedy_oracle_episode_follows_the_shortest_path(driver, oracle_server):
    info, size, free, mouse, cheese = fresh_maze(driver, oracle_server.url, seed=7)
    assert info["layers"] == [] and not driver.find_element(By.ID, "steer-panel").is_displayed()
    inner, _ = parse_ascii(bench.page_ascii(driver))
    expected = [list(square) for square in maze_geometry.shortest_path(inner, mouse, cheese)]
    assert len(expected) > 2
    # the scripted policy is sure of the first move of the path, and the page shows it
    step = (expected[1][0] - mouse[0], expected[1][1] - mouse[1])
    move = {(-1, 0): "left", (0, -1): "down", (0, 1): "up", (1, 0): "right"}[step]
    assert text_of(driver, f"m-{move}") == "1.0000"
    assert driver.find_element(By.ID, "greedy").is_selected()
    driver.find_element(By.ID, "play").click()
    bench.wait_idle(driver)
    result = driver.find_element(By.ID, "play-result")
    assert json.loads(result.get_attribute("data-frames")) == expected
    assert result.get_attribute("data-reached") == "cheese"
    assert f"after {len(expected) - 1} steps" in result.text


# -- decision transformers -----------------------------------------------------------------------
def test_dt_page_rtg_slider_changes_the_probabilities(driver, dt_server):
    info = bench.open_page(driver, dt_server.url)
    assert info["kind"] == "dt" and driver.find_element(By.ID, "dt-view").is_displayed()
    assert driver.find_element(By.ID, "dt-image").get_attribute("src").startswith("data:image/png;base64,")
    cells = driver.find_elements(By.CSS_SELECTOR, "#dt-probs td[id^='a-']")
    assert len(cells) >= 3
    shown = lambda cells: {cell.get_attribute("id"): float(cell.get_attribute("data-value")) for cell in cells}
    before = shown(cells)
    assert all(abs(float(cell.text) - before[cell.get_attribute("id")]) < 1e-4 for cell in cells)
    assert abs(sum(before.values()) - 1) < 5e-3
    assert len(driver.find_elements(By.CSS_SELECTOR, "#attn-layer option")) == info["n_layers"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#attn-head option")) == info["n_heads"]
    driver.find_element(By.ID, "rtg").send_keys(Keys.HOME)  # return-to-go from the maximum to 0
    bench.wait_idle(driver)
    assert float(text_of(driver, "rtg-value")) == 0
    after = shown(driver.find_elements(By.CSS_SELECTOR, "#dt-probs td[id^='a-']"))
    assert after.keys() == before.keys()
    assert max(abs(after[k] - before[k]) for k in after) > 1e-6
    assert abs(sum(after.values()) - 1) < 5e-3
    assert no_alert(driver) and "error" not in driver.find_element(By.ID, "status").get_attribute("class")


# -- the benchmark's own path --------------------------------------------------------------------
def test_benchmark_interactions_and_screenshot(driver, maze_server, tmp_path):
    info = bench.open_page(driver, maze_server.url)
    timings = bench.interact(driver, info, interactions=2)
    summary = bench.summarise(timings)
    assert {kind: row["round_trip_ms"]["n"] for kind, row in summary.items()} == {"cheese": 2, "steer": 2, "layer": 2,
                                                                                    "all": 6}
    assert all(row["round_trip_ms"]["p50"] > 0 for row in summary.values())
    assert "p95 ms" in bench.format_report([{"source": "tiny", "summary": summary}])
    size = driver.get_window_size()
    path = bench.screenshot(driver, maze_server.url, str(tmp_path / "explore.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert driver.get_window_size() == size
