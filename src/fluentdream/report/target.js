// fluentdream report: the panels of a target page, drawn with page.js's helpers (window.FD).
"use strict";
(function () {
  const {D, put, h, s, fmt, color, runIndex, hover, shade, prompt, section, note, maxAbs,
         chart, extent, line, point, select, app} = window.FD;
  if (D.page !== "target") return;
  const post = D.pre;                          // a :pre target also shows its post values
  const ex = D.dataset ? D.dataset.examples : [];
  const limits = D.limits;
  const SHOWN = 20;                            // dataset rows shown before "show all"

  function header() {
    const hd = D.header, src = hd.model_source || {};
    const settings = Object.entries(hd.settings).filter(([, v]) => v != null && v !== "")
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    const rows = [
      ["model", `${hd.model}` + (src.path && src.path !== hd.model ? ` (${src.path})` : "")
        + (src.revision ? ` @ ${src.revision}` : "") + (src.sha256 ? ` sha256 ${src.sha256.slice(0, 12)}` : "")],
      ["fluency model", hd.fluency_model || "the model itself"],
      ["target", `${D.target} (${D.kind}${post ? ", pre-activation: post values shown beside it" : ""})`],
      ["runs", `${D.runs.length} (seeds ${hd.seeds.join(", ")})`],
      ["settings", settings],
      ["git", hd.git_shas.join(", ")], ["W&B runs", hd.wandb.join(", ") || "none"],
      ["CE lines", `in distribution ${fmt(limits.in_distribution, 3)} (${limits.in_distribution_source}); CE limit ${fmt(limits.ce_limit, 3)} (frontier quality counts below it)`],
    ];
    return h("header", {}, h("p", {}, h("a", {href: "../index.html", text: "← all targets"})),
      h("h1", {text: D.target}), h("dl", {}, rows.map(([k, v]) => [h("dt", {text: k}), h("dd", {text: v})])),
      D.notes.map(note));
  }

  // The merged frontier with each run's, the dataset examples and the two CE lines.
  function frontierPlot(mode) {
    const val = (p) => p[mode];
    const exVal = (e) => (mode === "post" ? e.post : D.axis === "value" ? e.value : null);
    const pts = D.runs.flatMap((r) => r.frontier).concat(D.frontier);
    const xs = pts.map((p) => p.xentropy).concat(ex.map((e) => e.xentropy), [limits.in_distribution, limits.ce_limit]);
    const ys = pts.map(val).concat(ex.map(exVal));
    const c = chart(760, 420, extent(xs), extent(ys), "cross-entropy of the prompt (nats)",
                    mode === "post" ? "post-activation" : "activation");
    for (const [x, cls, label] of [[limits.in_distribution, "lim-in", "in distribution"], [limits.ce_limit, "lim-ce", "CE limit"]]) {
      c.svg.append(s("line", {x1: c.X(x), x2: c.X(x), y1: c.m.t, y2: c.ht - c.m.b, class: cls}),
                   s("text", {x: c.X(x) + 3, y: c.m.t + 12 + (cls === "lim-ce" ? 12 : 0), class: "tick", text: label}));
    }
    ex.forEach((e, i) => {
      if (exVal(e) == null) return;
      point(c, "square", e.xentropy, exVal(e), "#999", 3, [`dataset example #${e.rank + 1}`, e.text,
        `activation ${fmt(exVal(e))} · CE ${fmt(e.xentropy)}`], `d${i}`);
    });
    D.runs.forEach((r, i) => {
      const fr = r.frontier.filter((p) => val(p) != null);
      line(c, fr.map((p) => [p.xentropy, val(p)]), {stroke: color(i), "stroke-opacity": 0.5});
      fr.forEach((p) => point(c, "circle", p.xentropy, val(p), color(i), 2.5,
        [p.text, `activation ${fmt(p.value)}${post ? " · post " + fmt(p.post) : ""} · CE ${fmt(p.xentropy)}`, `run ${r.name}`]));
    });
    const merged = D.frontier.filter((p) => val(p) != null);
    line(c, merged.map((p) => [p.xentropy, val(p)]), {stroke: "#000", "stroke-width": 1.5});
    D.frontier.forEach((p, i) => {
      if (val(p) == null) return;
      point(c, "circle", p.xentropy, val(p), color(runIndex[p.run]), 5, [p.text,
        `activation ${fmt(p.value)}${post ? " · post " + fmt(p.post) : ""} · CE ${fmt(p.xentropy)}`,
        `run ${p.run} · merged frontier point ${i + 1}`], `f${i}`).classList.add("merged");
    });
    return c.svg;
  }
  function frontierPanel() {
    const holder = h("div");
    const draw = (mode) => holder.replaceChildren(frontierPlot(mode));
    const modes = post ? ["value", "post"] : ["value"];
    const pick = post ? h("p", {}, "y axis: ", modes.map((m) => h("label", {}, h("input", {type: "radio", name: "ymode",
      value: m, onchange: () => draw(m), ...(m === "value" ? {checked: ""} : {})}), m === "value" ? " pre-activation (optimized) " : " post-activation "))) : null;
    draw("value");
    const legend = h("p", {class: "legend"}, h("span", {class: "key merged-key", text: "●"}), " merged frontier (black line), ",
      D.runs.map((r, i) => [h("span", {class: "key", style: `color:${color(i)}`, text: "●"}), ` ${r.name} `]),
      ex.length ? [h("span", {class: "key", style: "color:#999", text: "■"}), " dataset examples"] : null,
      "; dashed: in distribution, dotted: CE limit. Hover a point for its prompt; click one to pin it.");
    return section("frontier", "Frontier: activation against cross-entropy", pick, holder, legend,
                   h("pre", {id: "detail", class: "detail", text: "Click a point to pin its details here."}));
  }

  function frontierTable() {
    const atts = D.frontier.map((p) => p.attribution).filter(Boolean);
    const scale = maxAbs(atts.flatMap((a) => a.worst)), barScale = maxAbs(atts.flatMap((a) => a.best));
    const rows = D.frontier.map((p, i) => {
      const a = p.attribution;
      const text = a ? prompt(a.tokens, a.worst, scale, (j) => `${JSON.stringify(a.tokens[j])}: drop ${fmt(a.worst[j])} for the worst swap, ${fmt(a.best[j])} for the best`, a.best, barScale)
                     : h("span", {class: "prompt", text: p.text});
      return h("tr", {id: `f${i}`, "data-key": `f${i}`, onclick: () => select(`f${i}`)}, h("td", {text: i + 1}),
        h("td", {text: fmt(p.value)}), post ? h("td", {text: fmt(p.post)}) : null, h("td", {text: fmt(p.xentropy)}),
        h("td", {text: fmt(p.perplexity, 1)}), h("td", {style: `color:${color(runIndex[p.run])}`, text: p.run}), h("td", {}, text));
    });
    return section("table", "Frontier prompts",
      note(atts.length ? "Colour: the activation lost when a token is swapped for the worst of its top-k gradient candidates (red: the position matters); dark bar on top: lost for the best one (the exact token matters)." : "No attribution (the model was not loaded)."),
      h("table", {}, h("thead", {}, h("tr", {}, ["#", "activation", post ? "post" : null, "CE", "perplexity", "run", "prompt"].filter(Boolean).map((t) => h("th", {text: t})))), h("tbody", {}, rows)));
  }

  function datasetPanel() {
    if (!D.dataset) return section("dataset", "Dataset examples beside dreams", note(D.notes.find((n) => n.startsWith("No dataset")) || "No dataset examples."));
    const scale = maxAbs(ex.flatMap((e) => e.token_values || [e.value]));
    const beaten = ex.filter((e) => e.dream && e.dream.value > e.value).length;
    const rows = ex.map((e, i) => {
      const text = e.token_values ? prompt(e.tokens, e.token_values, scale, (j) => `${JSON.stringify(e.tokens[j])}: ${fmt(e.token_values[j])} had the prompt ended here`)
                                  : h("span", {class: "prompt", text: e.text});
      const d = e.dream, diff = d ? d.value - e.value : null;
      return h("tr", {id: `d${i}`, "data-key": `d${i}`, onclick: () => select(`d${i}`)}, h("td", {text: e.rank + 1}), h("td", {}, text),
        h("td", {text: fmt(e.value)}), post ? h("td", {text: fmt(e.post)}) : null, h("td", {text: fmt(e.in_context)}), h("td", {text: fmt(e.xentropy)}),
        h("td", {}, d ? h("span", {class: "prompt", text: d.text}) : h("span", {class: "none", text: "no dream this fluent"})),
        h("td", {text: d ? fmt(d.value) : "–"}), h("td", {text: d ? fmt(d.xentropy) : "–"}),
        h("td", {class: diff > 0 ? "win" : "loss", text: fmt(diff)}));
    });
    const head = ["#", "dataset window (alone)", "activation", post ? "post" : null, "in context", "CE",
                  "best dream with CE ≤ the example's", "activation", "CE", "dream − example"].filter(Boolean);
    rows.slice(SHOWN).forEach((r) => { r.hidden = true; });
    const more = rows.length > SHOWN ? h("button", {text: `show all ${rows.length}`, onclick: (e) => {
      rows.forEach((r) => { r.hidden = false; }); e.target.remove(); }}) : null;
    return section("dataset", "Dataset examples beside dreams at matched CE",
      h("p", {}, h("b", {text: `Dreams beat ${beaten} of ${ex.length} dataset examples`}), " at equal or lower cross-entropy. ",
        `Examples: ${D.dataset.source}; each window re-scored alone, shaded by the activation at each token.`),
      h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", {text: t})))), h("tbody", {}, rows)), more);
  }

  function distributionPanel() {
    const dist = D.distribution, names = Object.keys(dist.counts);
    if (!dist.edges.length) return section("distribution", "Activation distribution", note("Nothing to show."));
    const frac = names.map((n) => { const tot = dist.counts[n].reduce((a, b) => a + b, 0) || 1; return dist.counts[n].map((c) => c / tot); });
    const c = chart(760, 260, [dist.edges[0], dist.edges[dist.edges.length - 1]], [0, Math.max(...frac.flat(), 1e-9) * 1.05], "activation", "fraction");
    names.forEach((n, k) => dist.counts[n].forEach((count, i) => {
      const x0 = c.X(dist.edges[i]), x1 = c.X(dist.edges[i + 1]);
      const bar = s("rect", {x: x0, width: Math.max(1, x1 - x0 - 0.5), y: c.Y(frac[k][i]), height: c.Y(0) - c.Y(frac[k][i]),
        fill: ["#1f77b4", "#2ca02c", "#999"][k % 3], "fill-opacity": 0.45, class: "bar"});
      bar.append(s("title", {text: `${n}: ${count} in [${fmt(dist.edges[i])}, ${fmt(dist.edges[i + 1])})`}));
      c.svg.append(hover(bar, [`${n}: ${count} in [${fmt(dist.edges[i])}, ${fmt(dist.edges[i + 1])})`]));
    }));
    return section("distribution", "Activation distribution", c.svg,
      h("p", {class: "legend"}, names.map((n, k) => [h("span", {class: "key", style: `color:${["#1f77b4", "#2ca02c", "#999"][k % 3]}`, text: "■"}),
        ` ${n} (${dist.counts[n].reduce((a, b) => a + b, 0)}) `])), note("Each series as a fraction of its own count."));
  }

  function logitPanel() {
    const le = D.logit_effects;
    if (!le) return section("logits", "Output logit effects", note("Not computed: the model was not loaded."));
    if (!le.top) return section("logits", "Output logit effects", note(`Not shown: ${le.note}.`));
    const scale = maxAbs(le.top.concat(le.bottom).map((x) => x[1]));
    const list = (items) => h("table", {class: "logits"}, h("tbody", {}, items.map(([t, v]) => h("tr", {},
      h("td", {class: "prompt", text: JSON.stringify(t)}), h("td", {text: fmt(v)}),
      h("td", {}, h("span", {class: "hbar", style: `width:${Math.round(120 * Math.abs(v) / scale)}px;background:${shade(v, scale)}`}))))));
    return section("logits", "Output logit effects", note(`The unembedding of ${le.source}, scaled by the final norm's gain: the tokens this feature's output promotes and suppresses directly.`),
      h("div", {class: "cols"}, h("div", {}, h("h3", {text: "promoted"}), list(le.top)), h("div", {}, h("h3", {text: "suppressed"}), list(le.bottom))));
  }

  function progressPanel() {
    const holder = h("div", {class: "cols"});
    function draw(xkey) {
      holder.replaceChildren(...[["best", "best activation"], ["quality", "frontier quality"]].map(([key, label]) => {
        const all = D.runs.flatMap((r) => r.progress[key]), xs = D.runs.flatMap((r) => r.progress[xkey]);
        const c = chart(420, 240, extent(xs, 0.02), extent(all), xkey === "seconds" ? "seconds" : "iteration", label);
        D.runs.forEach((r, i) => line(c, r.progress[xkey].map((x, j) => [x, r.progress[key][j]]).filter(([, y]) => y != null),
                                       {stroke: color(i), "stroke-width": 1.5}));
        return c.svg;
      }));
    }
    draw("iteration");
    const pick = h("p", {}, "x axis: ", ["iteration", "seconds"].map((k) => h("label", {}, h("input", {type: "radio", name: "xmode", value: k,
      onchange: () => draw(k), ...(k === "iteration" ? {checked: ""} : {})}), ` ${k} `)));
    return section("progress", "Progress over iterations", pick, holder);
  }

  function runsPanel() {
    const head = ["run", "seed", "iterations", "seconds", "best", "frontier quality", "git", "W&B", "differs", "folder"];
    return section("runs", "Runs", h("table", {}, h("thead", {}, h("tr", {}, head.map((t) => h("th", {text: t})))),
      h("tbody", {}, D.runs.map((r, i) => h("tr", {}, h("td", {style: `color:${color(i)}`, text: r.name}), h("td", {text: r.seed}),
        h("td", {text: r.iterations}), h("td", {text: fmt(r.seconds, 1)}), h("td", {text: fmt(r.best)}), h("td", {text: fmt(r.quality)}),
        h("td", {text: (r.git_sha || "?").slice(0, 10) + (r.git_dirty ? "+dirty" : "")}),
        h("td", {text: r.wandb_run_id ? `${r.wandb_run_id} (${r.wandb_mode})` : "–"}),
        h("td", {text: Object.entries(r.differs).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ") || "–"}),
        h("td", {class: "path", text: r.dir}))))));
  }

  document.title = `${D.target} · fluentdream`;
  put(app, {}, [header(), h("nav", {}, [["frontier", "frontier"], ["table", "prompts"], ["dataset", "dataset"],
    ["distribution", "distribution"], ["logits", "logit effects"], ["progress", "progress"], ["runs", "runs"]]
    .map(([id, t]) => h("a", {href: `#${id}`, text: t}))),
    frontierPanel(), frontierTable(), datasetPanel(), distributionPanel(), logitPanel(), progressPanel(), runsPanel(),
    h("footer", {text: D.generator})]);
  window.__fd.rendered = performance.now();
})();
