"""`shardlab explore`'s JSON API through Starlette's TestClient: the maze endpoints' numbers against
the evals' own functions computed here (vector field, value, activations, steering, retargeting, a
scripted policy whose moves follow from BFS), the maze geometry on a hand-made maze, ASCII/state
round trips, a seeded fuzz of malformed requests (never a 5xx), a tiny decision transformer's
probabilities and attention against a direct forward, and the refusal of unsafe checkpoints.

Squares are (x, y) in inner-maze coordinates, y = 0 at the bottom."""

from __future__ import annotations

import base64
import json
import os
import random
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # newer Starlette would rather use httpx2; httpx is what the extra installs
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient  # noqa: E402

from shardlab.envs import maze_geometry, maze_state  # noqa: E402
from shardlab.envs.maze_build import parse_ascii  # noqa: E402
from shardlab.explore import app as explore  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# A corridor up the left column to the top row and along it to the top-right corner, with a branch
# at (0, 3) to the cheese at (3, 3): the decision square is (0, 3).
MAZE = """
.......
.######
.######
...C###
.######
.######
M######
"""
DECISION = (0, 3)
# the same walls, the cheese on the way to the corner: one path contains the other, no decision square
MAZE_CHEESE_ON_TOP = MAZE.replace("...C###", "....###").replace("\n.......\n", "\n....C..\n", 1)
LAYER = "embedder.block2.res1.resadd_out"
JSON = {"content-type": "application/json"}


def easy_template() -> bytes:
    """An easy-mode (15×15 world) procgen maze state, made here independently of the server's."""
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig

    env = MazeEnv(MazeEnvConfig(num_envs=1, distribution_mode="easy", rand_region=None))
    try:
        return env.get_state(0)
    finally:
        env.close()


def state_of(template: bytes, text: str) -> bytes:
    inner, mouse = parse_ascii(text)
    return maze_state.with_maze(template, inner, mouse)


def ok(response) -> dict:
    assert response.status_code == 200, response.text[:500]
    return response.json()


def refused(response, status: int = 400, needle: str = "") -> str:
    assert response.status_code == status, (response.status_code, response.text[:500])
    message = response.json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    assert needle in message, message
    return message


@pytest.fixture(scope="module")
def template() -> bytes:
    return easy_template()


@pytest.fixture(scope="module")
def maze(tiny_maze_checkpoint):
    """(session, client, an independently loaded copy of the policy) of the tiny maze_ppo_cpu checkpoint."""
    from shardlab.trainers.restore import load_trained

    session = explore.open_source(tiny_maze_checkpoint, None, None)
    return session, TestClient(explore.make_app(session)), load_trained(tiny_maze_checkpoint).model


@pytest.fixture(scope="module")
def oracle():
    session = explore.open_source("oracle:cheese_seeker", None, "maze_ppo_cpu")
    return TestClient(explore.make_app(session))


# -- 1. info, new mazes, import/export ------------------------------------------------------------------
def test_info_new_maze_and_round_trips(maze):
    _, client, _ = maze
    info = ok(client.get("/api/info"))
    assert info["kind"] == "maze" and info["obs"] == "grid" and info["recipe"] == "maze_ppo_cpu"
    assert info["max_size"] == info["world_dim"] == 15 and info["default_layer"] == LAYER
    layers = {entry["name"]: entry["channels"] for entry in info["layers"]}
    assert layers[LAYER] == 32 and "embedder.block1.maxpool_out" in layers

    text = ok(client.post("/api/maze/new", json={"seed": 3, "size": 9}))["ascii"]
    inner, mouse = parse_ascii(text)
    assert inner.shape == (9, 9) and mouse == (0, 0) and (inner == maze_state.CHEESE).sum() == 1
    assert ok(client.post("/api/maze/new", json={"seed": 3, "size": 9}))["ascii"] == text  # seeded
    refused(client.post("/api/maze/new", json={"seed": 3, "size": 17}), needle="at most 15")

    exported = ok(client.post("/api/maze/export", json={"ascii": text}))
    assert exported["ascii"] == text and exported["png"].startswith("data:image/png;base64,")
    state = base64.b64decode(exported["state"])
    assert maze_state.layout(state).maze_dim == 9 and maze_state.mouse_square(state) == (0, 0)
    assert ok(client.post("/api/maze/import", json={"state": exported["state"]}))["ascii"] == text
    assert ok(client.post("/api/maze/import", json={"ascii": "\n  " + text + "\n\n"}))["ascii"] == text
    refused(client.post("/api/maze/import", json={"ascii": text, "state": exported["state"]}), needle="exactly one")
    refused(client.post("/api/maze/import", json={"state": base64.b64encode(state[:100]).decode()}))
    refused(client.post("/api/maze/import", json={"state": "not base64!"}), needle="base64")


