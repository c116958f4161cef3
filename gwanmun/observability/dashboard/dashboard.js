// gwanmun live dashboard: polls /status (gwanmun/observability/status.py) and renders it. No build step, no library.
"use strict";

const POLL_MS = Number(new URLSearchParams(location.search).get("interval") || 2) * 1000;
const $ = (id) => document.getElementById(id);

function num(v, digits = 1) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number" && !Number.isInteger(v)) return v.toLocaleString(undefined, {maximumFractionDigits: digits});
  return v.toLocaleString();
}
function pct(v) { return v === null || v === undefined ? "–" : (v * 100).toFixed(2) + "%"; }
function ms(v) { return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)); }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function cls(rate) { return rate >= 0.05 ? "bad" : rate >= 0.01 ? "warn" : "ok"; }

// A table from rows of cells: [text, className?]; built with DOM nodes (never innerHTML: names come from config).
function table(id, head, rows, empty) {
  const t = $(id);
  t.replaceChildren();
  const tr = document.createElement("tr");
  for (const h of head) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
  t.appendChild(tr);
  if (!rows.length) {
    const r = document.createElement("tr"), td = document.createElement("td");
    td.colSpan = head.length; td.className = "empty"; td.textContent = empty || "none";
    r.appendChild(td); t.appendChild(r);
    return;
  }
  for (const row of rows) {
    const r = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      if (Array.isArray(cell)) { td.textContent = cell[0]; if (cell[1]) td.className = cell[1]; }
      else td.textContent = cell;
      r.appendChild(td);
    }
    t.appendChild(r);
  }
}

function trafficRows(rows) {
  return rows.map((r) => [r.name, num(r.rate), num(r.requests), [pct(r.error_rate), cls(r.error_rate)],
                          pct(r.client_error_rate), ms(r.p50_ms), ms(r.p95_ms), ms(r.p99_ms)]);
}
const TRAFFIC_HEAD = ["name", "req/s", "requests", "5xx", "4xx", "p50", "p95", "p99"];

function chart(history) {
  const c = $("chart"), g = c.getContext("2d");
  const w = c.width, h = c.height, pad = 24;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#26313d"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { const y = pad + (h - 2 * pad) * i / 4; g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); }
  if (history.length < 2) {
    g.fillStyle = "#7d8a97"; g.font = "13px sans-serif"; g.fillText("collecting…", 10, h / 2);
    return;
  }
  const t0 = history[0][0], t1 = history[history.length - 1][0], span = Math.max(1, t1 - t0);
  const maxRps = Math.max(1, ...history.map((p) => p[1]));
  const maxP99 = Math.max(1, ...history.map((p) => p[3] || 0));
  const line = (index, max, color) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    history.forEach((p, i) => {
      const x = (p[0] - t0) / span * w, y = h - pad - (p[index] || 0) / max * (h - 2 * pad);
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  };
  line(1, maxRps, "#58a6ff");
  line(3, maxP99, "#d29922");
  g.fillStyle = "#58a6ff"; g.font = "12px sans-serif"; g.fillText("req/s (max " + num(maxRps) + ")", 8, 14);
  g.fillStyle = "#d29922"; g.fillText("p99 ms (max " + ms(maxP99) + ")", 160, 14);
}

function render(s) {
  $("version").textContent = s.gwanmun.version + " · pid " + s.gwanmun.pid;
  const r = s.requests;
  $("rps").textContent = r.rate === null ? "–" : num(r.rate);
  $("total").textContent = num(r.total) + " requests since start";
  $("latency").textContent = ms(r.latency_ms.p50) + " / " + ms(r.latency_ms.p95) + " / " + ms(r.latency_ms.p99);
  $("latency").title = "p50 / p95 / p99 in ms";
  $("window").textContent = s.window_s ? s.window_s.toFixed(0) + " s" : "since start";
  $("errors").textContent = pct(r.error_rate);
  $("errors").className = "value " + cls(r.error_rate);
  $("errors4").textContent = "4xx " + pct(r.client_error_rate);
  $("connections").textContent = num(s.connections.active);
  $("connections-sub").textContent = s.connections.reading + " busy · " + s.connections.waiting + " idle";
  $("config").textContent = s.config.hash || "–";
  const rl = s.config.reloads;
  $("config-sub").textContent = "generation " + s.config.generation + " · reloads " + rl.reloaded + " ok, " +
    rl.unchanged + " unchanged, " + rl.rejected + " rejected";
  $("workers").textContent = s.workers_running + " / " + s.workers.length;
  $("workers-sub").textContent = s.worker_restarts + " restarts";
  chart(s.history);
  table("services", TRAFFIC_HEAD, trafficRows(s.services), "no traffic yet");
  table("routes", TRAFFIC_HEAD, trafficRows(s.routes), "no traffic yet");
  table("consumers", TRAFFIC_HEAD, trafficRows(s.consumers), "no authenticated consumer yet");
  table("clients", ["client", "requests", "bytes", "errors"],
        s.clients.map((c) => [c.client, num(c.requests), bytes(c.bytes), [num(c.errors), c.errors ? "warn" : ""]]));
  table("upstreams", ["upstream", "target", "address", "health"],
        s.upstreams.map((u) => [u.upstream, u.target, u.address,
                                [u.health, u.health === "healthy" ? "ok" : u.health === "unhealthy" ? "bad" : "warn"]]),
        "no upstream entities");
  table("breakers", ["service", "target", "state", "workers"],
        s.breakers.map((b) => [b.service, b.target || "–",
                               [b.state, b.state === "closed" ? "ok" : b.state === "open" ? "bad" : "warn"],
                               Object.entries(b.workers).map(([k, v]) => k + " " + v).join(", ")]),
        "no circuit breakers");
  table("configs", ["worker", "pid", "config", "requests", "up"],
        s.workers.map((w) => [String(w.worker), String(w.pid || "–"),
                              [w.config_hash || "–", w.config_hash && w.config_hash !== s.config.hash ? "warn" : ""],
                              num(w.requests || 0), w.uptime_s === undefined ? "–" : num(w.uptime_s, 0) + " s"]));
  table("ratelimit", ["service", "route", "decision", "count"],
        s.ratelimit.map((x) => [x.service || "–", x.route || "–",
                                [x.decision, x.decision === "rejected" ? "warn" : ""], num(x.count)]),
        "no rate-limit decisions");
}

async function poll() {
  try {
    const res = await fetch("/status", {cache: "no-store"});
    if (!res.ok) throw new Error("HTTP " + res.status);
    render(await res.json());
    $("conn").textContent = "live · " + new Date().toLocaleTimeString();
    $("conn").className = "pill ok";
    document.body.dataset.ready = "1";
  } catch (e) {
    $("conn").textContent = "disconnected: " + e.message;
    $("conn").className = "pill bad";
  }
  setTimeout(poll, POLL_MS);
}

poll();
