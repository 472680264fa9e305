// The comparison page: fills the index picker from the cluster's _cat APIs and runs
// POST api/search. Every request goes to the proxy that served this page (relative URLs),
// with the browser's own credentials; nothing is loaded from anywhere else. Text from the
// cluster is only ever set as text (textContent), never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("compare-form");
  const status = $("status");
  const results = $("results");
  const summary = $("summary");
  const lists = { engine: $("engine-list"), reranked: $("reranked-list") };
  // The page lives at <proxy>/_rerank_proxy/compare/: the cluster's APIs are two levels up.
  const clusterUrl = (path) => new URL("../../" + path, document.baseURI).toString();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function say(message, kind) {
    status.textContent = message;
    status.className = "status" + (kind ? " status-" + kind : "");
  }

  function errorText(httpStatus, doc) {
    const error = doc && doc.error;
    if (error && typeof error === "object") {
      const root = Array.isArray(error.root_cause) && error.root_cause[0];
      const reason = error.reason || (root && root.reason) || "";
      return `HTTP ${httpStatus}: ${error.type || "error"}${reason ? ": " + reason : ""}`;
    }
    if (typeof error === "string") return `HTTP ${httpStatus}: ${error}`;
    return `HTTP ${httpStatus}`;
  }

  async function getJSON(url, options) {
    const resp = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      ...options,
    });
    let doc = null;
    try {
      doc = await resp.json();
    } catch (_) {
      doc = null;
    }
    if (!resp.ok) {
      const err = new Error(errorText(resp.status, doc));
      err.status = resp.status;
      throw err;
    }
    return doc;
  }

  // -- the index picker ---------------------------------------------------------------

  async function loadTargets() {
    const hint = $("index-hint");
    const [aliases, indices] = await Promise.allSettled([
      getJSON(clusterUrl("_cat/aliases?format=json&h=alias,index")),
      getJSON(clusterUrl("_cat/indices?format=json&h=index,docs.count&s=index")),
    ]);
    const options = new Map();
    if (aliases.status === "fulfilled" && Array.isArray(aliases.value)) {
      for (const row of aliases.value) {
        if (!row.alias || row.alias.startsWith(".")) continue;
        const targets = options.get(row.alias) || [];
        options.set(row.alias, targets.concat(row.index ? [row.index] : []));
      }
    }
    const aliasNames = [...options.keys()].sort();
    const indexRows = [];
    if (indices.status === "fulfilled" && Array.isArray(indices.value)) {
      for (const row of indices.value) {
        if (row.index && !row.index.startsWith(".")) indexRows.push(row);
      }
    }
    const datalist = $("index-options");
    datalist.replaceChildren();
    for (const name of aliasNames) {
      datalist.append(el("option", { value: name, label: `alias of ${options.get(name).join(", ")}` }));
    }
    for (const row of indexRows) {
      const docs = row["docs.count"];
      datalist.append(el("option", { value: row.index, label: docs ? `index, ${docs} docs` : "index" }));
    }
    const failed = [aliases, indices].filter((r) => r.status === "rejected");
    if (failed.length) {
      hint.textContent = `The cluster did not list its indices for you (${failed[0].reason.message}); type a name.`;
    } else {
      const count = aliasNames.length + indexRows.length;
      const aliasWord = aliasNames.length === 1 ? "alias" : "aliases";
      const indexWord = indexRows.length === 1 ? "index" : "indices";
      hint.textContent = count
        ? `${aliasNames.length} ${aliasWord} and ${indexRows.length} ${indexWord}: start typing or press the down arrow.`
        : "The cluster lists no index for you; type a name.";
    }
    datalist.dataset.loaded = "true";
  }

  // -- running a comparison -----------------------------------------------------------

  function payload() {
    const index = $("index").value.trim();
    const query = $("query").value.trim();
    const bodyText = $("body").value.trim();
    const queryId = $("query-id").value.trim();
    const size = Number($("size").value || 10);
    if (!index) return { error: "Choose an index or alias first.", focus: "index" };
    if (!Number.isInteger(size) || size < 1 || size > 100) {
      return { error: "Hits must be a whole number from 1 to 100.", focus: "size" };
    }
    const out = { index, size };
    if (bodyText) {
      try {
        out.body = JSON.parse(bodyText);
      } catch (exc) {
        $("body-details").open = true;
        return { error: `The search body is not valid JSON: ${exc.message}`, focus: "body" };
      }
    }
    if (query) out.query = query;
    if (!query && !bodyText) return { error: "Type a query (or paste a search body).", focus: "query" };
    if (queryId) out.query_id = queryId;
    return { request: out };
  }

  let running = 0;

  async function run() {
    const made = payload();
    if (made.error) {
      say(made.error, "error");
      $(made.focus).focus();
      return;
    }
    const ticket = ++running;
    $("run").disabled = true;
    results.setAttribute("aria-busy", "true");
    say("Comparing…", "busy");
    try {
      const answer = await getJSON("api/search", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(made.request),
      });
      if (ticket !== running) return;
      render(answer);
      say(doneMessage(answer), answer.rerank.state === "applied" ? "ok" : "warn");
    } catch (exc) {
      if (ticket !== running) return;
      results.hidden = true; // an earlier answer must not pass for this one
      say(`The comparison did not run. ${exc.message}`, "error");
    } finally {
      if (ticket === running) {
        $("run").disabled = false;
        results.setAttribute("aria-busy", "false");
      }
    }
  }

  function moved(rows) {
    return rows.filter((r) => r.movement !== "same").length;
  }

  function doneMessage(a) {
    const n = a.reranked.length;
    if (a.rerank.state !== "applied") {
      return `Not reranked (${a.rerank.state}: ${a.rerank.reason}); ${a.engine.length} engine hits shown.`;
    }
    const fresh = a.reranked.filter((r) => r.movement === "new").length;
    return `Done: ${n} hits in each column; ${moved(a.reranked)} changed place, ${fresh} new in the top ${a.size}.`;
  }

  const fmt = (x, digits) => (typeof x === "number" ? x.toFixed(digits) : "–");
  const ms = (x) => `${fmt(x, x < 10 ? 1 : 0)} ms`;

  function renderSummary(a) {
    const parts = [];
    parts.push(
      el("p", {},
        "Query ", el("q", { text: a.query }), " on ", el("strong", { text: a.index }),
        ` (rule ${a.rule.name}, ${a.rule.score_mode} scores). Model `, el("code", { text: a.model || "none" }),
        ` scored ${a.scored} of ${a.window} hits; engine ${ms(a.took_ms.engine)}, rerank ${ms(a.took_ms.rerank)}.`)
    );
    if (!a.rule.enabled || a.rule.mode !== "rerank") {
      parts.push(el("p", { class: "note" },
        `Clients do not get this order yet (rule ${a.rule.enabled ? "mode " + a.rule.mode : "disabled"}): ` +
        "this shows what turning reranking on would do."));
    }
    if (a.rerank.state !== "applied") {
      parts.push(el("p", { class: "note note-warn" },
        `Not reranked: ${a.rerank.state} (${a.rerank.reason}). Clients get the engine's order.`));
    }
    const j = a.judgments;
    if (j && j.query_id !== null && a.metrics) {
      const e = a.metrics.engine;
      const r = a.metrics.reranked;
      parts.push(el("p", { class: "judged" },
        `Judged query ${j.query_id} (matched by ${j.matched_by === "text" ? "text" : "id"}, ${j.relevant} relevant): ` +
        `nDCG@${a.metrics.k} engine ${fmt(e.ndcg, 3)} → reranked ${fmt(r.ndcg, 3)}; ` +
        `relevant in the top ${a.metrics.k}: ${e.relevant} → ${r.relevant}.`));
    } else if (j) {
      parts.push(el("p", { class: "judged" }, "No judgments for this query: give its query id, or type its text as the qrels' queries file has it."));
    }
    parts.push(el("p", { class: "legend" },
      "▲ / ▼: how far the reranker moved a hit; ★ new: not in the engine's top " +
      `${a.size}; ↓ out: not in the reranked top ${a.size}. The text is what the model scored.`));
    parts.push(el("details", { class: "sent" },
      el("summary", { text: "Search sent to the engine" }),
      el("pre", { text: JSON.stringify(a.search, null, 2) })));
    summary.replaceChildren(...parts);
  }

  const MOVES = {
    up: ["▲", (r) => `up ${r.delta}`, (r) => `moved up ${r.delta}, engine rank ${r.engine_rank}`],
    down: ["▼", (r) => `down ${-r.delta}`, (r) => `moved down ${-r.delta}, engine rank ${r.engine_rank}`],
    same: ["=", () => "same", () => "same rank"],
    new: ["★", (r) => `new, was ${r.engine_rank}`, (r) => `new in the top, engine rank ${r.engine_rank}`],
    out: ["↓", () => "out", () => "not in the reranked top"],
  };

  function gradeBadge(row, judged) {
    if (!judged) return null;
    if (row.judgment === null) return el("span", { class: "grade grade-none", text: "unjudged" });
    const cls = row.judgment > 0 ? "grade grade-rel" : "grade grade-non";
    return el("span", { class: cls, text: row.judgment > 0 ? `relevant (${row.judgment})` : "not relevant" });
  }

  function hitItem(row, column, judged, scoreMode) {
    const [glyph, short, long] = MOVES[row.movement];
    const text = row.text || "";
    const snippet = text.length > 220 ? text.slice(0, 220).trimEnd() + "…" : text;
    const otherRank = column === "engine" ? row.reranked_rank : row.engine_rank;
    return el("li", { class: `hit move-${row.movement}`, "data-id": row.id, "data-index": row.index },
      el("div", { class: "hit-head" },
        el("span", { class: "rank", text: row.rank }),
        el("span", { class: `move move-${row.movement}`, title: long(row) },
          el("span", { "aria-hidden": "true", text: `${glyph} ${short(row)}` }),
          el("span", { class: "visually-hidden", text: long(row) })),
        el("span", { class: "doc-id", text: row.id }),
        gradeBadge(row, judged)),
      el("p", { class: "scores" },
        el("span", {}, "engine ", el("b", { text: fmt(row.engine_score, 3) })),
        el("span", {}, scoreMode === "blend" ? "blend " : "model ", el("b", { text: fmt(row.model_score, 4) })),
        el("span", { class: "other-rank" }, column === "engine" ? "reranked #" : "engine #",
          el("b", { text: otherRank === null ? "–" : otherRank }))),
      text
        ? el("p", { class: "snippet", text: snippet })
        : el("p", { class: "snippet snippet-none", text: "No text: the model did not score this hit." }),
      text
        ? el("details", { class: "seen" },
            el("summary", { text: "Text the model saw" }),
            el("p", { class: "seen-text", text }))
        : null);
  }

  function render(a) {
    renderSummary(a);
    const judged = a.judgments !== null && a.judgments.query_id !== null;
    for (const column of ["engine", "reranked"]) {
      lists[column].replaceChildren(...a[column].map((row) => hitItem(row, column, judged, a.rule.score_mode)));
    }
    $("engine-title").textContent = `Engine order (top ${a.engine.length})`;
    $("reranked-title").textContent = `Reranked (top ${a.reranked.length})`;
    results.hidden = false;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  $("body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  loadTargets().catch((exc) => {
    $("index-hint").textContent = `Could not list indices (${exc.message}); type a name.`;
  });
})();