# -- 2. numbers, not pictures ---------------------------------------------------------------------------
def test_view_numbers_equal_the_evals_functions(maze, template):
    from shardlab.evals.maze.common import activation_square_cell
    from shardlab.evals.maze.vector_field import observations, vector_field
    from shardlab.models.hooks import run_with_cache
    from shardlab.models.impala import preprocess

    _, client, policy = maze
    view = ok(client.post("/api/maze/view", json={"ascii": MAZE, "channel": 5}))
    state = state_of(template, MAZE)
    field = vector_field(policy, state, obs="grid")
    assert [tuple(s) for s in view["field"]["squares"]] == field.squares
    for square in [(0, 3), (2, 3), (5, 6), (0, 0)]:
        row = view["field"]["squares"].index(list(square))
        np.testing.assert_allclose(view["field"]["probs"][row], field.at(square), rtol=0, atol=1e-6)
    assert np.allclose(np.sum(view["field"]["probs"], 1), 1, atol=1e-5)
    np.testing.assert_allclose(view["at_mouse"]["probs"], field.at((0, 0)), rtol=0, atol=1e-6)
    assert "base_field" not in view and view["mouse"] == [0, 0] and view["cheese"] == [3, 3]

    # the value: a plain forward of the policy on the mouse's observation
    x = preprocess(torch.from_numpy(observations([state], "grid")))
    with torch.inference_mode():
        (logits, value), acts = run_with_cache(policy, x, [LAYER])
    assert view["at_mouse"]["value"] == pytest.approx(float(value[0]), abs=1e-5)
    # the activation grid: channel 5 at the cell holding each square, rows from y = 0
    side = acts[LAYER].shape[-1]
    grid = np.array(view["activation"]["grid"])
    assert grid.shape == (7, 7) and view["activation"]["layer"] == LAYER
    for x_, y_ in [(0, 0), (3, 3), (6, 6), (2, 5)]:
        row, col = activation_square_cell((x_, y_), 7, 15, "grid", side)
        assert grid[y_, x_] == pytest.approx(float(acts[LAYER][0, 5, row, col]), abs=1e-5)
    assert (view["activation"]["min"], view["activation"]["max"]) == pytest.approx((grid.min(), grid.max()))
    assert view["observation"].startswith("data:image/png;base64,") and view["ms"] > 0


