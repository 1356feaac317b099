// shardlab explore: the page over one loaded checkpoint (maze policy or decision transformer).
//
// Everything the server computes comes from the JSON API of shardlab/explore/app.py; this file only
// edits the maze (as ASCII, the client holds it and sends it whole with every request), draws, and
// keeps the page responsive: live controls (sliders, channel, clicks) go through a Live queue that
// keeps at most one request in flight and always ends on the latest value. Every interaction pushes
// {what, ms} onto window.exploreTimings, ms from the input event to after the repaint, and
// document.body.dataset.busy is "1" while anything is in flight or animating, "0" after the repaint.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const MOVES = ["left", "down", "up", "right", "noop"];
  const COLOURS = {
    // the evals' figures' colours (evals/maze/render.py): light open squares, dark walls, navy arrows
    open: "#f3efe4", wall: "#2b2b2b", grid: "rgba(0,0,0,0.06)", cheese: "#e8890c", corner: "#9467bd",
    decision: "#d62728", inspect: "#00a3a3", target: "#d6246e", played: "#2ca02c", arrow: "#1f4e9c",
    base: "rgba(120,126,134,0.8)", mouse: "#8a8f98", cheeseFill: "#f5c518",
  };

  window.exploreTimings = [];
  const page = {
    info: null,
    ascii: "",          // the maze as the client holds it (what every request sends)
    view: null,         // the last /api/maze/view answer drawn
    inspected: null,    // [x, y] or null
    target: null,       // [x, y] or null (retargeting)
    mode: "cheese",
    asciiDirty: false,  // the user typed in the ASCII box: stop mirroring the maze into it
    play: null,         // {frames, shown} while a played episode is drawn
    playTimer: null,
    dt: null,           // the last /api/dt/view answer
    dtPlayTimer: null,
  };

  // -- busy flag and timings ---------------------------------------------------------------------
  const busy = { tasks: 0 };
  function setBusy(delta) {
    busy.tasks = Math.max(0, busy.tasks + delta);
    document.body.dataset.busy = busy.tasks > 0 ? "1" : "0";
  }
  // resolves after the frame that shows what was just drawn has been painted
  function afterPaint() {
    return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
  }
  function record(what, t0, extra) {
    const ms = performance.now() - t0;
    const entry = Object.assign({ what: what, ms: ms }, extra || {});
    window.exploreTimings.push(entry);
    const server = entry.server_ms != null ? ` (server ${entry.server_ms.toFixed(0)} ms)` : "";
    $("timing").textContent = `Last: ${what} ${ms.toFixed(0)} ms${server}.`;
    return entry;
  }

  // -- status line -------------------------------------------------------------------------------
  function showError(error) {
    const status = $("status");
    status.className = "status error";
    status.textContent = error && error.message ? error.message : String(error);
  }
  function showStatus(text) {
    const status = $("status");
    status.className = "status";
    status.textContent = text;
  }
  // a request that takes a while says so (a big network on a 25×25 maze takes seconds); the
  // answer or an error replaces the line
  function slowNote(what) {
    return setTimeout(() => {
      const status = $("status");
      status.className = "status busy";
      status.textContent = `computing ${what}…`;
    }, 400);
  }

  // -- requests ----------------------------------------------------------------------------------
  class ServerError extends Error {}
  async function request(method, path, body) {
    let response;
    try {
      response = await fetch(path, method === "GET" ? {} : {
        method: method, headers: { "content-type": "application/json" }, body: JSON.stringify(body),
      });
    } catch (error) {
      throw new ServerError(`cannot reach the explore server (${path}): is it still running?`);
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : `${path}: HTTP ${response.status}`;
      throw new ServerError(message);
    }
    if (data === null) throw new ServerError(`${path}: the server's answer is not JSON`);
    return data;
  }
  const post = (path, body) => request("POST", path, body);

  // One request in flight at a time; input that arrives meanwhile is merged into one follow-up
  // request built from the page as it is when that request is sent, so a dragged slider costs at
  // most one stale request and the last answer drawn is always for the latest value. A merged
  // request's round trip is timed from the earliest input it serves.
  class Live {
    constructor(path, body, apply, failed) {
      this.path = path; this.body = body; this.apply = apply; this.failed = failed || (() => {});
      this.pending = null; this.inFlight = false;
    }
    request(what, t0) {
      if (this.pending) this.pending.count += 1;
      else this.pending = { what: what, t0: t0, count: 1 };
      this.pending.what = what;
      if (!this.inFlight) this.pump();
    }
    async pump() {
      this.inFlight = true;
      setBusy(+1);
      try {
        while (this.pending) {
          const job = this.pending;
          this.pending = null;
          let body;
          try {
            body = this.body();
          } catch (error) {  // the page holds something the request cannot carry: say so, send nothing
            showError(error);
            continue;
          }
          const slow = slowNote(this.path.split("/").slice(-2).join(" "));
          try {
            const sent = performance.now();
            const answer = await post(this.path, body);
            clearTimeout(slow);
            const received = performance.now();
            const note = this.apply(answer, this.pending !== null);
            const drawn = performance.now();
            await afterPaint();
            // where the round trip went: waiting for the previous request, the request itself
            // (server compute, transfer, JSON parsing), drawing, and waiting for the paint
            const entry = record(job.what, job.t0, {
              server_ms: answer.ms, merged: job.count, queue_ms: sent - job.t0, fetch_ms: received - sent,
              draw_ms: drawn - received, paint_ms: performance.now() - drawn,
            });
            if (note !== undefined && !this.pending) {
              showStatus(`${note} · round trip ${entry.ms.toFixed(0)} ms` +
                         (answer.ms != null ? ` (server ${answer.ms.toFixed(0)} ms)` : ""));
            }
          } catch (error) {
            clearTimeout(slow);
            showError(error);
            this.failed();
          }
        }
      } finally {
        this.inFlight = false;
        setBusy(-1);
      }
    }
  }

  // a one-off interaction: busy while it runs, errors into the status line, timed to the repaint
  async function task(what, t0, work) {
    setBusy(+1);
    const slow = slowNote(what);
    try {
      const note = await work();
      clearTimeout(slow);
      await afterPaint();
      const entry = record(what, t0);
      if (typeof note === "string") showStatus(`${note} · ${entry.ms.toFixed(0)} ms`);
    } catch (error) {
      clearTimeout(slow);
      showError(error);
    } finally {
      setBusy(-1);
    }
  }

  // -- formatting --------------------------------------------------------------------------------
  function fmt(x, digits) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "—";
    const s = x.toFixed(digits === undefined ? 4 : digits);
    return /^-0\.?0*$/.test(s) ? s.slice(1) : s;
  }
  const sq = (s) => `(${s[0]}, ${s[1]})`;
  const sameSquare = (a, b) => a && b && a[0] === b[0] && a[1] === b[1];

  // ============================================================================================
  // maze policies
  // ============================================================================================
  function asciiRows(text) {
    return text.trim().split(/\r?\n/).map((r) => r.trim()).filter((r) => r.length > 0);
  }
  // the character at square (x, y) (y = 0 is the bottom row, written last)
  function charAt(rows, x, y) { return rows[rows.length - 1 - y][x]; }
  function withChar(rows, x, y, c) {
    const r = rows.length - 1 - y;
    const out = rows.slice();
    out[r] = out[r].slice(0, x) + c + out[r].slice(x + 1);
    return out;
  }
  function findChar(rows, c) {
    for (let r = 0; r < rows.length; r++) {
      const x = rows[r].indexOf(c);
      if (x >= 0) return [x, rows.length - 1 - r];
    }
    return null;
  }

  function setAscii(text, fromUser) {
    page.ascii = text.trim();
    if (!page.asciiDirty || fromUser) {
      $("ascii").value = page.ascii;
      page.asciiDirty = false;
    }
  }

  // the channel list typed in (null: leave the choice to the server, which takes the eval's)
  function retargetChannels() {
    const text = $("retarget-channels").value.trim();
    if (!text) return null;
    const parts = text.split(/[\s,]+/).filter((p) => p.length);
    const bad = parts.filter((p) => !/^\d+$/.test(p));
    if (bad.length) throw new Error(`retarget channels must be whole numbers >= 0, got ${bad.join(" ")}`);
    return parts.map(Number);
  }

  // the edits (steer / retarget) as the API wants them, shared by view and play
  function edits() {
    const out = {};
    if (!hasLayers()) return out;
    if ($("steer-on").checked) out.steer = { coefficient: Number($("steer-coefficient").value) };
    if ($("retarget-on").checked && page.target) {
      const retarget = { target: page.target.slice(), radius: intInput("retarget-radius", 0, 3, "radius") };
      const channels = retargetChannels();
      if (channels !== null) retarget.channels = channels;
      const value = $("retarget-value").value.trim();
      if (value !== "") retarget.value = Number(value);
      out.retarget = retarget;
    }
    return out;
  }

  const hasLayers = () => Boolean(page.info && page.info.layers && page.info.layers.length);

  function channelValue() {
    const text = $("channel").value.trim();
    if (!/^\d+$/.test(text)) throw new Error(`channel must be a whole number >= 0, got "${text}"`);
    return Number(text);
  }

  function viewBody() {
    const body = { ascii: page.ascii };
    if (hasLayers()) Object.assign(body, { layer: $("layer").value, channel: channelValue() });
    return Object.assign(body, edits());
  }

  function applyView(view, morePending) {
    page.view = view;
    if (!morePending) setAscii(view.ascii, false);
    page.play = null;
    drawMaze();
    updateInspect();
    $("observation").src = view.observation;
    drawActivation();
    const canvas = $("maze");  // the squares drawn, for scripts and tests reading the page
    canvas.dataset.size = String(view.size);
    canvas.dataset.mouse = view.mouse.join(",");
    canvas.dataset.cheese = view.cheese ? view.cheese.join(",") : "";
    canvas.dataset.decision = view.decision_square ? view.decision_square.join(",") : "";
    const cheese = view.cheese ? sq(view.cheese) : "none";
    $("maze-caption").textContent = `${view.size}×${view.size} · mouse ${sq(view.mouse)} · cheese ${cheese}` +
      (view.decision_square ? ` · decision square ${sq(view.decision_square)}` : " · no decision square");
    showEdits(view.edits || {});
    const edited = view.base_field ? " (edited)" : "";
    return `${view.size}×${view.size} maze${edited}`;
  }

  // a refused edit is undone, so the next request starts from the last maze the server accepted
  // what the server applied: the steering vector's norm, the retargeting channels and values
  function showEdits(shown) {
    const steer = shown.steer, retarget = shown.retarget;
    $("steer-readout").textContent = steer
      ? `cheese vector norm ${fmt(steer.norm, 3)}, × ${fmt(steer.coefficient, 1)}` : "";
    $("retarget-readout").textContent = retarget
      ? `channels ${retarget.channels.join(", ")} set to ${retarget.values.map((v) => fmt(v, 2)).join(", ")} ` +
        `at ${retarget.cells.length} cell${retarget.cells.length === 1 ? "" : "s"}` : "";
  }

  const mazeLive = new Live("/api/maze/view", viewBody, applyView, () => {
    if (page.view && !mazeLive.pending) setAscii(page.view.ascii, false);
  });

  // -- drawing the maze --------------------------------------------------------------------------
  function fitCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const height = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    return [width, height];
  }

  // as evals.maze.render.plot_vector_field draws them: an arrow 0.8 squares long at probability 1,
  // 0.07 squares wide, and a dot whose area grows with the no-op probability
  function drawArrow(ctx, cx, cy, dx, dy, cell, colour) {
    const norm = Math.hypot(dx, dy), length = norm * cell * 0.8;
    if (length < 1) return;
    const ux = dx / norm, uy = -dy / norm;  // canvas y points down
    const width = Math.max(1, cell * 0.07), head = Math.min(length * 0.6, width * 3.5);
    const ex = cx + ux * length, ey = cy + uy * length;
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = width; ctx.lineCap = "butt";
    ctx.beginPath(); ctx.moveTo(cx, cy); ctx.lineTo(ex - ux * head * 0.9, ey - uy * head * 0.9); ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(ex, ey);
    ctx.lineTo(ex - ux * head - uy * head * 0.5, ey - uy * head + ux * head * 0.5);
    ctx.lineTo(ex - ux * head + uy * head * 0.5, ey - uy * head - ux * head * 0.5);
    ctx.closePath(); ctx.fill();
  }

  function drawField(ctx, field, centre, cell, colour) {
    ctx.fillStyle = colour;
    ctx.globalAlpha = 0.45;
    for (let k = 0; k < field.squares.length; k++) {
      const noop = Math.max(0, field.probs[k][4]);
      if (noop <= 0.02) continue;  // too small to see
      const [cx, cy] = centre(field.squares[k]);
      ctx.beginPath(); ctx.arc(cx, cy, Math.sqrt(noop) * cell * 0.35, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
    for (let k = 0; k < field.squares.length; k++) {
      const [cx, cy] = centre(field.squares[k]);
      const p = field.probs[k];
      drawArrow(ctx, cx, cy, p[3] - p[0], p[2] - p[1], cell, colour);
    }
  }

  function drawPath(ctx, path, centre, colour, width, shift) {
    if (!path || path.length < 2) return;
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.lineJoin = "round"; ctx.lineCap = "round";
    ctx.beginPath();
    path.forEach((s, i) => {
      const [cx, cy] = centre(s);
      if (i === 0) ctx.moveTo(cx + shift, cy + shift); else ctx.lineTo(cx + shift, cy + shift);
    });
    ctx.stroke();
  }

  // outlines of marked squares: the decision square dashed around the whole square, the inspected
  // square solid inside it (both can be the same square), the target a circle
  function ring(ctx, square, centre, cell, colour, kind) {
    const [cx, cy] = centre(square);
    ctx.strokeStyle = colour; ctx.lineWidth = Math.max(2, cell * 0.07);
    ctx.setLineDash(kind === "dashed" ? [cell * 0.12, cell * 0.08] : []);
    ctx.beginPath();
    if (kind === "circle") ctx.arc(cx, cy, cell * 0.4, 0, 2 * Math.PI);
    else {
      const half = kind === "dashed" ? cell * 0.46 : cell * 0.36;
      ctx.rect(cx - half, cy - half, 2 * half, 2 * half);
    }
    ctx.stroke();
    ctx.setLineDash([]);
  }

  function drawMouse(ctx, cx, cy, cell) {
    const r = cell * 0.28;
    ctx.globalAlpha = 0.9;
    ctx.fillStyle = COLOURS.mouse;
    ctx.beginPath(); ctx.arc(cx - r * 0.75, cy - r * 0.75, r * 0.45, 0, 2 * Math.PI); ctx.fill();  // ears
    ctx.beginPath(); ctx.arc(cx + r * 0.75, cy - r * 0.75, r * 0.45, 0, 2 * Math.PI); ctx.fill();
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.fill();
    ctx.globalAlpha = 1;
  }

  function drawCheese(ctx, cx, cy, cell) {
    const r = cell * 0.32;
    ctx.fillStyle = COLOURS.cheeseFill; ctx.strokeStyle = "#b8860b"; ctx.lineWidth = Math.max(1, cell * 0.03);
    ctx.beginPath(); ctx.moveTo(cx - r, cy + r * 0.7); ctx.lineTo(cx + r, cy + r * 0.7); ctx.lineTo(cx + r, cy - r * 0.2);
    ctx.lineTo(cx - r, cy - r * 0.8); ctx.closePath(); ctx.fill(); ctx.stroke();
    ctx.fillStyle = "#d9a400";
    ctx.beginPath(); ctx.arc(cx + r * 0.3, cy + r * 0.2, r * 0.16, 0, 2 * Math.PI); ctx.fill();
    ctx.beginPath(); ctx.arc(cx - r * 0.35, cy + r * 0.35, r * 0.11, 0, 2 * Math.PI); ctx.fill();
  }

  function drawMaze() {
    const view = page.view;
    const canvas = $("maze");
    const [width] = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    if (!view) return;
    const rows = asciiRows(view.ascii);
    const n = rows.length, cell = width / n;
    const centre = (s) => [(s[0] + 0.5) * cell, (n - 0.5 - s[1]) * cell];
    ctx.clearRect(0, 0, width, width);
    for (let r = 0; r < n; r++) {
      for (let x = 0; x < n; x++) {
        ctx.fillStyle = rows[r][x] === "#" ? COLOURS.wall : COLOURS.open;
        ctx.fillRect(Math.floor(x * cell), Math.floor(r * cell), Math.ceil(cell) + 1, Math.ceil(cell) + 1);
      }
    }
    ctx.strokeStyle = COLOURS.grid; ctx.lineWidth = 1;
    ctx.beginPath();
    for (let i = 1; i < n; i++) {
      ctx.moveTo(Math.round(i * cell) + 0.5, 0); ctx.lineTo(Math.round(i * cell) + 0.5, width);
      ctx.moveTo(0, Math.round(i * cell) + 0.5); ctx.lineTo(width, Math.round(i * cell) + 0.5);
    }
    ctx.stroke();
    ctx.globalAlpha = 0.45;
    drawPath(ctx, view.path_to_corner, centre, COLOURS.corner, cell * 0.22, cell * 0.07);
    drawPath(ctx, view.path_to_cheese, centre, COLOURS.cheese, cell * 0.22, -cell * 0.07);
    ctx.globalAlpha = 1;
    if (view.decision_square) ring(ctx, view.decision_square, centre, cell, COLOURS.decision, "dashed");
    if (view.cheese) drawCheese(ctx, ...centre(view.cheese), cell);
    const mouse = page.play ? page.play.frames[page.play.shown] : view.mouse;
    if (page.play) {
      ctx.globalAlpha = 0.8;
      drawPath(ctx, page.play.frames.slice(0, page.play.shown + 1), centre, COLOURS.played, cell * 0.14, 0);
      ctx.globalAlpha = 1;
    }
    drawMouse(ctx, ...centre(mouse), cell);
    if (view.base_field) drawField(ctx, view.base_field, centre, cell, COLOURS.base);
    drawField(ctx, view.field, centre, cell, COLOURS.arrow);
    if (page.target) ring(ctx, page.target, centre, cell, COLOURS.target, "circle");
    if (page.inspected) ring(ctx, page.inspected, centre, cell, COLOURS.inspect, "solid");
  }

  // -- inspect table -----------------------------------------------------------------------------
  function probsAt(field, square) {
    if (!field || !square) return null;
    for (let k = 0; k < field.squares.length; k++) {
      if (sameSquare(field.squares[k], square)) return field.probs[k];
    }
    return null;
  }

  function fillRow(prefix, probs, square) {
    let best = -1;
    if (probs) best = probs.indexOf(Math.max.apply(null, probs));
    MOVES.forEach((move, i) => {
      const cell = $(`${prefix}-${move}`);
      cell.textContent = probs ? fmt(probs[i]) : "—";
      cell.classList.toggle("best", i === best);
      if (square) cell.dataset.square = `${square[0]},${square[1]}`; else delete cell.dataset.square;
    });
  }

  function updateInspect() {
    const view = page.view;
    if (!view) return;
    const square = page.inspected;
    const probs = probsAt(view.field, square);
    let label = "square —";
    if (square) {
      label = `square ${sq(square)}`;
      if (!probs) label += sameSquare(square, view.cheese) ? " (cheese)" : " (wall)";
    }
    $("inspect-square").textContent = label;
    fillRow("p", probs, square);
    const base = view.base_field ? probsAt(view.base_field, square) : null;
    $("inspect-base").hidden = !view.base_field;
    fillRow("b", base, view.base_field ? square : null);
    $("mouse-square").textContent = `mouse ${sq(view.mouse)}`;
    fillRow("m", view.at_mouse.probs, view.mouse);
    $("value").textContent = fmt(view.at_mouse.value);
    updateActivationReadout(null);
  }

  // -- activation heatmap ------------------------------------------------------------------------
  // blue (negative) – white (0) – red (positive), t in [-1, 1]
  function diverging(t) {
    const a = Math.min(1, Math.abs(t));
    const [r, g, b] = t < 0 ? [33, 102, 172] : [178, 24, 43];
    const mix = (c) => Math.round(255 + (c - 255) * a);
    return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
  }

  function activationScale(act) {
    return Math.max(Math.abs(act.min), Math.abs(act.max)) || 1;
  }

  function drawActivation() {
    const view = page.view;
    const canvas = $("activation");
    if (!view || !view.activation) return;
    const act = view.activation, grid = act.grid, n = grid.length;
    $("act-caption").textContent = `${act.layer}, channel ${act.channel}` + (act.side ? ` (${act.side}×${act.side} cells)` : "");
    const [width] = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    const cell = width / n, scale = activationScale(act);
    const rows = asciiRows(view.ascii);
    for (let y = 0; y < n; y++) {
      for (let x = 0; x < n; x++) {
        ctx.fillStyle = diverging(grid[y][x] / scale);
        ctx.fillRect(Math.floor(x * cell), Math.floor((n - 1 - y) * cell), Math.ceil(cell) + 1, Math.ceil(cell) + 1);
        if (charAt(rows, x, y) === "#") {  // walls: a small dot, so the heatmap stays readable
          ctx.fillStyle = "rgba(0,0,0,0.35)";
          ctx.fillRect((x + 0.5) * cell - 1.5, (n - 0.5 - y) * cell - 1.5, 3, 3);
        }
      }
    }
    const outline = (s, colour) => {
      if (!s) return;
      ctx.strokeStyle = colour; ctx.lineWidth = 2.5;
      ctx.strokeRect(s[0] * cell + 1.5, (n - 1 - s[1]) * cell + 1.5, cell - 3, cell - 3);
    };
    outline(view.mouse, "#ffffff");
    outline(view.cheese, "#f5c518");
    outline(page.inspected, COLOURS.inspect);
    canvas.dataset.min = String(act.min);
    canvas.dataset.max = String(act.max);
    canvas.dataset.layer = act.layer;
    canvas.dataset.channel = String(act.channel);
    canvas.dataset.grid = JSON.stringify(grid);
    drawColorbar(scale);
    $("act-min").textContent = fmt(-scale, 3);
    $("act-zero").textContent = "0";
    $("act-max").textContent = fmt(scale, 3);
  }

  function drawColorbar(scale) {
    const canvas = $("colorbar");
    const [width, height] = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    for (let i = 0; i < width; i++) {
      ctx.fillStyle = diverging((2 * i) / (width - 1) - 1);
      ctx.fillRect(i, 0, 1, height);
    }
    canvas.title = `−${fmt(scale, 3)} … ${fmt(scale, 3)}`;
  }

  function updateActivationReadout(hovered) {
    const view = page.view;
    if (!view || !view.activation) return;
    const act = view.activation;
    const square = hovered || page.inspected;
    let text = `${act.layer} ch ${act.channel} · min ${fmt(act.min)} · max ${fmt(act.max)}`;
    const canvas = $("activation");
    if (square && square[1] < act.grid.length && square[0] < act.grid.length) {
      const value = act.grid[square[1]][square[0]];
      text += ` · at ${sq(square)} ${fmt(value)}`;
      if (!hovered) canvas.dataset.atInspected = String(value);
    } else if (!hovered) {
      delete canvas.dataset.atInspected;
    }
    $("act-readout").textContent = text;
  }

  // -- clicks on the maze ------------------------------------------------------------------------
  function squareOf(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    const n = page.view ? asciiRows(page.view.ascii).length : 0;
    if (!n) return null;
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * n);
    const row = Math.floor(((event.clientY - rect.top) / rect.height) * n);
    if (x < 0 || x >= n || row < 0 || row >= n) return null;
    return [x, n - 1 - row];
  }

  function onMazeClick(event) {
    const t0 = performance.now();
    const square = squareOf($("maze"), event);
    if (!square || !page.ascii) return;
    const rows = asciiRows(page.ascii);
    if (rows.length !== asciiRows(page.view.ascii).length) return;  // a new maze is on its way
    const [x, y] = square;
    const here = charAt(rows, x, y);
    const mode = page.mode;
    if (mode === "inspect") {
      page.inspected = square;
      drawMaze(); updateInspect(); drawActivation();
      setBusy(+1);
      afterPaint().then(() => { record("inspect", t0); setBusy(-1); });
      return;
    }
    if (mode === "target") {
      if (here === "#") { showError(`square ${sq(square)} is a wall; the retarget target must be an open square`); return; }
      page.target = square;
      $("retarget-target").textContent = sq(square);
      if ($("retarget-on").checked) { mazeLive.request("target", t0); return; }
      drawMaze();
      showStatus(`target ${sq(square)}: tick "retarget" and list channels to apply the edit`);
      return;
    }
    let next = null;
    if (mode === "cheese" || mode === "mouse") {
      const mine = mode === "cheese" ? "C" : "M", other = mode === "cheese" ? "M" : "C";
      if (here === "#") { showError(`square ${sq(square)} is a wall; put the ${mode} on an open square`); return; }
      if (here === other) { showError(`square ${sq(square)} holds the ${mode === "cheese" ? "mouse" : "cheese"}; pick another square`); return; }
      if (here === mine) return;
      next = rows;
      const old = findChar(rows, mine);
      if (old) next = withChar(next, old[0], old[1], ".");
      next = withChar(next, x, y, mine);
    } else if (mode === "wall") {
      if (here === "M" || here === "C") {
        showError(`square ${sq(square)} holds the ${here === "M" ? "mouse" : "cheese"}; move it before building a wall there`);
        return;
      }
      if (sameSquare(square, page.target) && here === ".") { page.target = null; $("retarget-target").textContent = "click a square in target mode"; }
      next = withChar(rows, x, y, here === "#" ? "." : "#");
    }
    if (next) {
      setAscii(next.join("\n"), false);
      mazeLive.request(mode, t0);
    }
  }

  function setMode(mode) {
    page.mode = mode;
    document.body.dataset.mode = mode;
    const input = document.querySelector(`#mode input[value="${mode}"]`);
    if (input && !input.checked) input.checked = true;
  }

  // -- maze actions ------------------------------------------------------------------------------
  function intInput(id, low, high, name) {
    const text = $(id).value.trim();
    const value = Number(text);
    if (!/^-?\d+$/.test(text) || value < low || (high !== null && value > high)) {
      throw new Error(`${name} must be a whole number from ${low}${high !== null ? ` to ${high}` : " up"}, got "${text}"`);
    }
    return value;
  }

  function newMaze(t0) {
    return task("new", t0, async () => {
      const max = page.info.max_size;
      const seed = intInput("seed", 0, null, "seed");
      const size = intInput("size", 3, max, "size");
      if (size % 2 === 0) throw new Error(`size must be odd (3, 5, …, ${max}), got ${size}`);
      const answer = await post("/api/maze/new", { seed: seed, size: size });
      page.asciiDirty = false;
      resetSquares();
      setAscii(answer.ascii, true);
      mazeLive.request("new", t0);
      return undefined;
    });
  }

  function resetSquares() {
    page.inspected = null;
    page.target = null;
    $("retarget-target").textContent = "click a square in target mode";
  }

  function importMaze(what, t0, body) {
    return task(what, t0, async () => {
      const answer = await post("/api/maze/import", body);
      const before = asciiRows(page.ascii).length;
      setAscii(answer.ascii, true);
      if (asciiRows(answer.ascii).length !== before) resetSquares();
      $("size").value = String(asciiRows(answer.ascii).length);
      mazeLive.request(what, t0);
      return undefined;
    });
  }

  function exportMaze(t0) {
    return task("export", t0, async () => {
      const answer = await post("/api/maze/export", { ascii: page.ascii });
      setAscii(answer.ascii, true);
      $("download-png").href = answer.png;
      $("download-state").href = `data:application/octet-stream;base64,${answer.state}`;
      $("downloads").hidden = false;
      $("downloads").dataset.state = answer.state;
      return "exported: the ASCII box holds the maze; download the PNG or the procgen state below it";
    });
  }

  function playEpisode(t0) {
    stopPlay();
    setBusy(+1);
    (async () => {
      try {
        const body = Object.assign({
          ascii: page.ascii, greedy: $("greedy").checked,
          seed: intInput("play-seed", 0, null, "play seed"), max_steps: intInput("max-steps", 1, 500, "steps"),
        }, edits());
        const slow = slowNote("the episode");
        let answer;
        try { answer = await post("/api/maze/play", body); } finally { clearTimeout(slow); }
        const result = $("play-result");
        result.dataset.frames = JSON.stringify(answer.frames);
        result.dataset.reached = answer.reached;
        result.textContent = `playing… ${answer.frames.length - 1} steps`;
        page.play = { frames: answer.frames, shown: 0 };
        drawMaze();
        await afterPaint();
        record("play", t0);
        const delay = Math.max(15, Math.min(120, 2500 / Math.max(1, answer.frames.length)));  // at most ~2.5 s
        await new Promise((resolve) => {
          page.playTimer = setInterval(() => {
            if (!page.play) { clearInterval(page.playTimer); page.playTimer = null; resolve(); return; }
            if (page.play.shown >= page.play.frames.length - 1) {
              clearInterval(page.playTimer); page.playTimer = null; resolve(); return;
            }
            page.play.shown += 1;
            drawMaze();
          }, delay);
          page.playResolve = resolve;
        });
        await afterPaint();
        result.textContent = `${body.greedy ? "greedy" : "sampled"}: ` +
          `reached ${answer.reached} after ${answer.length} steps, reward ${fmt(answer.reward, 2)}`;
        showStatus(`episode played: reached ${answer.reached} in ${answer.length} steps`);
      } catch (error) {
        showError(error);
      } finally {
        setBusy(-1);
      }
    })();
  }

  function stopPlay() {
    if (page.playTimer) { clearInterval(page.playTimer); page.playTimer = null; }
    if (page.playResolve) { page.playResolve(); page.playResolve = null; }
  }

  function readFileBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const bytes = new Uint8Array(reader.result);
        let binary = "";
        for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
        resolve(btoa(binary));
      };
      reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
      reader.readAsArrayBuffer(file);
    });
  }

  function setupMaze(info) {
    const layer = $("layer");
    layer.innerHTML = "";
    for (const entry of info.layers) {
      const option = document.createElement("option");
      option.value = entry.name;
      option.textContent = `${entry.name} (${entry.channels} ch)`;
      option.dataset.channels = String(entry.channels);
      layer.appendChild(option);
    }
    layer.value = info.default_layer;
    syncChannelLimit();
    $("size").max = String(info.max_size);
    $("size").value = String(info.train_max_size || info.max_size);
    for (const panel of document.querySelectorAll(".needs-layers")) panel.hidden = !hasLayers();
    if (!hasLayers()) $("maze-caption").textContent = "scripted policy: no activations to show, steer or retarget";
    $("seed").value = String(info.default_seed || 0);

    $("maze").addEventListener("click", onMazeClick);
    $("mode").addEventListener("change", (event) => { if (event.target.name === "mode") setMode(event.target.value); });
    document.addEventListener("keydown", (event) => {
      const tag = (event.target.tagName || "").toLowerCase();
      if (tag === "input" || tag === "textarea" || tag === "select" || event.ctrlKey || event.metaKey || event.altKey) return;
      const mode = { c: "cheese", m: "mouse", w: "wall", i: "inspect", t: "target" }[event.key];
      if (mode) setMode(mode);
    });
    $("new-maze").addEventListener("click", () => newMaze(performance.now()));
    $("load-ascii").addEventListener("click", () => importMaze("load", performance.now(), { ascii: $("ascii").value }));
    $("export").addEventListener("click", () => exportMaze(performance.now()));
    $("ascii").addEventListener("input", () => { page.asciiDirty = true; });
    $("state-file").addEventListener("change", async (event) => {
      const t0 = performance.now();
      const file = event.target.files[0];
      if (!file) return;
      try {
        importMaze("load", t0, { state: await readFileBase64(file) });
      } catch (error) { showError(error); }
      event.target.value = "";
    });
    layer.addEventListener("change", () => { syncChannelLimit(); mazeLive.request("layer", performance.now()); });
    $("channel").addEventListener("input", () => {
      const t0 = performance.now();
      try { channelValue(); } catch (error) { showError(error); return; }
      mazeLive.request("channel", t0);
    });
    $("steer-coefficient").addEventListener("input", () => {
      const t0 = performance.now();
      $("steer-value").textContent = Number($("steer-coefficient").value).toFixed(1);
      $("steer-on").checked = true;  // moving the slider means: steer
      mazeLive.request("steer", t0);
    });
    $("steer-on").addEventListener("change", () => mazeLive.request("steer", performance.now()));
    // the checkbox always re-views (on or off); the settings only while retargeting is on
    const retargetChanged = (event) => {
      const t0 = performance.now();
      const on = $("retarget-on").checked;
      if (!on && event.target.id !== "retarget-on") return;
      if (on && !page.target) { showStatus("retargeting: click the target square in target mode (key t)"); setMode("target"); return; }
      mazeLive.request("retarget", t0);
    };
    $("retarget-on").addEventListener("change", retargetChanged);
    $("retarget-channels").addEventListener("change", retargetChanged);
    $("retarget-value").addEventListener("change", retargetChanged);
    $("retarget-radius").addEventListener("change", retargetChanged);
    $("play").addEventListener("click", () => playEpisode(performance.now()));
    $("activation").addEventListener("mousemove", (event) => {
      const view = page.view;
      if (!view) return;
      const rect = $("activation").getBoundingClientRect(), n = view.activation.grid.length;
      const x = Math.floor(((event.clientX - rect.left) / rect.width) * n);
      const row = Math.floor(((event.clientY - rect.top) / rect.height) * n);
      if (x >= 0 && x < n && row >= 0 && row < n) updateActivationReadout([x, n - 1 - row]);
    });
    $("activation").addEventListener("mouseleave", () => updateActivationReadout(null));
    window.addEventListener("resize", () => { drawMaze(); drawActivation(); });
    setMode("cheese");
    newMaze(performance.now());
  }

  function syncChannelLimit() {
    const option = $("layer").selectedOptions[0];
    if (!option) return;
    const channels = Number(option.dataset.channels);
    $("channel").max = String(channels - 1);
    $("channel-count").textContent = `of 0–${channels - 1}`;
    if (Number($("channel").value) > channels - 1) $("channel").value = String(channels - 1);
  }

  // ============================================================================================
  // decision transformers
  // ============================================================================================
  function dtBody() {
    return {
      seed: intInput("dt-seed", 0, null, "seed"), rtg: Number($("rtg").value),
      steps: intInput("dt-steps", 0, null, "steps"),
    };
  }

  const actionId = (name) => `a-${String(name).replace(/[^A-Za-z0-9_-]+/g, "-")}`;

  function applyDT(view) {
    page.dt = view;
    $("dt-image").src = view.image;
    $("mission").textContent = view.mission ? `mission: ${view.mission}` : "";
    const body = $("dt-probs").tBodies[0];
    body.innerHTML = "";
    const best = view.probs.indexOf(Math.max.apply(null, view.probs));
    view.actions.forEach((name, i) => {
      const row = document.createElement("tr");
      const label = document.createElement("td");
      label.textContent = name;
      const barCell = document.createElement("td");
      barCell.className = "bar-cell";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(view.probs[i] * 100)}%`;
      barCell.appendChild(bar);
      const value = document.createElement("td");
      value.id = actionId(name);
      value.textContent = fmt(view.probs[i]);
      value.dataset.value = String(view.probs[i]);  // full precision, for scripts reading the page
      if (i === best) value.classList.add("best");
      row.append(label, barCell, value);
      body.appendChild(row);
    });
    const where = view.step !== undefined ? ` at step ${view.step}` : "";
    $("dt-action").textContent = (view.action ? `greedy action${where}: ${view.action}` : "") +
      (view.ended ? " (the episode ended before the asked step)" : "");
    syncAttentionSelects(view.attention);
    drawAttention();
    return `return-to-go ${fmt(Number($("rtg").value), 2)}`;
  }

  const dtLive = new Live("/api/dt/view", dtBody, applyDT);

  function fillSelect(select, count, label) {
    if (select.options.length === count) return;
    const keep = Math.min(Number(select.value) || 0, count - 1);
    select.innerHTML = "";
    for (let i = 0; i < count; i++) {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = `${label} ${i}`;
      select.appendChild(option);
    }
    select.value = String(Math.max(0, keep));
  }

  function syncAttentionSelects(attention) {
    fillSelect($("attn-layer"), attention.layers, "layer");
    fillSelect($("attn-head"), attention.heads, "head");
  }

  function drawAttention() {
    const view = page.dt;
    if (!view) return;
    const attention = view.attention;
    const weights = attention.weights[Number($("attn-layer").value)][Number($("attn-head").value)];
    const tokens = attention.tokens, t = tokens.length;
    const canvas = $("attention");
    const [width] = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    const margin = 34 * dpr, cell = (width - margin) / Math.max(1, t);
    ctx.clearRect(0, 0, width, width);
    ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, width, width);
    for (let q = 0; q < t; q++) {
      for (let k = 0; k < t; k++) {
        const w = Math.max(0, Math.min(1, weights[q][k]));
        const mix = (c) => Math.round(255 + (c - 255) * w);
        ctx.fillStyle = `rgb(${mix(8)},${mix(48)},${mix(107)})`;
        ctx.fillRect(margin + k * cell, margin + q * cell, Math.ceil(cell), Math.ceil(cell));
      }
    }
    ctx.strokeStyle = "#dcd9d0"; ctx.lineWidth = 1; ctx.strokeRect(margin, margin, cell * t, cell * t);
    ctx.fillStyle = "#3b4048";
    const fontSize = Math.max(7 * dpr, Math.min(11 * dpr, cell * 0.8));
    ctx.font = `${fontSize}px ui-monospace, monospace`;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const every = Math.max(1, Math.ceil((fontSize * 1.1) / cell));  // long contexts: label every k-th token
    const labelled = (i) => i % every === 0;
    tokens.forEach((label, i) => { if (labelled(i)) ctx.fillText(label, margin - 3 * dpr, margin + (i + 0.5) * cell); });
    ctx.save();
    ctx.textAlign = "left";
    tokens.forEach((label, i) => {
      if (!labelled(i)) return;
      ctx.save();
      ctx.translate(margin + (i + 0.5) * cell, margin - 3 * dpr);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(label, 0, 0);
      ctx.restore();
    });
    ctx.restore();
  }

  function dtPlay(t0) {
    if (page.dtPlayTimer) { clearInterval(page.dtPlayTimer); page.dtPlayTimer = null; }
    setBusy(+1);
    (async () => {
      try {
        const slow = slowNote("the episode");
        let answer;
        try {
          answer = await post("/api/dt/play", {
            seed: intInput("dt-seed", 0, null, "seed"), rtg: Number($("rtg").value),
            max_steps: intInput("dt-max-steps", 1, 500, "play steps"),
          });
        } finally { clearTimeout(slow); }
        const result = $("dt-play-result");
        result.dataset.actions = JSON.stringify(answer.actions);
        result.dataset.frames = String(answer.frames.length);
        let shown = 0;
        $("dt-image").src = answer.frames[0];
        await afterPaint();
        record("dt-play", t0);
        await new Promise((resolve) => {
          page.dtPlayTimer = setInterval(() => {
            shown += 1;
            if (shown >= answer.frames.length) { clearInterval(page.dtPlayTimer); page.dtPlayTimer = null; resolve(); return; }
            $("dt-image").src = answer.frames[shown];
            result.textContent = `step ${shown}: ${answer.actions[shown - 1] || ""}`;
          }, Math.max(40, Math.min(150, 4000 / answer.frames.length)));  // at most ~4 s
        });
        result.textContent = `return ${fmt(answer["return"], 3)} after ${answer.length} steps`;
        showStatus(`episode played at return-to-go ${fmt(Number($("rtg").value), 2)}: return ${fmt(answer["return"], 3)}`);
      } catch (error) {
        showError(error);
      } finally {
        setBusy(-1);
      }
    })();
  }

  function setupDT(info) {
    const rtg = $("rtg");
    const max = Number(info.max_rtg) > 0 ? Number(info.max_rtg) : 1;
    rtg.max = String(max);
    rtg.step = String(max / 100);
    rtg.value = String(max);
    $("rtg-value").textContent = fmt(max, 2);
    $("dt-seed").value = String(info.default_seed || 0);
    if (info.min_rtg !== undefined) {
      $("rtg-range").textContent = `Returns in the training data: ${fmt(Number(info.min_rtg), 2)} to ${fmt(max, 2)}.`;
    }
    if (info.use_rtg === false) {  // a behaviour-cloning model: no return-to-go input
      rtg.disabled = true;
      $("rtg-range").textContent = "This model was trained without return-to-go (behaviour cloning): the slider does nothing.";
    }
    const live = (what) => () => {
      const t0 = performance.now();
      $("rtg-value").textContent = fmt(Number(rtg.value), 2);
      dtLive.request(what, t0);
    };
    rtg.addEventListener("input", live("rtg"));
    $("dt-seed").addEventListener("input", live("dt-seed"));
    $("dt-steps").addEventListener("input", live("dt-steps"));
    const redraw = () => {
      const t0 = performance.now();
      drawAttention();
      setBusy(+1);
      afterPaint().then(() => { record("attention", t0); setBusy(-1); });
    };
    $("attn-layer").addEventListener("change", redraw);
    $("attn-head").addEventListener("change", redraw);
    $("dt-play").addEventListener("click", () => dtPlay(performance.now()));
    window.addEventListener("resize", drawAttention);
    dtLive.request("load", performance.now());
  }

  // ============================================================================================
  async function init() {
    const t0 = performance.now();
    setBusy(+1);
    try {
      const info = await request("GET", "/api/info");
      page.info = info;
      document.body.dataset.kind = info.kind;
      const parts = [info.recipe, info.source];
      if (info.kind === "maze") {
        parts.push(`${info.obs} observation`, `mazes up to ${info.max_size}×${info.max_size} in a ${info.world_dim}×${info.world_dim} world`);
      } else {
        parts.push(String(info.levels), `max return ${fmt(Number(info.max_rtg), 2)}`, `${info.n_layers} layers × ${info.n_heads} heads`);
      }
      $("info").textContent = parts.filter((p) => p !== undefined && p !== "").join(" · ");
      document.title = `shardlab explore · ${info.recipe}`;
      if (info.kind === "maze") { $("maze-view").hidden = false; setupMaze(info); }
      else if (info.kind === "dt") { $("dt-view").hidden = false; setupDT(info); }
      else throw new Error(`unknown checkpoint kind ${JSON.stringify(info.kind)} from /api/info`);
      showStatus("ready");
      record("info", t0);
    } catch (error) {
      showError(error);
    } finally {
      setBusy(-1);
    }
  }

  init();
})();
