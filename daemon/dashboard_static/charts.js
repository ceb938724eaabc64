// Line charts on a canvas, no library: a few series sharing the x axis (time), each with its
// own colour; the y range covers every finite point. The canvas records how many points it drew
// (data-points) so that a test can see the chart is not empty. The legend is HTML, in the
// element "<canvas id>-legend": one entry per series, its name set as text (a source's name is
// the daemon's string, never markup), with the points it drew (data-points); it wraps where
// many sources would have run off the canvas.
"use strict";

function legend(canvas, series, counts) {
  const box = document.getElementById(`${canvas.id}-legend`);
  if (!box) return;
  box.replaceChildren(
    ...series.map((s, i) => {
      const entry = document.createElement("span");
      entry.className = counts[i] ? "series" : "series empty"; // no point to draw yet
      entry.dataset.name = s.name;
      entry.dataset.points = String(counts[i]);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = s.name;
      entry.append(swatch, name);
      return entry;
    }),
  );
}

function niceTime(t) {
  const d = new Date(t * 1000);
  return d.toTimeString().slice(0, 8);
}

function fmt(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 0.01) return v.toFixed(2);
  return v.toExponential(1);
}

// series: [{name, color, points: [[x, y], ...]}]
function drawChart(canvas, series) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  const L = 60, R = 12, T = 10, B = 24;
  ctx.clearRect(0, 0, W, H);
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity, count = 0;
  const counts = series.map((s) => {
    let n = 0;
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
      ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
      n++;
    }
    count += n;
    return n;
  });
  canvas.dataset.points = String(count);
  legend(canvas, series, counts);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#8a96a3";
  if (count === 0) {
    ctx.fillText("no data yet", W / 2 - 30, H / 2);
    return;
  }
  if (xmax === xmin) { xmin -= 1; xmax += 1; }
  if (ymax === ymin) {
    const pad = Math.abs(ymin) * 0.1 || 1;
    ymin -= pad;
    ymax += pad;
  }
  const px = (x) => L + ((x - xmin) / (xmax - xmin)) * (W - L - R);
  const py = (y) => T + (1 - (y - ymin) / (ymax - ymin)) * (H - T - B);
  ctx.strokeStyle = "#2c333d";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = ymin + ((ymax - ymin) * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, py(y)); ctx.lineTo(W - R, py(y)); ctx.stroke();
    ctx.fillText(fmt(y), 4, py(y) + 4);
  }
  ctx.fillText(niceTime(xmin), L, H - 6);
  ctx.fillText(niceTime(xmax), W - R - 50, H - 6);
  series.forEach((s, i) => {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) { pen = false; continue; }
      if (pen) ctx.lineTo(px(x), py(y)); else ctx.moveTo(px(x), py(y));
      pen = true;
    }
    ctx.stroke();
    if (counts[i] === 1) { // a lone point draws no line: a dot
      const [x, y] = s.points.find(([a, b]) => Number.isFinite(a) && Number.isFinite(b));
      ctx.fillStyle = s.color;
      ctx.fillRect(px(x) - 2, py(y) - 2, 4, 4);
    }
  });
}

window.drawChart = drawChart;
