// Attribution-graph view on a canvas, as a Streamlit component (no build step, no network).
// Protocol: post streamlit:componentReady, receive streamlit:render {args}, post
// streamlit:setComponentValue / streamlit:setFrameHeight. Text is drawn with fillText or textContent.
(function () {
  "use strict";
  const send = (type, extra) => window.parent.postMessage(Object.assign({isStreamlitMessage: true, type}, extra), "*");
  const base = document.getElementById("base"), over = document.getElementById("over");
  const stage = document.getElementById("stage"), scroller = document.getElementById("scroll");
  const tip = document.getElementById("tip");
  let G = null, grid = null, hovered = -1, adj = null, nonce = 0;
  const CELL = 24;

  function setup(canvas, w, h) {
    const r = window.devicePixelRatio || 1;
    canvas.width = Math.ceil(w * r); canvas.height = Math.ceil(h * r);
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
    const ctx = canvas.getContext("2d"); ctx.setTransform(r, 0, 0, r, 0, 0); return ctx;
  }
  // payload y grows upwards from the plot's bottom; the canvas's grows downwards
  const sx = i => G.left + G.x[i], sy = i => G.top + G.plot_h - G.y[i];

  function edgeColour(w, alpha) { return (w >= 0 ? "rgba(44,127,184," : "rgba(215,48,31,") + alpha + ")"; }

  function drawNode(ctx, i, ring) {
    const x = sx(i), y = sy(i), r = G.r[i], k = G.kind[i];
    ctx.fillStyle = G.colour[i]; ctx.beginPath();
    if (k === "error") ctx.rect(x - r, y - r, 2 * r, 2 * r);
    else if (k === "embedding") { ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y); ctx.closePath(); }
    else if (k === "logit") { ctx.moveTo(x, y - r); ctx.lineTo(x + r, y + r * 0.8); ctx.lineTo(x - r, y + r * 0.8); ctx.closePath(); }
    else ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fill(); ctx.lineWidth = 0.6; ctx.strokeStyle = "#fff"; ctx.stroke();
    if (ring) { ctx.beginPath(); ctx.arc(x, y, r + 3, 0, 2 * Math.PI); ctx.lineWidth = 2; ctx.strokeStyle = ring; ctx.stroke(); }
  }

  function drawBase() {
    const ctx = setup(base, G.width, G.height);
    ctx.clearRect(0, 0, G.width, G.height);
    ctx.font = "11px sans-serif"; ctx.textBaseline = "middle";
    // layer bands and their names
    for (const b of G.bands) {
      const y0 = G.top + G.plot_h - b[2], y1 = G.top + G.plot_h - b[1];
      ctx.fillStyle = b[0] % 2 ? "rgba(128,128,128,0.05)" : "rgba(128,128,128,0.10)";
      ctx.fillRect(G.left, y0, G.plot_w, y1 - y0);
      ctx.fillStyle = "#555"; ctx.textAlign = "right"; ctx.fillText(b[3], G.left - 6, (y0 + y1) / 2);
    }
    // edges: thin, translucent, under the nodes (weakest first)
    const e = G.edges, top = G.edge_max || 1;
    for (let j = 0; j < e.length; j += 3) {
      const a = e[j], b = e[j + 1], w = e[j + 2], s = Math.abs(w) / top;
      ctx.strokeStyle = edgeColour(w, (0.06 + 0.3 * s).toFixed(3)); ctx.lineWidth = 0.4 + 1.2 * s;
      ctx.beginPath(); ctx.moveTo(sx(a), sy(a)); ctx.lineTo(sx(b), sy(b)); ctx.stroke();
    }
    for (let i = 0; i < G.n; i++) drawNode(ctx, i, G.ring[i] || null);
    // labels: logit/embedding tokens and shortened explanations where the layout left room
    ctx.fillStyle = "#222"; ctx.textAlign = "left";
    for (const [i, text] of G.labels) ctx.fillText(text, sx(i) + G.r[i] + 3, sy(i));
    // position labels under the plot
    ctx.textAlign = "center"; ctx.fillStyle = "#333";
    for (const [x, text] of G.positions) ctx.fillText(text, G.left + x, G.top + G.plot_h + 14);
  }

  function buildIndex() {
    grid = new Map(); adj = Array.from({length: G.n}, () => []);
    for (let i = 0; i < G.n; i++) {
      const key = Math.floor(sx(i) / CELL) + "," + Math.floor(sy(i) / CELL);
      if (!grid.has(key)) grid.set(key, []); grid.get(key).push(i);
    }
    for (let j = 0; j < G.edges.length; j += 3) { adj[G.edges[j]].push(j); adj[G.edges[j + 1]].push(j); }
  }

  function nodeAt(px, py) {
    const cx = Math.floor(px / CELL), cy = Math.floor(py / CELL);
    let best = -1, bestD = Infinity;
    for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) {
      for (const i of grid.get((cx + dx) + "," + (cy + dy)) || []) {
        const d = Math.hypot(sx(i) - px, sy(i) - py);
        if (d <= Math.max(G.r[i], G.slot / 2) && d < bestD) { best = i; bestD = d; }
      }
    }
    return best;
  }

  function drawHover(i) {
    const ctx = setup(over, G.width, G.height);
    ctx.clearRect(0, 0, G.width, G.height);
    base.dataset.hovered = i >= 0 ? G.ids[i] : "";
    base.dataset.highlighted = i >= 0 ? String(adj[i].length) : "0";
    if (i < 0) return;
    ctx.fillStyle = "rgba(255,255,255,0.75)"; ctx.fillRect(0, 0, G.width, G.height);  // dim the rest
    const top = G.edge_max || 1, near = new Set([i]);
    for (const j of adj[i]) {
      const a = G.edges[j], b = G.edges[j + 1], w = G.edges[j + 2];
      near.add(a); near.add(b);
      ctx.strokeStyle = edgeColour(w, 0.9); ctx.lineWidth = 1 + 2.5 * Math.abs(w) / top;
      ctx.beginPath(); ctx.moveTo(sx(a), sy(a)); ctx.lineTo(sx(b), sy(b)); ctx.stroke();
    }
    for (const k of near) drawNode(ctx, k, k === i ? "#ff8c00" : null);
  }

  function showTip(i, ev) {
    if (i < 0) { tip.style.display = "none"; return; }
    tip.textContent = G.title[i];
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 370) + "px";
    tip.style.top = (ev.clientY + 12) + "px";
  }

  // the position whose label is under the pointer (the strip below the plot), else -1
  function positionAt(px, py) {
    const y0 = G.top + G.plot_h;
    if (py < y0 || py > y0 + 26 || !G.positions.length) return -1;
    let best = -1, bestD = Infinity;
    G.positions.forEach(([x], p) => { const d = Math.abs(G.left + x - px); if (d < bestD) { best = p; bestD = d; } });
    const half = G.positions.length > 1 ? Math.abs(G.positions[1][0] - G.positions[0][0]) : G.plot_w;
    return bestD <= Math.max(half, 8) ? best : -1;
  }

  function showPositionTip(p, ev) {
    base.dataset.positionTip = p >= 0 ? G.position_tips[p] : "";
    if (p < 0) return false;
    tip.textContent = G.position_tips[p];
    tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 370) + "px";
    tip.style.top = (ev.clientY - 30) + "px";
    return true;
  }

  function local(ev) { const r = over.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; }

  over.addEventListener("mousemove", ev => {
    if (!G) return;
    const i = nodeAt(...local(ev));
    if (i !== hovered) { hovered = i; drawHover(i); }
    over.style.cursor = i >= 0 ? "pointer" : "default";
    if (i >= 0 || !showPositionTip(positionAt(...local(ev)), ev)) showTip(i, ev);
  });
  over.addEventListener("mouseleave", () => { hovered = -1; drawHover(-1); tip.style.display = "none"; });
  over.addEventListener("click", ev => {
    if (!G) return;
    const i = nodeAt(...local(ev));
    if (i < 0) return;
    nonce += 1;
    base.dataset.clicked = G.ids[i];
    send("streamlit:setComponentValue", {value: {id: G.ids[i], nonce: Date.now() + "-" + nonce}, dataType: "json"});
  });

  function render(args) {
    const t0 = performance.now();
    G = args.graph; G.n = G.ids.length;
    stage.style.width = G.width + "px"; stage.style.height = G.height + "px";
    buildIndex(); drawBase(); hovered = -1; drawHover(-1);
    base.dataset.nodes = String(G.n);
    base.dataset.selected = G.selected || "";
    base.dataset.drawMs = (performance.now() - t0).toFixed(1);
    window.graphCanvas = {  // a test hook: node centres in page coordinates of this frame
      centres: () => { const r = over.getBoundingClientRect();
        return {ids: G.ids, x: G.ids.map((_, i) => r.left + sx(i)), y: G.ids.map((_, i) => r.top + sy(i))}; },
      hover: i => drawHover(i),
      edges: () => { const out = [];
        for (let j = 0; j < G.edges.length; j += 3) out.push([G.ids[G.edges[j]], G.ids[G.edges[j + 1]]]);
        return out; },
      positions: () => G.positions.length,
      labelPoint: p => { const r = over.getBoundingClientRect();  // where position p's label is drawn
        return {x: r.left + G.left + G.positions[p][0], y: r.top + G.top + G.plot_h + 14}; },
    };
    send("streamlit:setFrameHeight", {height: G.height + (scroller.scrollWidth > scroller.clientWidth ? 18 : 4)});
  }

  window.addEventListener("message", ev => {
    if (ev.data && ev.data.type === "streamlit:render") render(ev.data.args);
  });
  send("streamlit:componentReady", {apiVersion: 1});
})();
