// miningproxy status page: plain JS, no libraries, nothing loaded from elsewhere.
// Tables poll the JSON endpoints every 2 s; the hashrate chart follows the admin websocket's
// dashboard:metrics ticks (/ws, one a second), seeded from /pool/hashrate (10 s samples, 1 h).
// Rig-chosen strings (worker names, user agents) are only ever inserted as text.
"use strict";
(() => {
  const POLL_MS = 2000;
  const SPAN_MS = 3600 * 1000;
  const MIN_SPAN_MS = 60 * 1000;
  const TICKS = [10000, 30000, 60000, 120000, 300000, 600000]; // x-axis label steps, ~6 labels
  const GAP_MS = 30 * 1000; // a longer pause between two points is drawn as a gap
  const MAX_BLOCKS = 50;
  const $ = (id) => document.getElementById(id);

  // --- formatting -------------------------------------------------------------------------
  const UNITS = ["H/s", "kH/s", "MH/s", "GH/s", "TH/s", "PH/s", "EH/s"];
  function fmtRate(h) {
    if (h == null || !isFinite(h)) return "–";
    let i = 0;
    while (Math.abs(h) >= 1000 && i < UNITS.length - 1) { h /= 1000; i++; }
    return (h >= 100 ? h.toFixed(0) : h >= 10 ? h.toFixed(1) : h.toFixed(2)) + " " + UNITS[i];
  }
  function fmtDuration(s) {
    if (s == null || !isFinite(s)) return "–";
    s = Math.max(0, s);
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    const h = Math.floor(s / 3600);
    if (h < 48) return h + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(h / 24) + " d " + (h % 24) + " h";
  }
  const fmtAgo = (s) => (s == null ? "never" : fmtDuration(s) + " ago");
  const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString();
  const fmtNum = (n) => (n == null ? "–" : Number(n).toLocaleString());
  const fmtWeight = (w) => (w == null ? "–" : Number(w).toFixed(2));
  const shorten = (text, head, tail) =>
    !text ? "–" : text.length <= head + tail + 1 ? text : text.slice(0, head) + "…" + text.slice(-tail);

  function cell(text, cls, title) {
    const td = document.createElement("td");
    td.textContent = text == null || text === "" ? "–" : String(text);
    if (cls) td.className = cls;
    if (title) td.title = title;
    return td;
  }
  function row(cells, data) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(data || {})) tr.dataset[k] = v == null ? "" : String(v);
    tr.append(...cells);
    return tr;
  }

  // Ages shown on the page keep ticking between two polls.
  let fetchedAt = performance.now();
  const elapsed = () => (performance.now() - fetchedAt) / 1000;
  function tickAges() {
    for (const el of document.querySelectorAll("[data-age]")) {
      if (el.dataset.age === "") continue;
      const age = Number(el.dataset.age) + elapsed();
      el.textContent = el.dataset.ago === "1" ? fmtAgo(age) : fmtDuration(age);
    }
  }
  function setAge(el, seconds, ago) {
    el.dataset.age = seconds == null ? "" : String(seconds);
    el.dataset.ago = ago ? "1" : "0";
    el.textContent = ago ? fmtAgo(seconds) : fmtDuration(seconds);
  }

  // --- rendering ---------------------------------------------------------------------------
  function renderStatus(s) {
    const health = $("health");
    health.dataset.state = s.healthy ? "ok" : "bad";
    health.textContent = s.healthy ? "healthy" : "unhealthy: " + (s.health_reason || "?");
    $("network").textContent = s.network || "(learning)";
    $("version").textContent = s.version;
    setAge($("uptime"), s.uptime, false);
    const t = s.template;
    $("template-height").textContent = fmtNum(t.height);
    $("template-weight").textContent = fmtWeight(t.weight);
    const age = $("template-age");
    setAge(age, t.age, false);
    age.classList.toggle("warn", t.age != null && t.age > t.timeout / 2);
    age.dataset.seconds = t.age == null ? "" : String(t.age);
    const p = s.pool;
    if (!liveOpen() || updates === 0) $("pool-hashrate").textContent = fmtRate(p.hashrate);
    $("rig-count").textContent = fmtNum(p.rigs) + (p.local_workers ? " + " + p.local_workers + " local" : "");
    $("share-counts").textContent = fmtNum(p.shares_accepted) + " / " + fmtNum(p.shares_rejected);
    $("blocks-found").textContent = fmtNum(p.blocks_found);
    const up = s.upstream;
    $("queued-blocks").textContent = up.queued_blocks ? up.queued_blocks + " block(s) queued" : "";
    const rows = up.nodes.map((n) =>
      row(
        [
          cell(n.url, "mono"),
          cell(n.state, "state state-" + n.state),
          cell(n.in_use ? "yes" : "no"),
          cell(n.optimistic_supported == null ? "?" : n.optimistic_supported ? "yes" : "no"),
          cell(n.consecutive_failures, "num"),
          cell(n.retry_in != null ? (n.last_error || "") + " (retry in " + fmtDuration(n.retry_in) + ")" : n.last_error),
        ],
        { node: n.url, state: n.state }
      )
    );
    $("upstream-nodes").tBodies[0].replaceChildren(...rows);
  }

  function renderMiners(miners) {
    const rows = miners.map((m) => {
      const last = cell("", "age");
      setAge(last, m.last_share_ago, true);
      if (m.last_share_time) last.title = new Date(m.last_share_time * 1000).toLocaleString();
      const rejected = Object.entries(m.rejected || {}).map(([k, v]) => k + ": " + v).join(", ");
      const client = m.version || m.user_agent;
      const tr = row(
        [
          cell(m.worker, "worker", m.peer),
          cell(shorten(m.address, 8, 6), "mono", m.address),
          cell(fmtRate(m.hashrate), "num"),
          cell(fmtNum(m.accepted), "num"),
          cell(fmtNum(m.rejected_total), "num", rejected),
          last,
          cell(fmtWeight(m.weight), "num"),
          cell(client, "", m.user_agent),
          cell(m.rtt == null ? "–" : (m.rtt * 1000).toFixed(1) + " ms", "num"),
        ],
        { worker: m.worker, kind: m.kind, peer: m.peer }
      );
      if (!m.subscribed) tr.classList.add("pending");
      return tr;
    });
    $("rigs-table").tBodies[0].replaceChildren(...rows);
    $("rigs-empty").hidden = rows.length > 0;
  }

  function renderBlocks(blocks) {
    const rows = blocks.slice(0, MAX_BLOCKS).map((b) =>
      row(
        [
          cell(fmtNum(b.height), "num"),
          cell(shorten(b.hash, 12, 8), "mono", b.hash),
          cell(b.miner ? b.miner.split(".").slice(1).join(".") || shorten(b.miner, 8, 6) : "", "", b.miner),
          cell(fmtTime(b.found_at), "", new Date(b.found_at * 1000).toLocaleString()),
          cell(b.status, "fate fate-" + b.status),
          cell(b.reason || b.node, "detail"),
        ],
        { hash: b.hash, fate: b.status }
      )
    );
    $("blocks-table").tBodies[0].replaceChildren(...rows);
    $("blocks-empty").hidden = rows.length > 0;
  }

  // --- polling -----------------------------------------------------------------------------
  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }
  async function poll() {
    try {
      const [status, miners, blocks] = await Promise.all([
        getJSON("/pool/status"),
        getJSON("/pool/miners"),
        getJSON("/pool/blocks"),
      ]);
      fetchedAt = performance.now();
      renderStatus(status);
      renderMiners(miners.miners);
      renderBlocks(blocks.blocks);
      if (!liveOpen()) addPoint(Date.now(), status.pool.hashrate, false); // no websocket: poll feeds the chart
      $("error").hidden = true;
    } catch (err) {
      const box = $("error");
      box.textContent = "cannot reach the proxy: " + err.message;
      box.hidden = false;
      $("health").dataset.state = "unknown";
      $("health").textContent = "unreachable";
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  // --- chart -------------------------------------------------------------------------------
  const canvas = $("chart");
  let points = []; // {t: ms on this browser's clock, v: hashes per second}
  let updates = 0;

  function addPoint(t, v, live) {
    points.push({ t, v: Number(v) || 0 });
    const cut = Date.now() - SPAN_MS;
    while (points.length && points[0].t < cut) points.shift();
    if (live) updates++;
    canvas.dataset.points = String(points.length);
    canvas.dataset.updates = String(updates);
    canvas.dataset.last = String(v);
    draw();
  }

  async function seed() {
    try {
      const h = await getJSON("/pool/hashrate");
      const offset = Date.now() - h.now * 1000; // server clock -> browser clock
      const first = points.length ? points[0].t : Infinity;
      const old = h.samples.map(([t, v]) => ({ t: t * 1000 + offset, v })).filter((p) => p.t < first);
      points = old.concat(points).filter((p) => p.t >= Date.now() - SPAN_MS);
      canvas.dataset.points = String(points.length);
      draw();
    } catch (err) {
      /* the chart fills from the live feed */
    }
  }

  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 900;
    const height = canvas.clientHeight || 240;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const css = getComputedStyle(document.documentElement);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const left = 78, right = 12, top = 10, bottom = 24;
    const w = width - left - right, h = height - top - bottom;
    const now = Date.now();
    // The last hour, or less while there is less: a proxy started a minute ago shows that minute.
    const age = points.length ? now - points[0].t : 0;
    const step = TICKS.find((s) => s * 6 >= Math.min(Math.max(age, MIN_SPAN_MS), SPAN_MS)) || 600000;
    const span = Math.min(SPAN_MS, Math.max(MIN_SPAN_MS, Math.ceil(age / step) * step));
    const x = (t) => left + ((t - (now - span)) / span) * w;
    const max = niceCeil(Math.max(0, ...points.map((p) => p.v)) * 1.1);
    const y = (v) => top + h - (v / max) * h;

    ctx.font = "12px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = color("--grid", "#2a3140");
    ctx.fillStyle = color("--muted", "#8b95a7");
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      ctx.beginPath();
      ctx.moveTo(left, Math.round(y(v)) + 0.5);
      ctx.lineTo(left + w, Math.round(y(v)) + 0.5);
      ctx.stroke();
      ctx.fillText(fmtRate(v), left - 8, y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let back = span; back >= 0; back -= step) {
      const label = back === 0 ? "now" : back < 60000 ? "−" + back / 1000 + " s" : "−" + back / 60000 + " min";
      ctx.fillText(label, Math.min(Math.max(x(now - back), left + 16), left + w - 14), top + h + 6);
    }
    if (!points.length) {
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for data…", left + w / 2, top + h / 2);
      return;
    }
    // Area and line, broken where the feed paused.
    const segments = [];
    let current = [];
    for (const p of points) {
      if (current.length && p.t - current[current.length - 1].t > GAP_MS) {
        segments.push(current);
        current = [];
      }
      current.push(p);
    }
    segments.push(current);
    const accent = color("--accent", "#4cc2ff");
    for (const seg of segments) {
      ctx.beginPath();
      ctx.moveTo(x(seg[0].t), y(0));
      for (const p of seg) ctx.lineTo(x(p.t), y(p.v));
      ctx.lineTo(x(seg[seg.length - 1].t), y(0));
      ctx.closePath();
      ctx.globalAlpha = 0.15;
      ctx.fillStyle = accent;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.beginPath();
      seg.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.strokeStyle = accent;
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.lineWidth = 1;
    }
    const last = points[points.length - 1];
    ctx.fillStyle = accent;
    ctx.beginPath();
    ctx.arc(x(last.t), y(last.v), 3, 0, 2 * Math.PI);
    ctx.fill();
  }

  // --- live feed: the admin websocket ------------------------------------------------------
  let ws = null;
  let retry = 1000;
  const liveOpen = () => ws !== null && ws.readyState === WebSocket.OPEN;
  function setLive(state) {
    const el = $("live");
    el.dataset.state = state;
    el.textContent = state;
  }
  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws");
    ws = socket;
    socket.onopen = () => {
      retry = 1000;
      setLive("live");
    };
    socket.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (msg.type !== "dashboard:metrics" || !msg.pool) return;
      const p = msg.pool;
      $("pool-hashrate").textContent = fmtRate(p.hashrate);
      if (p.template_height != null) $("template-height").textContent = fmtNum(p.template_height);
      addPoint(Date.now(), p.hashrate, true);
    };
    socket.onclose = () => {
      setLive("reconnecting (polling)");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    };
  }

  window.addEventListener("resize", draw);
  setInterval(() => {
    tickAges();
    draw(); // the time axis moves even when no point arrives
  }, 1000);
  draw();
  seed();
  connect();
  poll();
})();
