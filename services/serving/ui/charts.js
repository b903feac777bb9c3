// Small inline-SVG charts for the learning view: no library, no CDN.
// Each function replaces the contents of `el` with one <svg> (or an empty-state note).
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#db2777", "#7c3aed", "#0891b2", "#dc2626", "#65a30d",
                   "#ea580c", "#4f46e5", "#0d9488", "#be123c", "#a16207", "#9333ea", "#475569"];
  const W = 560, H = 220, M = { l: 46, r: 12, t: 12, b: 26 };

  function colorFor(name, names) {
    const i = names.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  function svg(w = W, h = H) {
    const s = document.createElementNS(NS, "svg");
    s.setAttribute("viewBox", `0 0 ${w} ${h}`);
    s.setAttribute("preserveAspectRatio", "xMidYMid meet");
    s.setAttribute("role", "img");
    return s;
  }

  function node(parent, tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    parent.appendChild(n);
    return n;
  }

  function empty(el, text) {
    el.replaceChildren();
    const p = document.createElement("p");
    p.className = "chart-empty";
    p.textContent = text;
    el.appendChild(p);
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v) return m * p;   // quarters stay round
    return 10 * p;
  }

  function clock(ts, withDate) {
    const d = new Date(ts * 1000);
    const hm = d.toTimeString().slice(0, 5);
    return withDate ? `${d.getMonth() + 1}/${d.getDate()} ${hm}` : hm;
  }

  // Axes + grid for a time x-axis [x0, x1] and a value y-axis [0, ymax].
  function frame(s, x0, x1, ymax, yfmt) {
    const iw = W - M.l - M.r, ih = H - M.t - M.b;
    const X = (t) => M.l + (x1 > x0 ? (t - x0) / (x1 - x0) : 0) * iw;
    const Y = (v) => M.t + ih - (Math.max(0, Math.min(v, ymax)) / ymax) * ih;
    for (let i = 0; i <= 4; i++) {
      const v = (ymax * i) / 4, y = Y(v);
      node(s, "line", { x1: M.l, x2: W - M.r, y1: y, y2: y, class: i ? "gridline" : "axisline" });
      node(s, "text", { x: M.l - 6, y: y + 4, class: "tick", "text-anchor": "end" }, yfmt(v));
    }
    const span = x1 - x0, withDate = span > 20 * 3600;
    for (let i = 0; i <= 4; i++) {
      const t = x0 + (span * i) / 4;
      node(s, "text", { x: X(t), y: H - 8, class: "tick", "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
           clock(t, withDate));
    }
    return { X, Y, iw, ih };
  }

  function legend(el, items) {
    const ul = document.createElement("ul");
    ul.className = "legend";
    for (const it of items) {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = it.color;
      li.appendChild(sw);
      li.appendChild(document.createTextNode(it.label));
      ul.appendChild(li);
    }
    el.appendChild(ul);
  }

  // series: [{name, color, values: [number|null]}], x: bin start times (s), binSeconds.
  function line(el, { x, binSeconds, series, yfmt = (v) => String(v), ymax, emptyText }) {
    const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined && isFinite(v));
    if (!all.length) return empty(el, emptyText || "No data in this window yet.");
    const s = svg();
    const top = ymax !== undefined ? ymax : niceMax(Math.max(...all) * 1.1);
    const f = frame(s, x[0], x[x.length - 1] + binSeconds, top, yfmt);
    for (const ser of series) {
      let d = "", pen = false;
      ser.values.forEach((v, i) => {
        if (v === null || v === undefined || !isFinite(v)) { pen = false; return; }
        const px = f.X(x[i] + binSeconds / 2), py = f.Y(v);
        d += `${pen ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`;
        pen = true;
        const c = node(s, "circle", { cx: px, cy: py, r: 2.6, fill: ser.color });
        node(c, "title", {}, `${ser.name} · ${clock(x[i])}: ${yfmt(v)}`);
      });
      if (d) node(s, "path", { d, fill: "none", stroke: ser.color, "stroke-width": 2, "stroke-linejoin": "round" });
    }
    el.replaceChildren(s);
    if (series.length > 1) legend(el, series.map((x) => ({ label: x.name, color: x.color })));
  }

  // 100%-stacked bars: stacks [{name, color, values: [count]}], one bar per bin.
  function stacked(el, { x, binSeconds, stacks, emptyText }) {
    const totals = x.map((_, i) => stacks.reduce((a, st) => a + (st.values[i] || 0), 0));
    if (!totals.some((t) => t > 0)) return empty(el, emptyText || "No searches in this window yet.");
    const s = svg();
    const f = frame(s, x[0], x[x.length - 1] + binSeconds, 1, (v) => `${Math.round(v * 100)}%`);
    const bw = Math.max(1, (f.iw / x.length) * 0.82);
    x.forEach((t, i) => {
      if (!totals[i]) return;
      let acc = 0;
      for (const st of stacks) {
        const v = st.values[i] || 0;
        if (!v) continue;
        const y0 = f.Y(acc / totals[i]), y1 = f.Y((acc + v) / totals[i]);
        const r = node(s, "rect", { x: f.X(t) + (f.iw / x.length - bw) / 2, y: y1, width: bw,
                                    height: Math.max(0.5, y0 - y1), fill: st.color });
        node(r, "title", {}, `${st.name} · ${clock(t)}: ${v} of ${totals[i]} (${Math.round((100 * v) / totals[i])}%)`);
        acc += v;
      }
    });
    el.replaceChildren(s);
    legend(el, stacks.map((st) => ({ label: `${st.name} ${st.total !== undefined ? "· " + st.total : ""}`, color: st.color })));
  }

  // Horizontal bars: rows [{label, value, note, color}] or grouped rows [{label, values: [..]}] with groups.
  function hbars(el, { rows, groups, vfmt = (v) => String(v), vmax, emptyText }) {
    const vals = rows.flatMap((r) => (r.values || [r.value])).filter((v) => v !== null && v !== undefined && isFinite(v));
    if (!rows.length || !vals.length) return empty(el, emptyText || "No data in this window yet.");
    const n = groups ? groups.length : 1;
    const rowH = n > 1 ? 10 * n + 10 : 26, labelW = 180, noteW = 110;
    const h = rows.length * rowH + 8;
    const w = W;
    const s = svg(w, h);
    const top = vmax !== undefined ? vmax : niceMax(Math.max(...vals));
    const iw = w - labelW - noteW - 8;
    rows.forEach((r, i) => {
      const y = 4 + i * rowH;
      node(s, "text", { x: labelW - 8, y: y + rowH / 2 + 4, class: "label", "text-anchor": "end" }, r.label);
      node(s, "rect", { x: labelW, y: y + 3, width: iw, height: rowH - 6, class: "track" });
      const vs = r.values || [r.value];
      vs.forEach((v, j) => {
        if (v === null || v === undefined || !isFinite(v)) return;
        const bh = (rowH - 8) / n;
        const b = node(s, "rect", { x: labelW, y: y + 4 + j * bh, width: Math.max(1, (Math.min(v, top) / top) * iw),
                                    height: Math.max(2, bh - 1), fill: groups ? groups[j].color : (r.color || PALETTE[0]) });
        node(b, "title", {}, `${r.label}${groups ? " " + groups[j].name : ""}: ${vfmt(v)}`);
      });
      node(s, "text", { x: w - noteW + 4, y: y + rowH / 2 + 4, class: "note" }, r.note !== undefined ? r.note : vs.map(vfmt).join(" / "));
    });
    el.replaceChildren(s);
    if (groups) legend(el, groups.map((g) => ({ label: g.name, color: g.color })));
  }

  return { line, stacked, hbars, colorFor, PALETTE, clock };
})();
