// rbn-serve A/B workbench: vanilla JavaScript, no library, every request to this page's own origin.
"use strict";
(() => {
  const KEY = "rbn-serve-api-key"; // sessionStorage: this tab only
  const SAMPLE_SETS = ["fashion-mnist", "photos"]; // folders of /samples, each with a labels.json
  const SWEEP_CONCURRENCY = 8;
  const SUMMARY_EVERY_MS = 5000;
  const $ = (id) => document.getElementById(id);
  const state = { images: [], current: -1, models: [], corruptions: [], seq: 0, samples: new Map() };

  // --- elements, built without innerHTML so file names never become markup --------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name === "style") Object.assign(node.style, value); // CSSOM, which the page's CSP allows
      else node.setAttribute(name, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }
  function svg(tag, attrs = {}) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }
  const pct = (p) => (p == null ? "–" : `${(100 * p).toFixed(1)}%`);
  const fixed = (x, digits = 3) => (x == null ? "–" : Number(x).toFixed(digits));
  function setStatus(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  // --- the API, with the key flow: a 401 carrying WWW-Authenticate: Bearer asks for the key ---
  let keyPrompt = null;
  async function api(path, init = {}) {
    for (;;) {
      const used = sessionStorage.getItem(KEY);
      const headers = { ...(init.headers || {}) };
      if (used) headers.Authorization = `Bearer ${used}`;
      const res = await fetch(path, { ...init, headers });
      if (res.status !== 401 || !/bearer/i.test(res.headers.get("WWW-Authenticate") || "")) return res;
      if (sessionStorage.getItem(KEY) !== used) continue; // another call has just been given a key
      await askKey(used ? "The server refused that key." : "");
    }
  }
  function askKey(message) {
    if (!keyPrompt) {
      keyPrompt = new Promise((resolve, reject) => {
        const dialog = $("key-dialog");
        $("key-error").textContent = message;
        $("key-input").value = "";
        // Escape cancels: what was typed is not a key the user chose to send
        dialog.addEventListener("cancel", () => { $("key-input").value = ""; }, { once: true });
        dialog.addEventListener("close", () => {
          const key = $("key-input").value.trim();
          keyPrompt = null;
          if (key) {
            sessionStorage.setItem(KEY, key);
            $("forget-key").hidden = false;
            resolve();
          } else reject(new Error("this server needs an API key"));
        }, { once: true });
        dialog.showModal();
        $("key-input").focus();
      });
    }
    return keyPrompt;
  }
  async function json(res) {
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error((body.error && (body.error.message || body.error)) || `HTTP ${res.status}`);
    return body;
  }

  // --- images: chosen, dropped, pasted or picked from the shipped samples ---------------------
  function addImage(blob, name, label = null) {
    const image = { blob, name, label, url: URL.createObjectURL(blob) };
    state.images.push(image);
    const button = el("button", { type: "button", "aria-label": name, title: name, "aria-pressed": "false" },
      el("img", { src: image.url, alt: "" }));
    button.addEventListener("click", () => select(state.images.indexOf(image)));
    $("images").append(button);
    select(state.images.length - 1);
  }
  function addFiles(files) {
    performance.mark("rbn-upload"); // bench/web_bench.py times upload -> first result on screen from here
    const images = [...files].filter((f) => f.type.startsWith("image/") || f.type === "");
    if (!images.length) return setStatus("No image among the files given.", true);
    for (const file of images) addImage(file, file.name || "pasted image");
  }
  function select(index) {
    state.current = index;
    [...$("images").children].forEach((b, i) => b.setAttribute("aria-pressed", String(i === index)));
    const image = state.images[index];
    if (image.label != null) $("label").value = String(image.label);
    $("sweep").disabled = false;
    compare();
  }
  async function loadSamples() {
    const select = $("sample");
    for (const set of SAMPLE_SETS) {
      const res = await fetch(`/samples/${set}/labels.json`);
      if (!res.ok) continue;
      const group = el("optgroup", { label: set });
      for (const item of await res.json()) {
        const value = `${set}/${item.file}`;
        state.samples.set(value, item.label);
        group.append(el("option", { value, text: `${item.file} (${item.label_name})` }));
      }
      select.append(group);
    }
  }
  async function pickSample() {
    const value = $("sample").value;
    if (!value) return;
    const res = await fetch(`/samples/${value}`);
    if (!res.ok) return setStatus(`Cannot load sample ${value}: HTTP ${res.status}`, true);
    addImage(await res.blob(), value.split("/").pop(), state.samples.get(value));
  }

  // --- one comparison: POST /ab with the image as the raw body ---------------------------------
  function pairModel() { return state.models.find((m) => m.name === $("pair").value); }
  function params(extra = {}) {
    // every label (the sweep reads the label's probability), within /ab's top_k cap of 1000
    const out = { model: $("pair").value, top_k: String(Math.min(pairModel().labels.length, 1000)), ...extra };
    if ($("label").value !== "") out.label = $("label").value;
    return out;
  }
  async function postAb(image, query) {
    const res = await api(`/ab?${new URLSearchParams(query)}`, {
      method: "POST", body: image.blob, headers: { "Content-Type": image.blob.type || "application/octet-stream" },
    });
    return json(res);
  }
  async function compare() {
    const image = state.images[state.current];
    if (!image || !pairModel()) return;
    const corruption = $("corruption").value;
    const query = params({ input_png: "true" });
    if (corruption) Object.assign(query, { corruption, severity: $("severity").value });
    const seq = ++state.seq;
    const start = performance.now();
    setStatus("Comparing…");
    try {
      const answer = await postAb(image, query);
      if (seq !== state.seq) return; // a newer request owns the screen
      render(answer, image);
      if (performance.getEntriesByName("rbn-upload", "mark").length) {
        requestAnimationFrame(() => { // the frame that shows it
          performance.measure("rbn-upload-to-result", "rbn-upload");
          performance.clearMarks("rbn-upload");
        });
      }
      const ms = performance.now() - start;
      $("result").dataset.ms = ms.toFixed(1);
      $("result").dataset.seq = String(seq);
      setStatus(`Answered in ${ms.toFixed(0)} ms (server ${answer.timings.total_ms.toFixed(1)} ms).`);
      refreshSummary();
    } catch (err) {
      if (seq !== state.seq) return;
      // the previous image's result must not stay on screen as if it answered this one
      $("arm-rbn").replaceChildren();
      $("arm-baseline").replaceChildren();
      $("ood-help").hidden = true;
      delete $("result").dataset.seq;
      $("verdict").replaceChildren(el("b", { class: "bad", text: `No result for ${image.name}: ${err.message}` }));
      $("verdict").setAttribute("role", "alert");
      setStatus(`Comparison failed: ${err.message}`, true);
      $("verdict").scrollIntoView({ block: "center" }); // on a phone the result area may be below the fold
    }
  }

  function render(answer, image) {
    const result = answer.results[0];
    const { rbn, baseline } = result.arms;
    const shift = answer.corruption ? `${answer.corruption.name.replaceAll("_", " ")}, severity ${answer.corruption.severity}` : "no corruption";
    const verdict = $("verdict");
    verdict.removeAttribute("role");
    verdict.replaceChildren(
      // agreeing on a wrong answer is not good news: green only when the label (if given) agrees too
      result.agree ? el("b", { class: answer.label && result.winner === "neither" ? "bad" : "ok", text: `Both arms say ${rbn.label}.` })
        : el("b", { class: "bad", text: `The arms disagree: RBN ${rbn.label}, baseline ${baseline.label}.` }),
      ` ${image.name}, ${shift}.`,
      answer.label ? ` Label ${answer.label.name}: ${{ both: "both right", neither: "both wrong", rbn: "only RBN right", baseline: "only the baseline right" }[result.winner]}.` : "",
    );
    verdict.append(el("dl", { class: "compare" },
      el("div", {}, el("dt", { text: "agree" }), el("dd", { id: "agree", text: result.agree ? "yes" : "no" })),
      el("div", {}, el("dt", { text: "L1 distance" }), el("dd", { id: "l1", text: fixed(result.l1_distance) })),
      el("div", {}, el("dt", { text: "KL(RBN‖baseline)" }), el("dd", { id: "kl", text: `${fixed(result.kl_divergence, 4)} nats` })),
    ));
    renderArm($("arm-rbn"), "RBN", rbn, result, "rbn");
    renderArm($("arm-baseline"), "Baseline (BN)", baseline, result, "baseline");
    $("ood-help").hidden = false;
  }

  // The model's input as a PNG: a 28x28 one blown up with square pixels, a photo model's (e.g. 224x224 RGB) smoothly.
  function seenImage(png, alt) {
    const img = el("img", { src: `data:image/png;base64,${png}`, alt, class: "seen" });
    img.addEventListener("load", () => { if (img.naturalWidth > 84 || img.naturalHeight > 84) img.classList.add("photo"); });
    return img;
  }

  function renderArm(node, title, arm, result, side) {
    const correct = result.correct ? (result.correct[side] ? " · right" : " · wrong") : "";
    const ood = arm.ood;
    const flagged = ood.flag === true;
    const bars = el("ul", { class: "bars", "aria-label": `${title} top classes` });
    for (const t of arm.top_k.slice(0, 5)) {
      bars.append(el("li", {},
        el("span", { class: "name", text: t.label, title: t.label }),
        el("span", { class: "track", role: "presentation" }, el("span", { class: "fill", style: { width: pct(t.probability) } })),
        el("span", { class: "value", text: pct(t.probability) })));
    }
    const oodBlock = el("div", { class: "ood" },
      el("div", {}, "OOD score ", el("b", { class: "score", text: fixed(ood.score, 2) }), ` / threshold ${fixed(ood.threshold, 2)} `,
        el("span", { class: `flag ${flagged ? "out" : "in"}`, text: ood.flag == null ? "uncalibrated" : flagged ? "flagged" : "in distribution" })));
    if (ood.calibrated === false) {  // a bundle fitted on nothing: the score is the logits' energy, never flagged
      oodBlock.append(el("small", { class: "legend", title: ood.reason || "",
        text: `Uncalibrated ${ood.method || ""} score: this model's bundle has no OOD calibration, so nothing is flagged.` }));
    }
    if (ood.score != null && ood.threshold != null) {
      // A scale from the lower of (score, 0) to twice the threshold (or the score, if above).
      const lo = Math.min(0, ood.score), hi = Math.max(2 * ood.threshold, ood.score, lo + 1e-6);
      const at = (x) => `${(100 * (x - lo) / (hi - lo)).toFixed(1)}%`;
      oodBlock.append(el("div", { class: "track", role: "img", "aria-label": `score ${fixed(ood.score, 2)} against threshold ${fixed(ood.threshold, 2)}` },
        el("span", { class: "threshold", style: { left: at(ood.threshold) } }), el("span", { class: "mark", style: { left: at(ood.score) } })),
      el("small", { class: "legend" }, el("i", { class: "tick tick-score" }), " this image ", el("i", { class: "tick tick-threshold" }), " threshold"));
      if (flagged) oodBlock.append(el("small", { class: "advice", text: "Unlike the training images: do not trust this label (see below)." }));
    }
    node.replaceChildren(
      el("h3", { text: `${title}: ${arm.model} v${arm.version}` }),
      el("div", { class: "input" },
        result.input_png ? seenImage(result.input_png, `${title} input as the model saw it`) : null,
        el("div", { class: "answer" }, el("span", { class: "predicted", text: arm.label }), " ",
          el("span", { class: "probability", text: pct(arm.probability) }),
          el("small", { text: `top-1${correct}` }))),
      bars, oodBlock);
  }

  // --- the sweep: every corruption x severity 1-5 for one image -------------------------------
  async function sweep() {
    const image = state.images[state.current];
    if (!image) return;
    const button = $("sweep");
    button.disabled = true;
    const start = performance.now();
    try {
      const clean = (await postAb(image, params())).results[0];
      // Both arms are read on the same class: the label, or without one the RBN arm's clean answer (each arm's
      // own answer would plot two different classes when they disagree, and a confidently wrong arm would look robust).
      const labelled = $("label").value !== "";
      const index = labelled ? Number($("label").value) : clean.arms.rbn.index;
      const target = { rbn: index, baseline: index };
      const className = pairModel().labels[index];
      const jobs = [];
      for (const corruption of state.corruptions) for (let severity = 1; severity <= 5; severity++) jobs.push({ corruption, severity });
      const curves = new Map(state.corruptions.map((c) => [c, { rbn: [], baseline: [] }]));
      let done = 0, next = 0;
      const prob = (arm, index) => (arm.top_k.find((t) => t.index === index) || { probability: 0 }).probability;
      async function worker() {
        while (next < jobs.length) {
          const job = jobs[next++];
          const result = (await postAb(image, params({ corruption: job.corruption, severity: String(job.severity) }))).results[0];
          const curve = curves.get(job.corruption);
          curve.rbn[job.severity - 1] = prob(result.arms.rbn, target.rbn);
          curve.baseline[job.severity - 1] = prob(result.arms.baseline, target.baseline);
          done++;
          if (done % 5 === 0) setStatus(`Sweep: ${done} / ${jobs.length}`);
        }
      }
      await Promise.all(Array.from({ length: SWEEP_CONCURRENCY }, worker));
      const ms = performance.now() - start;
      drawSweep(curves, labelled ? `the label, ${className}` : `the RBN arm's answer on the clean image, ${className}`);
      $("sweep-section").dataset.ms = ms.toFixed(1);
      $("sweep-section").dataset.count = String(jobs.length);
      setStatus(`Sweep of ${jobs.length} comparisons in ${(ms / 1000).toFixed(2)} s.`);
      refreshSummary();
    } catch (err) {
      setStatus(`Sweep failed: ${err.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  function drawSweep(curves, what) {
    const plots = $("sweep-plots");
    plots.replaceChildren();
    $("sweep-caption").textContent = `Confidence of both arms in ${what}, at severity 1–5 of each corruption.`;
    const W = 150, H = 92, L = 24, R = 6, T = 6, B = 16;
    const x = (s) => L + (s - 1) * (W - L - R) / 4, y = (p) => T + (1 - p) * (H - T - B);
    for (const [corruption, curve] of curves) {
      const name = corruption.replaceAll("_", " ");
      const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
        "aria-label": `${name}: RBN ${curve.rbn.map((p) => p.toFixed(2)).join(", ")}; baseline ${curve.baseline.map((p) => p.toFixed(2)).join(", ")}` });
      for (const p of [0, 0.5, 1]) {
        plot.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#d0d7de", "stroke-width": 1 }));
        const t = svg("text", { x: L - 3, y: y(p) + 3, "text-anchor": "end", "font-size": 8, fill: "#57606a" });
        t.textContent = p.toFixed(1);
        plot.append(t);
      }
      for (let s = 1; s <= 5; s++) {
        const t = svg("text", { x: x(s), y: H - 4, "text-anchor": "middle", "font-size": 8, fill: "#57606a" });
        t.textContent = String(s);
        plot.append(t);
      }
      for (const [side, colour, dash] of [["baseline", "#c2410c", "4 2"], ["rbn", "#0b63c5", ""]]) {
        const points = curve[side].map((p, i) => `${x(i + 1).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
        plot.append(svg("polyline", { points, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": dash }));
        curve[side].forEach((p, i) => plot.append(svg("circle", { cx: x(i + 1), cy: y(p), r: 2, fill: colour })));
      }
      plots.append(el("figure", { "data-corruption": corruption }, plot, el("figcaption", { text: name })));
    }
  }

  // --- the A/B summary, refreshed while the page is visible -----------------------------------
  let summaryBusy = false;
  async function refreshSummary() {
    if (summaryBusy) return;
    summaryBusy = true;
    try {
      const summary = await json(await api("/ab/summary"));
      const interval = (r) => (r ? `${pct(r.value)} [${pct(r.low)}–${pct(r.high)}]` : "–");
      $("summary").tBodies[0].replaceChildren(...summary.rows.map((row) => el("tr", {},
        el("td", { text: row.model, title: `${row.model} vs ${row.baseline}` }),
        el("td", { text: row.corruption.replaceAll("_", " ") }),
        el("td", { text: row.severity ? String(row.severity) : "–" }),
        el("td", { text: String(row.comparisons) }),
        el("td", { text: interval(row.agreement) }),
        el("td", { text: String(row.labelled) }),
        el("td", { text: interval(row.accuracy && row.accuracy.rbn) }),
        el("td", { text: interval(row.accuracy && row.accuracy.baseline) }))));
      $("summary-count").textContent = `${summary.comparisons} comparisons in ${summary.rows.length} rows.`;
      $("summary-count").dataset.count = String(summary.comparisons);
      $("summary-since").textContent = `since ${summary.since.replace("T", " ").replace("Z", " UTC")}`;
      scrollHint();
    } catch (err) {
      $("summary-count").textContent = `Summary unavailable: ${err.message}`;
    } finally {
      summaryBusy = false;
    }
  }

  function scrollHint() { // say so when the table is wider than its box (a phone shows half the columns)
    const wrap = $("summary-wrap");
    $("summary-scroll").hidden = wrap.scrollWidth <= wrap.clientWidth + 1;
  }

  // --- start-up -----------------------------------------------------------------------------
  function fillLabels() {
    const model = pairModel();
    $("pair-baseline").textContent = model ? `against its baseline ${model.baseline}` : "";
    const keep = $("label").value;
    $("label").replaceChildren(el("option", { value: "", text: "unknown" }),
      ...(model ? model.labels : []).map((name, i) => el("option", { value: String(i), text: name })));
    $("label").value = keep;
  }
  async function loadModels() {
    const answer = await json(await api("/models"));
    state.models = answer.models;
    const pairs = answer.models.filter((m) => m.baseline && m.baseline_loaded);
    $("pair").replaceChildren(...pairs.map((m) => el("option", { value: m.name, text: m.name })));
    if (pairs.some((m) => m.name === answer.primary)) $("pair").value = answer.primary;
    if (!pairs.length) setStatus("No model here has a loaded baseline: /ab is unavailable.", true);
    fillLabels();
  }
  function noteWorkers() { // with --workers each process keeps its own table: say so rather than let counts jump unexplained
    $("summary-workers").hidden = !(Number(document.body.dataset.workers) > 1);
  }
  function loadCorruptions() {
    state.corruptions = document.body.dataset.corruptions.split(",").filter(Boolean); // written in by the server
    $("corruption").append(...state.corruptions.map((c) => el("option", { value: c, text: c.replaceAll("_", " ") })));
  }

  function bind() {
    // The input keeps showing the chosen file; it is emptied when clicked, so the same file can be chosen again.
    $("file").addEventListener("change", (e) => addFiles(e.target.files));
    $("file").addEventListener("click", (e) => { e.target.value = ""; });
    window.addEventListener("resize", scrollHint);
    const drop = $("drop");
    document.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
    document.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
    document.addEventListener("paste", (e) => { if (e.clipboardData && e.clipboardData.files.length) addFiles(e.clipboardData.files); });
    $("sample").addEventListener("change", pickSample);
    $("pair").addEventListener("change", () => { fillLabels(); compare(); });
    $("corruption").addEventListener("change", () => { $("severity").disabled = !$("corruption").value; compare(); });
    $("severity").addEventListener("input", () => { $("severity-value").textContent = $("severity").value; compare(); });
    $("label").addEventListener("change", compare);
    $("sweep").addEventListener("click", sweep);
    $("forget-key").hidden = !sessionStorage.getItem(KEY);
    $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); $("forget-key").hidden = true; });
    setInterval(() => { if (document.visibilityState === "visible") refreshSummary(); }, SUMMARY_EVERY_MS);
  }

  async function start() {
    bind();
    try {
      await loadModels();
      loadCorruptions();
      noteWorkers();
      await Promise.all([loadSamples(), refreshSummary()]);
      document.body.dataset.ready = "true";
    } catch (err) {
      setStatus(`Cannot start: ${err.message}`, true);
    }
  }
  start();
})();
