// fluentdream report pages: draws the index or a target page from the JSON in #data.
// Written for this project, no library: plain DOM and SVG, so the page works from file:// offline.
"use strict";
window.__fd = {errors: [], rendered: null};
window.addEventListener("error", (e) => window.__fd.errors.push(String(e.message)));
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const app = document.getElementById("app"), tip = document.getElementById("tip");
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                  "#7f7f7f", "#bcbd22", "#17becf"];

  // ---- small helpers ---------------------------------------------------------------------
  function put(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of kids.flat(Infinity)) if (c != null) el.append(c);
    return el;
  }
  const h = (tag, attrs, ...kids) => put(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => put(document.createElementNS(NS, tag), attrs, kids);
  const fmt = (x, d = 3) => (x == null || !isFinite(x) ? "–" : Number(x).toFixed(d));
  const color = (i) => COLORS[i % COLORS.length];
  const runIndex = {};
  (D.runs || []).forEach((r, i) => { runIndex[r.name] = i; });

  function hover(el, lines) {       // tooltip on hover; the SVG title keeps it for any reader
    el.dataset.detail = lines.join("\n");
    el.addEventListener("mouseenter", () => { tip.textContent = el.dataset.detail; tip.hidden = false; });
    el.addEventListener("mousemove", (e) => {
      tip.style.left = Math.min(e.pageX + 14, window.scrollX + innerWidth - 380) + "px";
      tip.style.top = e.pageY + 14 + "px";
    });
    el.addEventListener("mouseleave", () => { tip.hidden = true; });
    return el;
  }

  function shade(v, scale) {        // red for positive, blue for negative, white at 0
    if (v == null || !(scale > 0)) return "transparent";
    const a = Math.max(-1, Math.min(1, v / scale));
    const c = Math.round(255 * (1 - Math.abs(a)));
    return a >= 0 ? `rgb(255,${c},${c})` : `rgb(${c},${c},255)`;
  }

  // tokens: strings; colour: value per token; bar: optional bar height value; label(i): hover
  function prompt(tokens, colour, scale, label, bar, barScale) {
    return h("span", {class: "prompt"}, tokens.map((t, i) => {
      const tok = h("span", {class: "tok", text: t, style: `background:${shade(colour[i], scale)}`});
      if (bar) tok.style.boxShadow = `inset 0 ${Math.round(6 * Math.max(0, Math.min(1, (bar[i] || 0) / barScale)))}px 0 #333`;
      tok.title = label(i);
      return tok;
    }));
  }

  function section(id, title, ...body) {
    return h("section", {id}, h("h2", {text: title}), body);
  }
  const note = (text) => h("p", {class: "note", text});
  const maxAbs = (xs) => Math.max(1e-9, ...xs.filter((x) => x != null && isFinite(x)).map(Math.abs));

  // ---- charts ----------------------------------------------------------------------------
  function ticks(lo, hi, n) {
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0 || 1)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((st) => st >= step0) || step0;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(+t.toFixed(10));
    return out;
  }
  function extent(xs, pad) {
    const v = xs.filter((x) => x != null && isFinite(x));
    let lo = Math.min(...v), hi = Math.max(...v);
    if (!v.length) { lo = 0; hi = 1; }
    if (hi === lo) { lo -= 0.5; hi += 0.5; }
    const p = (hi - lo) * (pad || 0.05);
    return [lo - p, hi + p];
  }
  function chart(w, ht, xr, yr, xlabel, ylabel) {
    const m = {l: 56, r: 12, t: 10, b: 40};
    const X = (x) => m.l + (x - xr[0]) / (xr[1] - xr[0]) * (w - m.l - m.r);
    const Y = (y) => ht - m.b - (y - yr[0]) / (yr[1] - yr[0]) * (ht - m.t - m.b);
    const svg = s("svg", {width: w, height: ht, viewBox: `0 0 ${w} ${ht}`, class: "chart"});
    for (const t of ticks(xr[0], xr[1], 6)) {
      svg.append(s("line", {x1: X(t), x2: X(t), y1: m.t, y2: ht - m.b, class: "grid"}),
                 s("text", {x: X(t), y: ht - m.b + 14, class: "tick", "text-anchor": "middle", text: +t.toPrecision(4)}));
    }
    for (const t of ticks(yr[0], yr[1], 5)) {
      svg.append(s("line", {x1: m.l, x2: w - m.r, y1: Y(t), y2: Y(t), class: "grid"}),
                 s("text", {x: m.l - 4, y: Y(t) + 4, class: "tick", "text-anchor": "end", text: +t.toPrecision(4)}));
    }
    svg.append(s("text", {x: (m.l + w - m.r) / 2, y: ht - 6, class: "axis", "text-anchor": "middle", text: xlabel}),
               s("text", {x: 12, y: (m.t + ht - m.b) / 2, class: "axis", "text-anchor": "middle",
                          transform: `rotate(-90 12 ${(m.t + ht - m.b) / 2})`, text: ylabel}));
    return {svg, X, Y, m, w, ht};
  }
  const line = (c, pts, attrs) => c.svg.append(s("polyline", Object.assign(
    {points: pts.map(([x, y]) => `${c.X(x).toFixed(1)},${c.Y(y).toFixed(1)}`).join(" "), fill: "none"}, attrs)));

  function point(c, shape, x, y, fill, size, lines, key) {
    const el = shape === "square"
      ? s("rect", {x: c.X(x) - size, y: c.Y(y) - size, width: 2 * size, height: 2 * size, fill, class: "pt"})
      : s("circle", {cx: c.X(x), cy: c.Y(y), r: size, fill, class: "pt"});
    el.append(s("title", {text: lines.join("\n")}));
    if (key) { el.dataset.key = key; el.addEventListener("click", () => select(key)); }
    c.svg.append(hover(el, lines));
    return el;
  }

  function select(key) {            // a clicked point: its row highlighted and its details shown
    document.querySelectorAll(".selected").forEach((e) => e.classList.remove("selected"));
    document.querySelectorAll(`[data-key="${key}"]`).forEach((e) => e.classList.add("selected"));
    const row = document.getElementById(key);
    const box = document.getElementById("detail");
    const pt = document.querySelector(`.pt[data-key="${key}"]`);
    if (box && pt) box.textContent = pt.dataset.detail;
    if (row) row.scrollIntoView({block: "nearest"});
  }

  // ---- the index -------------------------------------------------------------------------
  function spark(values) {
    const v = values.filter((x) => x != null);
    if (!v.length) return h("span", {text: "–"});
    const c = {X: (i) => 2 + i / Math.max(1, values.length - 1) * 96, Y: (y) => 22 - (y - Math.min(...v)) / (Math.max(...v) - Math.min(...v) || 1) * 20};
    const svg = s("svg", {width: 100, height: 24, class: "spark"});
    svg.append(s("polyline", {fill: "none", points: values.map((y, i) => y == null ? "" : `${c.X(i).toFixed(1)},${c.Y(y).toFixed(1)}`).join(" ")}));
    svg.append(s("title", {text: `best activation over iterations: ${fmt(v[0])} → ${fmt(v[v.length - 1])}`}));
    return svg;
  }
  function index() {
    document.title = "fluentdream report";
    const cols = [
      ["target", (r) => r.target, (r) => h("a", {href: r.href, text: r.target})],
      ["model", (r) => r.model], ["kind", (r) => r.kind], ["runs", (r) => r.runs],
      ["best dream (in distribution)", (r) => r.best_dream && r.best_dream.value, (r) => cell(r.best_dream)],
      ["best dataset example", (r) => r.best_example && r.best_example.value, (r) => cell(r.best_example, "no mine data")],
      ["dream − dataset", (r) => r.beats, (r) => h("span", {class: r.beats > 0 ? "win" : "loss", text: fmt(r.beats)})],
      ["best activation over iterations", (r) => r.spark.length ? r.spark[r.spark.length - 1] : null, (r) => spark(r.spark)],
    ];
    function cell(p, none) {
      if (!p) return h("span", {class: "none", text: none || "none under the limit"});
      return h("span", {}, h("b", {text: fmt(p.value)}), ` CE ${fmt(p.xentropy, 2)} `, h("span", {class: "prompt", text: p.text}));
    }
    const body = h("tbody");
    let order = {col: 0, dir: 1};
    function draw() {
      const key = cols[order.col][1];
      const rows = D.rows.slice().sort((a, b) => {
        const x = key(a), y = key(b);
        if (x == null) return 1; if (y == null) return -1;
        return (typeof x === "number" ? x - y : String(x).localeCompare(String(y))) * order.dir;
      });
      body.replaceChildren(...rows.map((r) => h("tr", {}, cols.map(([, v, show]) => h("td", {}, show ? show(r) : String(v(r)))))));
    }
    const head = h("tr", {}, cols.map(([name], i) => h("th", {class: "sortable", title: "sort", text: name, onclick: () => {
      order = {col: i, dir: order.col === i ? -order.dir : (i >= 3 ? -1 : 1)}; draw();
    }})));
    draw();
    put(app, {}, [h("h1", {text: "fluentdream report"}),
      h("p", {text: `${D.rows.length} targets. In distribution: CE below ` + (D.in_distribution.value == null
        ? "each run's frontier CE limit" : `${fmt(D.in_distribution.value)} (${D.in_distribution.source})`) + ". Click a column to sort."}),
      h("table", {class: "index"}, h("thead", {}, head), body),
      D.mines.length ? h("p", {class: "note", text: "Dataset examples from " + D.mines.join("; ")}) : note("No mine was given: no dataset examples."),
      D.left_out.length ? section("left-out", "Left out", h("ul", {}, D.left_out.map(([d, why]) => h("li", {text: `${d}: ${why}`})))) : null,
      h("footer", {text: D.generator})]);
  }

  window.FD = {D, put, h, s, fmt, color, runIndex, hover, shade, prompt, section, note, maxAbs,
               chart, extent, line, point, select, app};
  if (D.page === "index") {
    index();
    window.__fd.rendered = performance.now();
  }
})();
