// The dashboard page: fetch the stats API (or read the embedded snapshot), draw cards, charts, tables.
// Plain browser JavaScript, no build step; plotly.js is served by the gateway from the plotly wheel.
(function () {
  "use strict";
  const SNAP = window.THALAMUS_SNAPSHOT || null;
  const CONFIG = window.THALAMUS_CONFIG || {};
  const BUCKET = { 3600: "minute", 21600: "minute", 86400: "hour", 604800: "hour", 2592000: "day", 0: "day" };
  // "fit the data": from the oldest request matching the filters, in buckets that give the span a few points
  // or more (minutes up to 6 h, hours up to 30 days, then days), so fresh data is not one spike at the edge
  const FIT = [[6 * 3600, "minute", 60], [30 * 86400, "hour", 3600], [Infinity, "day", 86400]];
  const state = { timer: null, data: null, ready: false, loads: 0 };
  window.thalamusDashboard = state;

  const $ = (id) => document.getElementById(id);
  const usd = (v) => (v == null ? "–" : "$" + (Math.abs(v) < 0.01 && v !== 0 ? v.toPrecision(3) : v.toFixed(2)));
  const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + "%");
  const num = (v, d) => (v == null ? "–" : Number(v).toFixed(d == null ? 0 : d));
  const iso = (t) => new Date(t * 1000).toISOString();
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");

  function fitRange(span) {
    const now = Date.now() / 1000;
    const first = span && span.first != null ? span.first : now - 3600;
    const [, bucket, width] = FIT.find(([upto]) => now - first <= upto);
    return { since: Math.floor(first / width) * width, bucket };
  }

  function params(fit) {
    const chosen = $("f-range").value;
    const range = chosen === "auto" ? null : Number(chosen);
    const q = new URLSearchParams();
    if (fit) q.set("since", String(fit.since));
    else if (range > 0) q.set("since", String(Date.now() / 1000 - range));
    for (const name of ["router", "key", "model"]) {
      const v = $("f-" + name).value;
      if (v) q.set(name, v);
    }
    return { q, bucket: fit ? fit.bucket : BUCKET[range] || "hour", range: fit ? "fit:" + fit.bucket : range };
  }

  function apiKey() {
    return $("f-apikey") ? $("f-apikey").value || sessionStorage.getItem("thalamus-key") : null;
  }

  async function api(path) {
    const headers = {};
    const key = apiKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
      sessionStorage.setItem("thalamus-key", key);
    }
    const res = await fetch(path, { headers });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(path.split("?")[0] + ": " + res.status + " " + ((body.error || {}).message || ""));
    }
    return res.json();
  }

  function filterQuery() {
    const q = new URLSearchParams();
    for (const name of ["router", "key", "model"]) {
      const v = $("f-" + name).value;
      if (v) q.set(name, v);
    }
    return q.toString();
  }

  async function fetchAll() {
    let fit = null;
    if ($("f-range").value === "auto") fit = fitRange((await api("/api/stats/breakdown?" + filterQuery())).span);
    const { q, bucket, range } = params(fit);
    const s = q.toString();
    state.query = s;
    const ts = new URLSearchParams(q);
    ts.set("bucket", bucket);
    const [overview, series, models, keys, recent, calibration, options, routers, rollout, breakdown, affinity] =
      await Promise.all([
      api("/api/stats/overview?" + s), api("/api/stats/timeseries?" + ts), api("/api/stats/models?" + s),
      api("/api/stats/keys?" + s), api("/api/requests?limit=50&" + s), api("/api/stats/calibration?" + s),
      api("/api/stats/filters?" + s), api("/api/stats/routers?" + s), api("/api/stats/rollout?" + s),
      api("/api/stats/breakdown?" + ts), api("/api/stats/affinity?" + s)]);
    return { overview, series, models: models.data, keys: keys.data, recent: recent.data,
             calibration: calibration.data, options, routers: routers.data, rollout: rollout.data, breakdown,
             affinity, range };
  }

  function fillOptions(options) {
    for (const [name, list] of [["router", options.routers], ["key", options.keys], ["model", options.models]]) {
      const sel = $("f-" + name);
      const keep = sel.value;
      sel.innerHTML = '<option value="">all</option>' +
        list.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join("");
      if (list.includes(keep)) sel.value = keep;
    }
  }

  function cards(o, b) {
    const set = (id, text, value, sub) => {
      $(id).textContent = text;
      $(id).dataset.value = value == null ? "" : String(value);
      $(id + "-sub").textContent = sub;
    };
    set("card-spend", usd(o.spend_usd), o.spend_usd, `${num(o.prompt_tokens)} + ${num(o.completion_tokens)} tokens`);
    const share = o.counterfactual_spend_usd ? o.savings_usd / o.counterfactual_spend_usd : null;
    set("card-savings", usd(o.savings_usd), o.savings_usd,
        `${pct(share)} of ${usd(o.counterfactual_spend_usd)} on the baseline`);
    set("card-requests", num(o.requests), o.requests,
        `errors ${pct(o.error_rate)}, fallbacks ${pct(o.fallback_rate)}, p50 ${num(o.latency_ms.total.p50, 1)} ms`);
    // client and judge feedback apart: a request scored by both is one request, not two
    const fb = (b && b.feedback) || null;
    const part = (name, f) => `${name} ${num(f.score_mean, 3)} on ${num(f.requests_scored)} req`;
    const sub = fb ? [["client", fb.client], ["judge", fb.judge]].filter(([, f]) => f.feedback_n)
      .map(([n, f]) => part(n, f)).join("; ") : (o.feedback_n ? `${o.feedback_n} feedback` : "");
    // the headline is the client's score when clients gave any, else the judge's: never a blend of the two
    const main = fb ? (fb.client.feedback_n ? fb.client : fb.judge) : o;
    set("card-quality", num(main.score_mean, 3), main.score_mean, sub || "no feedback yet");
    if (fb) {
      $("card-quality-sub").dataset.client = String(fb.client.feedback_n);
      $("card-quality-sub").dataset.judge = String(fb.judge.feedback_n);
    }
  }

  function switchCard(a) {
    if (!a) return;
    $("card-switch").textContent = pct(a.switch_rate);
    $("card-switch").dataset.value = a.switch_rate == null ? "" : String(a.switch_rate);
    $("card-switch-sub").textContent = `${num(a.switched)} switched, ${num(a.kept)} kept; ${num(a.conversations)} conversations`;
  }

  const LAYOUT = (title, extra) => Object.assign({
    title: { text: title, font: { size: 14 } }, margin: { l: 50, r: 10, t: 36, b: 36 },
    legend: { orientation: "h", y: -0.15 }, hovermode: "x unified" }, extra || {});
  const OPTS = { displaylogo: false, responsive: true };

  function charts(d) {
    const pts = d.series.points;
    const x = pts.map((p) => iso(p.t));
    Plotly.react("chart-spend", [
      { name: "spend", x, y: pts.map((p) => p.spend_usd), type: "scatter", mode: "lines+markers" },
      { name: "counterfactual (baseline)", x, y: pts.map((p) => p.counterfactual_spend_usd), type: "scatter",
        mode: "lines+markers", line: { dash: "dot" } }], LAYOUT("spend vs counterfactual (USD)"), OPTS);
    const models = Object.keys(d.series.models);
    Plotly.react("chart-models", models.map((m) => ({
      name: m, x, y: d.series.models[m].map((p) => p.requests), type: "bar" })),
      LAYOUT("requests by model", { barmode: "stack" }), OPTS);
    Plotly.react("chart-quality", qualityTraces(d, x), LAYOUT("quality by model (client: solid, judge: dotted; 95% interval)",
      { yaxis: { range: [0, 1.05] } }), OPTS);
    const lat = (key, q, dash) => ({ name: `${key} p${q}`, x, y: pts.map((p) => p[key + "_ms"]["p" + q]),
                                     type: "scatter", mode: "lines+markers", line: { dash } });
    Plotly.react("chart-latency", [lat("total", 50), lat("total", 90), lat("total", 99), lat("ttft", 50, "dot")],
      LAYOUT("latency percentiles (ms)"), OPTS);
    Plotly.react("chart-rates", [
      { name: "error rate", x, y: pts.map((p) => p.error_rate), type: "scatter", mode: "lines+markers" },
      { name: "fallback rate", x, y: pts.map((p) => p.fallback_rate), type: "scatter", mode: "lines+markers" }],
      LAYOUT("error and fallback rates", { yaxis: { tickformat: ".0%" } }), OPTS);
    const cal = d.calibration;
    Plotly.react("chart-calibration", [
      { name: "router", x: cal.map((b) => b.predicted), y: cal.map((b) => b.observed), text: cal.map((b) => `n=${b.n}`),
        type: "scatter", mode: "lines+markers", marker: { size: cal.map((b) => 6 + Math.min(14, Math.sqrt(b.n))) } },
      { name: "perfect calibration", x: [0, 1], y: [0, 1], type: "scatter", mode: "lines", line: { dash: "dot" } }],
      LAYOUT("router: predicted quality vs feedback score", { hovermode: "closest",
        xaxis: { range: [0, 1], title: { text: "predicted" } }, yaxis: { range: [0, 1.05], title: { text: "feedback" } } }),
      OPTS);
  }

  // client and judge scores apart, per model and bucket (summed, a judged request would count twice)
  function qualityTraces(d, x) {
    const fs = (d.breakdown && d.breakdown.feedback_series) || [];
    const index = new Map(d.series.points.map((p, i) => [p.t, i]));
    const traces = new Map();
    for (const r of fs) {
      const key = `${r.model} (${r.source})`;
      if (!traces.has(key)) {
        traces.set(key, { name: key, x, y: x.map(() => null), type: "scatter", mode: "lines+markers",
                          connectgaps: false, line: { dash: r.source === "judge" ? "dot" : "solid" },
                          error_y: { type: "data", array: x.map(() => 0) } });
      }
      const i = index.get(r.t);
      if (i == null) continue;
      traces.get(key).y[i] = r.score_mean;
      traces.get(key).error_y.array[i] = r.score_se == null ? 0 : 1.96 * r.score_se;
    }
    return [...traces.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  // the router panel: each router's realized (mean cost, mean feedback) per knob value over its offline curve
  function routerChart(routers) {
    const traces = [];
    for (const r of routers || []) {
      if (r.curve) {
        const fr = r.curve.frontier;
        traces.push({ name: `${r.router}: offline (${r.curve.split}, ${r.curve.dataset})`, x: fr.cost, y: fr.quality,
                      type: "scatter", mode: "lines+markers", line: { dash: "dot" }, marker: { size: 4 } });
      }
      const pts = (r.knobs || []).filter((k) => k.mean_cost_usd != null && k.score_mean != null);
      traces.push({ name: `${r.router}: realized`, x: pts.map((k) => k.mean_cost_usd), y: pts.map((k) => k.score_mean),
                    text: pts.map((k) => `${k.kind} ${k.value}: n=${k.requests}, feedback ${k.feedback_n}`),
                    error_y: { type: "data", array: pts.map((k) => 1.96 * (k.score_se || 0)) },
                    type: "scatter", mode: "markers", marker: { size: 11, symbol: "diamond" } });
    }
    Plotly.react("chart-router", traces, LAYOUT("router: realized cost / quality vs offline curve", {
      hovermode: "closest", margin: { l: 50, r: 10, t: 36, b: 70 }, legend: { orientation: "h", y: -0.35 },
      xaxis: { type: "log", title: { text: "mean cost per request (USD)", standoff: 4 } },
      yaxis: { range: [0, 1.05], title: { text: "quality (feedback / offline)" } } }), OPTS);
  }

  // serving vs candidate while a rollout runs (shadow: agreement, predictions; canary: realized numbers)
  function rolloutTable(rows) {
    const box = $("rollout");
    box.hidden = !(rows && rows.length);
    const lines = [];
    for (const r of rows || []) {
      const live = r.live ? `${r.live.mode}${r.live.mode === "canary" ? " " + pct(r.live.share) : ""}` : "ended";
      for (const s of r.shadow) {
        lines.push({ router: r.router, kind: "shadow", version: s.version, live, n: s.requests,
                     agreement: s.agreement, sq: s.serving_predicted_quality, sc: s.serving_predicted_cost,
                     cq: s.candidate_predicted_quality, cc: s.candidate_predicted_cost });
      }
      for (const arm of ["canary", "serving"]) {
        for (const a of ((r.canary || {})[arm] || [])) {
          lines.push({ router: r.router, kind: arm, version: a.version, live, n: a.requests,
                       q: a.chosen_predicted_quality, c: a.chosen_predicted_cost, cost: a.mean_cost_usd,
                       score: a.score_mean, fb: a.feedback_n, err: a.requests ? a.errors / a.requests : null });
        }
      }
    }
    table("table-rollout", [["router", (l) => esc(l.router)], ["traffic", (l) => esc(l.kind)],
      ["version", (l) => esc(l.version)], ["now", (l) => esc(l.live)], ["requests", (l) => num(l.n)],
      ["agreement", (l) => pct(l.agreement)],
      ["predicted q (serving / candidate)", (l) => (l.kind === "shadow" ? `${num(l.sq, 3)} / ${num(l.cq, 3)}` : num(l.q, 3))],
      ["predicted cost (serving / candidate)", (l) => (l.kind === "shadow" ? `${usd(l.sc)} / ${usd(l.cc)}` : usd(l.c))],
      ["mean cost", (l) => usd(l.cost)], ["feedback", (l) => num(l.fb)], ["score", (l) => num(l.score, 3)],
      ["errors", (l) => pct(l.err)]], lines,
      (l) => `data-router="${esc(l.router)}" data-kind="${esc(l.kind)}" data-n="${l.n}"` +
             (l.agreement != null ? ` data-agreement="${l.agreement}"` : "") +
             (l.cost != null ? ` data-cost="${l.cost}"` : "") + (l.score != null ? ` data-score="${l.score}"` : ""));
  }

  function table(id, cols, rows, attrs) {
    $(id).innerHTML = "<thead><tr>" + cols.map((c) => `<th>${c[0]}</th>`).join("") + "</tr></thead><tbody>" +
      rows.map((r) => `<tr ${attrs ? attrs(r) : ""}>` + cols.map((c) => `<td>${c[1](r)}</td>`).join("") + "</tr>")
        .join("") + "</tbody>";
  }

  function tables(d) {
    const common = [["requests", (r) => num(r.requests)], ["share", (r) => pct(r.share)],
      ["spend", (r) => usd(r.spend_usd)], ["counterfactual", (r) => usd(r.counterfactual_spend_usd)],
      ["errors", (r) => pct(r.error_rate)], ["feedback", (r) => num(r.feedback_n)],
      ["score", (r) => num(r.score_mean, 3)]];
    const perModel = (d.breakdown && d.breakdown.feedback_by_model) || {};
    const fbOf = (r, src) => (perModel[r.model] || {})[src] || {};
    table("table-models", [["model", (r) => esc(r.label || r.model)], ...common.slice(0, 5),
      ["client fb", (r) => num(fbOf(r, "client").feedback_n || 0)], ["client score", (r) => num(fbOf(r, "client").score_mean, 3)],
      ["judge fb", (r) => num(fbOf(r, "judge").feedback_n || 0)], ["judge score", (r) => num(fbOf(r, "judge").score_mean, 3)],
      ["predicted q", (r) => num(r.mean_predicted_quality, 3)], ["mean ms", (r) => num(r.mean_total_ms, 1)]], d.models,
      (r) => `data-model="${esc(r.model == null ? "" : r.model)}" data-requests="${r.requests}"`);
    table("table-keys", [["key", (r) => esc(r.label || r.key)], ...common.slice(0, 4),
      ["savings", (r) => usd(r.savings_usd)]], d.keys);
    table("table-requests", [["time", (r) => esc(iso(r.created_at).replace("T", " ").slice(0, 19))],
      ["status", (r) => `<span class="${r.status >= 400 ? "bad" : ""}">${r.status}</span>`],
      ["requested", (r) => esc(r.requested_model)], ["router", (r) => esc(r.router || "")],
      ["model", (r) => esc(r.chosen_model || "")], ["p", (r) => num(r.probability, 2)],
      ["ms", (r) => num(r.total_ms, 1)], ["cost", (r) => usd(r.cost_usd)],
      ["score", (r) => (r.feedback.length ? num(r.feedback[r.feedback.length - 1].score, 2) : "")]],
      d.recent, (r) => `data-id="${esc(r.id)}"`);
    const errors = (d.breakdown && d.breakdown.errors) || [];
    table("table-errors", [["status", (r) => num(r.status)], ["class", (r) => esc(r["class"])],
      ["code", (r) => esc(r.code || "")], ["requests", (r) => num(r.requests)], ["refused", (r) => num(r.refused)]],
      errors, (r) => `data-status="${r.status}" data-class="${esc(r["class"])}" data-n="${r.requests}"`);
    const fb = (d.breakdown && d.breakdown.feedback) || {};
    table("table-feedback", [["source", (r) => esc(r[0])], ["feedback", (r) => num(r[1].feedback_n)],
      ["requests scored", (r) => num(r[1].requests_scored)], ["mean score", (r) => num(r[1].score_mean, 3)],
      ["± 95%", (r) => num(r[1].score_se == null ? null : 1.96 * r[1].score_se, 3)]],
      Object.entries(fb), (r) => `data-source="${esc(r[0])}" data-n="${r[1].feedback_n}"`);
  }

  // the admin's view across teams. The page holds no key (with auth on, the reader types one), so it asks the
  // API: /api/stats/teams answers 200 to the admin (everyone while auth is off) and 403 to any other key; the
  // section shows only on a 200. A refused key is not asked again until the key field changes.
  async function teams() {
    const box = $("teams");
    if (!box || SNAP) return;
    const key = apiKey() || "";
    if (state.teamsRefused === key) return;
    const res = await fetch("/api/stats/teams?" + (state.query || ""),
                            { headers: key ? { Authorization: "Bearer " + key } : {} });
    if (!res.ok) {
      box.hidden = true;
      if (res.status === 403) state.teamsRefused = key;
      return;
    }
    const rows = (await res.json()).data || [];
    const fb = (r) => (r.score_source ? r.feedback[r.score_source] : {});
    table("table-teams", [["team", (r) => esc(r.label)], ["keys", (r) => num(r.keys)],
      ["requests", (r) => num(r.requests)], ["tokens", (r) => num(r.tokens)], ["spend", (r) => usd(r.spend_usd)],
      ["errors", (r) => num(r.errors)], ["error rate", (r) => pct(r.error_rate)],
      ["feedback", (r) => num(fb(r).feedback_n || 0)],
      ["score", (r) => (r.score_mean == null ? "–" : num(r.score_mean, 3) + " " + r.score_source)]], rows,
      (r) => `data-team="${esc(r.label)}" data-requests="${r.requests}" data-spend="${r.spend_usd}"`);
    box.hidden = false;
  }

  function drilldown(row) {
    const box = $("drilldown");
    const cands = Object.entries(row.candidates || {}).sort((a, b) => b[1].quality - a[1].quality);
    const chain = (row.fallback_chain || []).map((c) =>
      `${esc(c.model)} #${c.attempt}: ${c.status} ${esc(c["class"] || "")} (${esc(c.error)})`);
    box.innerHTML = `<h3>request ${esc(row.id)}</h3><p>router <b>${esc(row.router || "none (passthrough)")}</b>,
      chose <b>${esc(row.chosen_model)}</b> with probability ${num(row.probability, 3)}; baseline
      ${esc(row.baseline_model || "")} would have cost ${usd(row.baseline_cost_usd)} (actual ${usd(row.cost_usd)}).
      Fallback chain: ${chain.length ? chain.join("; ") : "none"}. Feedback:
      ${row.feedback.length ? row.feedback.map((f) => num(f.score, 2) + (f.source ? ` (${esc(f.source)})` : "")).join(", ") : "none"}.</p>
      <table id="table-candidates"><thead><tr><th>candidate</th><th>predicted quality</th><th>expected cost</th></tr></thead>
      <tbody>${cands.map(([m, c]) => `<tr data-model="${esc(m)}"><td class="${m === row.chosen_model ? "chosen" : ""}">${esc(m)}</td>
      <td>${num(c.quality, 4)}</td><td>${usd(c.cost)}</td></tr>`).join("")}</tbody></table>`;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });  // sticky above the table: in view whichever row was clicked
  }

  async function onRowClick(ev) {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr) return;
    document.querySelectorAll("#table-requests tr.selected").forEach((r) => r.classList.remove("selected"));
    tr.classList.add("selected");
    const id = tr.dataset.id;
    try {
      drilldown(SNAP ? state.data.recent.find((r) => r.id === id) : await api("/api/requests/" + encodeURIComponent(id)));
    } catch (err) {
      $("status").textContent = String(err.message || err);
    }
  }

  function render(d) {
    state.data = d;
    fillOptions(d.options);
    cards(d.overview, d.breakdown);
    switchCard(d.affinity);
    charts(d);
    routerChart(d.routers);
    rolloutTable(d.rollout);
    tables(d);
    if (d.range != null && $("f-range").value === "auto") $("f-range").dataset.fitted = String(d.range);
    state.loads += 1;
    state.ready = true;
  }

  async function refresh() {
    try {
      render(await fetchAll());
      $("status").textContent = "";
      await teams();
    } catch (err) {
      $("status").textContent = String(err.message || err);
    }
  }

  function schedule() {
    clearInterval(state.timer);
    const every = Number(($("f-refresh") || { value: 0 }).value);
    if (every > 0) state.timer = setInterval(refresh, every * 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("table-requests").addEventListener("click", onRowClick);
    if (SNAP) {
      document.querySelectorAll("#filters select").forEach((s) => { s.disabled = true; });
      render(SNAP);
      return;
    }
    for (const name of ["range", "router", "key", "model"]) $("f-" + name).addEventListener("change", refresh);
    if ($("f-refresh")) $("f-refresh").addEventListener("change", schedule);
    if ($("f-apikey")) $("f-apikey").addEventListener("change", refresh);
    if (CONFIG.refresh_s != null && $("f-refresh")) $("f-refresh").value = String(CONFIG.refresh_s);
    refresh();
    schedule();
  });
})();