def test_steering_and_retargeting_equal_the_evals_edits(maze, template):
    from shardlab.evals.maze.retargeting import target_edit
    from shardlab.evals.maze.steering import cheese_vector
    from shardlab.evals.maze.vector_field import mouse_squares, vector_field
    from shardlab.models.hooks import add, hooked

    _, client, policy = maze
    state = state_of(template, MAZE)
    plain = vector_field(policy, state, obs="grid")
    view = ok(client.post("/api/maze/view", json={"ascii": MAZE, "layer": LAYER, "steer": {"coefficient": -3.5}}))
    vector = cheese_vector(policy, [state], "grid", LAYER)
    with hooked(policy, {LAYER: add(vector, -3.5)}):
        steered = vector_field(policy, state, obs="grid")
    np.testing.assert_allclose(view["field"]["probs"], steered.probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(view["base_field"]["probs"], plain.probs, rtol=0, atol=1e-6)
    assert view["edits"]["steer"]["norm"] == pytest.approx(float(vector.norm()), rel=1e-5)
    assert not np.allclose(steered.probs, plain.probs, atol=1e-7)  # the edit did something

    target, channels = (6, 6), [3, 7]
    view = ok(client.post("/api/maze/view", json={"ascii": MAZE, "retarget": {"target": list(target),
                                                                             "channels": channels, "value": 4.5}}))
    count = len(mouse_squares(maze_state.inner_grid(state)))
    side = view["activation"]["side"]
    edit, _ = target_edit([state] * count, [target] * count, "grid", side, channels, 4.5)
    with hooked(policy, {LAYER: edit}):
        retargeted = vector_field(policy, state, obs="grid")
    np.testing.assert_allclose(view["field"]["probs"], retargeted.probs, rtol=0, atol=1e-6)
    assert view["edits"]["retarget"]["channels"] == channels and view["edits"]["retarget"]["values"] == [4.5, 4.5]
    # without channels and value: the retargeting eval's channels and values, on its channel mazes
    default = ok(client.post("/api/maze/view", json={"ascii": MAZE, "retarget": {"target": [6, 6]}}))["edits"]
    assert len(default["retarget"]["channels"]) == 4 and all(np.isfinite(default["retarget"]["values"]))
    for body, needle in (({"target": [7, 0]}, "outside the 7×7 maze"), ({"target": [1, 0]}, "is a wall"),
                         ({"target": [0, 6], "channels": [32]}, "0..31"),
                         ({"target": [0, 6], "channels": [1, 1]}, "repeat")):
        refused(client.post("/api/maze/view", json={"ascii": MAZE, "retarget": body}), needle=needle)
    refused(client.post("/api/maze/view", json={"ascii": MAZE.replace("C", "."), "steer": {"coefficient": 1}}),
            needle="needs a cheese")
    refused(client.post("/api/maze/view", json={"ascii": MAZE, "layer": "embedder.nope"}), needle="layer")
    refused(client.post("/api/maze/view", json={"ascii": MAZE, "channel": 32}), needle="0..31")


def test_scripted_policy_moves_along_the_shortest_path(oracle):
    view = ok(oracle.post("/api/maze/view", json={"ascii": MAZE}))
    inner, _ = parse_ascii(MAZE)
    cheese = (3, 3)
    moves = {(-1, 0): 0, (0, -1): 1, (0, 1): 2, (1, 0): 3}  # folded: left, down, up, right
    for square, probs in zip(view["field"]["squares"], view["field"]["probs"]):
        path = maze_geometry.shortest_path(inner, tuple(square), cheese)
        step = (path[1][0] - path[0][0], path[1][1] - path[0][1])
        assert int(np.argmax(probs)) == moves[step] and max(probs) > 0.99, square
    assert view["activation"] is None and view["at_mouse"]["value"] == 0.0
    played = ok(oracle.post("/api/maze/play", json={"ascii": MAZE, "greedy": True, "max_steps": 50}))
    assert played["reached"] == "cheese" and played["reward"] == 10.0
    assert [tuple(f) for f in played["frames"]] == maze_geometry.shortest_path(inner, (0, 0), cheese)
    assert played["length"] == 6
    refused(oracle.post("/api/maze/view", json={"ascii": MAZE, "steer": {"coefficient": 1}}), needle="scripted")


# -- 3. editing the maze --------------------------------------------------------------------------------
def test_moving_the_cheese_changes_the_field_and_the_geometry(maze):
    _, client, _ = maze
    before = ok(client.post("/api/maze/view", json={"ascii": MAZE}))
    after = ok(client.post("/api/maze/view", json={"ascii": MAZE_CHEESE_ON_TOP}))
    inner, mouse = parse_ascii(MAZE)
    moved, _ = parse_ascii(MAZE_CHEESE_ON_TOP)
    assert before["decision_square"] == list(DECISION) == list(maze_geometry.decision_square(inner, (3, 3)))
    assert after["cheese"] == [4, 6] and after["decision_square"] is None
    assert maze_geometry.decision_square(moved, (4, 6)) is None
    assert [tuple(s) for s in before["path_to_cheese"]] == maze_geometry.shortest_path(inner, mouse, (3, 3))
    assert [tuple(s) for s in after["path_to_cheese"]] == maze_geometry.shortest_path(moved, mouse, (4, 6))
    assert [tuple(s) for s in before["path_to_corner"]] == maze_geometry.shortest_path(inner, mouse, (6, 6))
    rows_before = dict(zip(map(tuple, before["field"]["squares"]), before["field"]["probs"]))
    rows_after = dict(zip(map(tuple, after["field"]["squares"]), after["field"]["probs"]))
    shared = sorted(set(rows_before) & set(rows_after))
    assert max(np.abs(np.subtract(rows_before[s], rows_after[s])).max() for s in shared) > 1e-7
    # the mouse moved: the paths start from it, the field is the same maze's
    walked = ok(client.post("/api/maze/view", json={"ascii": MAZE.replace(".######\nM######", "M######\n.######")}))
    assert walked["mouse"] == [0, 1] and walked["path_to_cheese"][0] == [0, 1]


# -- 4. fuzz --------------------------------------------------------------------------------------------
JUNK = [None, True, False, 0, 1, -1, 3, 2**31, -2**63, 10**30, 0.5, -1e308, 1e308, "", "x", "#.M", [], [1], [0, 0],
        [[1, 2]], {}, {"coefficient": 1}, {"a": {"b": [None, {"c": []}]}}, "Infinity", "NaN", "\u0000", "é" * 50]
VALID = {
    "/api/maze/new": {"seed": 1, "size": 5},
    "/api/maze/import": {"ascii": MAZE},
    "/api/maze/export": {"ascii": MAZE},
    "/api/maze/view": {"ascii": MAZE, "layer": LAYER, "channel": 1, "steer": {"coefficient": 1.0},
                       "retarget": {"target": [0, 6], "channels": [2], "value": 1.0}},
    "/api/maze/play": {"ascii": MAZE, "greedy": True, "seed": 0, "max_steps": 3},
}


def _mutations(rng: random.Random) -> tuple[str, str, bytes]:
    """(method, path, raw body) of one malformed (or occasionally valid) request."""
    path = rng.choice(list(VALID))
    body = json.loads(json.dumps(VALID[path]))
    kind = rng.randrange(12)
    if kind == 0:
        return "POST", path, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        raw = json.dumps(body)
        return "POST", path, raw[:rng.randrange(len(raw))].encode()
    if kind == 2:
        return "POST", path, json.dumps(rng.choice([[body], 3, "text", None, True, [], 1.5])).encode()
    if kind == 3:
        body[rng.choice(["extra", "Ascii", "__proto__", "steer2"])] = rng.choice(JUNK)
    elif kind == 4:
        body[rng.choice(list(body))] = rng.choice(JUNK)
    elif kind == 5:
        raw = json.dumps(body)
        for number in ("1", "0", "5", "3"):
            raw = raw.replace(f": {number}", ": " + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-0"]), 1)
        return "POST", path, raw.encode()
    elif kind == 6:
        depth = rng.choice([50, 5000, 30000])
        return "POST", path, ("[" * depth + "]" * depth).encode() if rng.random() < 0.5 else \
            ('{"ascii": ' + "[" * depth + "]" * depth + "}").encode()
    elif kind == 7:
        if rng.random() < 0.3:
            return "POST", path, b'{"ascii": "' + b"." * (65 * 1024) + b'"}'
        body["ascii"] = "".join(rng.choice("#.MC\n x") for _ in range(rng.randrange(0, 80)))
    elif kind == 8:
        size = rng.choice([3, 9, 15, 17, 25, 27, 2])
        body["ascii"] = "\n".join("".join(rng.choice("..#") for _ in range(size)) for _ in range(size))
    elif kind == 9 and path == "/api/maze/view":
        body["retarget"] = {"target": [rng.randrange(-3, 10), rng.randrange(-3, 10)],
                            "channels": rng.choice([[0], [-1], [40], [1.0], ["1"], [True], []]),
                            "value": rng.choice([1.0, 1e9, "x", None, True])}
        body["steer"] = rng.choice([{"coefficient": 21}, {"coefficient": -20}, {"coefficient": True},
                                    {"coefficient": [1]}, {"coef": 1}, [], None])
    elif kind == 10:
        return rng.choice(["GET", "PUT", "DELETE", "PATCH"]), path, json.dumps(body).encode()
    elif kind == 11:
        return rng.choice(["GET", "POST"]), rng.choice(["/nope", "/api", "/api/maze", "/api/maze/view/x",
                                                       "/static/../app.py", "/static/secret.txt", "/static/",
                                                       "/api/dt/view", "/static/%2e%2e%2fapp.py",
                                                       "//etc/passwd"]), b"{}"
    return "POST", path, json.dumps(body).encode()


def test_fuzzed_requests_never_get_a_5xx(maze):
    _, client, _ = maze
    rng = random.Random(1234)
    statuses = {}
    for index in range(300):
        method, path, raw = _mutations(rng)
        kind = rng.choice(["application/json"] * 9 + ["text/plain", "application/x-www-form-urlencoded", ""])
        response = client.request(method, path, content=raw, headers={"content-type": kind} if kind else {})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (index, method, path, raw[:200], response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/json"), (index, path)
            message = response.json()["error"]
            assert isinstance(message, str) and message and "\n" not in message and len(message) <= 300
    assert {400, 404, 405, 413, 415} <= set(statuses), statuses
    assert statuses.get(200, 0) > 0, statuses
    # and a valid request still works
    ok(client.post("/api/maze/view", json=VALID["/api/maze/view"]))


def test_static_files_come_from_a_fixed_list(maze):
    _, client, _ = maze
    page = client.get("/")
    if os.path.isfile(os.path.join(explore.STATIC_DIR, "index.html")):
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    else:
        refused(page, 404)
    for path in ("/static/app.py", "/static/..%2fapp.py", "/static/__init__.py", "/static/index.html.bak"):
        refused(client.get(path), 404)
    refused(client.post("/api/info"), 405)
    refused(client.post("/api/maze/new", content=b'{"seed": 1, "size": 5}', headers={"content-type": "text/plain"}),
            415, "application/json")
    ok(client.post("/api/maze/new", content=b'{"seed": 1, "size": 5}',
                   headers={"content-type": "application/json; charset=utf-8"}))
    refused(client.get("/api/maze/view"), 405)


# -- 5. a decision transformer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dt(tmp_path_factory):
    from shardlab import cli
    from shardlab.trainers.restore import load_trained
    from tests.test_dt_trainer import RECIPE, tiny_args, tiny_dataset

    root = tmp_path_factory.mktemp("explore_dt")
    data = tiny_dataset(root / "d.npz")
    assert cli.main(["train", RECIPE, *tiny_args(data, steps=4), "--run-dir", str(root / "run")]) == 0
    checkpoint = str(root / "run" / "checkpoints" / "last.ckpt")
    session = explore.open_source(checkpoint, None, None)
    return TestClient(explore.make_app(session)), load_trained(checkpoint)


def _direct_probs(trained, seed: int, rtg: float, steps: int) -> np.ndarray:
    """The model's action probabilities after ``steps`` greedy steps of level ``seed``, from an
    unpadded window of the episode so far (written here, not through the explorer or play)."""
    from shardlab.envs.minigrid_config import spec_env_config
    from shardlab.envs.minigrid_registry import make_single

    model, spec = trained.model, trained.config.spec
    env = make_single(spec_env_config(spec, num_envs=1, seed=seed))
    obs, _ = env.reset(seed=seed)
    states, actions, returns = [obs], [], [rtg]
    with torch.inference_mode():
        for t in range(steps + 1):
            first = max(0, t + 1 - model.context)
            window = slice(first, t + 1)
            logits = model(states=torch.from_numpy(np.stack(states[window]))[None],
                           actions=torch.tensor([*actions[window], 0][:t + 1 - first])[None],
                           returns_to_go=torch.tensor(returns[window], dtype=torch.float32)[None],
                           timesteps=torch.arange(first, t + 1)[None])[0, -1]
            probs = torch.softmax(logits.float(), -1).numpy()
            if t == steps:
                env.close()
                return probs
            action = int(np.argmax(probs))
            obs, reward, _, _, _ = env.step(action)
            actions.append(action)
            states.append(obs)
            returns.append(returns[-1] - float(reward))
    raise AssertionError("unreachable")


def test_dt_view_matches_a_direct_forward(dt):
    client, trained = dt
    info = ok(client.get("/api/info"))
    assert info["kind"] == "dt" and info["levels"] == "MiniGrid-DoorKey-5x5-v0" and info["n_layers"] == 1
    heads = info["n_heads"]
    for steps in (0, 2, 6):
        view = ok(client.post("/api/dt/view", json={"seed": 7, "rtg": 0.8, "steps": steps}))
        assert view["step"] == steps and not view["ended"]
        assert sum(view["probs"]) == pytest.approx(1.0, abs=1e-5) and len(view["probs"]) == len(view["actions"]) == 7
        np.testing.assert_allclose(view["probs"], _direct_probs(trained, 7, 0.8, steps), rtol=0, atol=2e-5)
        attention = view["attention"]
        weights = np.array(attention["weights"])
        real = min(steps + 1, trained.model.context)
        assert weights.shape == (1, heads, 3 * real, 3 * real) and len(attention["tokens"]) == 3 * real
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
        assert np.allclose(np.triu(weights, 1), 0)  # causal
        assert attention["tokens"][-2] == f"s{steps}" and view["image"].startswith("data:image/png;base64,")
    played = ok(client.post("/api/dt/play", json={"seed": 7, "rtg": 0.8, "max_steps": 5}))
    assert played["length"] <= 5 and len(played["frames"]) == played["length"] + 1
    assert len(played["actions"]) == played["length"]
    refused(client.post("/api/dt/view", json={"seed": 7, "rtg": 0.8, "steps": 10**4}), needle="steps")
    refused(client.post("/api/dt/view", json={"seed": -1, "rtg": 0.8}))
    refused(client.post("/api/dt/view", content=b'{"seed": 1, "rtg": NaN}', headers=JSON), needle="NaN")
    refused(client.post("/api/dt/view", json={"seed": 1, "rtg": True}))
    refused(client.post("/api/maze/view", json={"ascii": MAZE}), 404, "decision transformer")


# -- 6. what open_source refuses -------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs os.mkdir(path): what a malicious checkpoint would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_open_source_refuses_unsafe_and_wrong_sources(tmp_path, tiny_maze_checkpoint):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "shardlab": {}, "payload": _Payload(str(marker))}, evil)
    cases = [((str(evil), None, None), "not a torch file"),
             ((str(tmp_path / "missing.ckpt"), None, None), "does not exist"),
             ((str(tmp_path), None, None), "is a folder"),
             (("oracle:cheese_seeker", None, None), "--recipe"),
             (("oracle:cheese_seeker", None, "maze_ppo_cpu_rgb"), "grid"),
             (("oracle:nope", None, "maze_ppo_cpu"), "unknown scripted policy"),
             ((None, str(evil), None), "--recipe"),
             ((None, None, None), "nothing to explore"),
             ((tiny_maze_checkpoint, None, "maze_ppo_cpu"), "carries its own config")]
    for args, needle in cases:
        with pytest.raises(explore.ExploreError) as caught:
            explore.open_source(*args)
        message = str(caught.value)
        assert needle in message and "\n" not in message, (args, message)
    assert not marker.exists()


def test_serve_refuses_a_busy_port_in_one_line(maze, capsys):
    import socket

    session, _, _ = maze
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert explore.serve(session, "127.0.0.1", taken.getsockname()[1], quiet=True) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot listen on 127.0.0.1" in err and "\n" not in err
    assert explore.url_of("0.0.0.0", 8765) == "http://127.0.0.1:8765/" and explore.url_of("::", 1) == "http://[::1]:1/"


@pytest.mark.parametrize("argv,needle", [
    (["explore", "no/such.ckpt"], "does not exist"),
    (["explore", "oracle:cheese_seeker"], "--recipe"),
    (["explore", "x.ckpt", "--port", "99999"], "0..65535"),
])
def test_explore_command_refuses_bad_input_with_one_line(argv, needle, capsys):
    """`shardlab explore` on a missing file, an oracle without its recipe or a bad port: exit 2, one line."""
    from shardlab import cli

    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines


def test_published_weights_file_opens_and_its_field_is_the_networks(tmp_path):
    """A weights file in procgen-tools' published format (written here), with --recipe: the view's
    probabilities at the mouse are the vector field of the same weights loaded as `shardlab eval` does."""
    from test_api import published_state_dict

    from shardlab.evals.maze.vector_field import vector_field
    from shardlab.trainers.restore import load_weights

    path = tmp_path / "maze_policy.pth"
    torch.save({"model_state_dict": published_state_dict(scale=1)}, path)
    session = explore.open_source(None, str(path), "maze_ppo_cpu_rgb")
    client = TestClient(explore.make_app(session))
    text = "..C\n.#.\nM.."
    view = client.post("/api/maze/view", json={"ascii": text})
    assert view.status_code == 200, view.text
    assert client.get("/api/info").json()["obs"] == "rgb"
    model = load_weights(str(path), os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "train", "maze_ppo_cpu_rgb.yaml")).model
    state = session.state_of(text)
    expected = vector_field(model, state, obs="rgb").at((0, 0))
    np.testing.assert_allclose(view.json()["at_mouse"]["probs"], expected, atol=1e-4)
