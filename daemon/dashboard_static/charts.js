// Line charts on a canvas, no library: a few series sharing the x axis (time), each with its
// own colour; the y range covers every finite point. The canvas records how many points it drew
// (data-points) so that a test can see the chart is not empty.
"use strict";

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
  const L = 60, R = 12, T = 22, B = 24;
  ctx.clearRect(0, 0, W, H);
  let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity, count = 0;
  for (const s of series) {
    for (const [x, y] of s.points) {
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
      ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
      count++;
    }
  }
  canvas.dataset.points = String(count);
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
  let lx = L;
  for (const s of series) {
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
    if (s.points.length === 1 || s.points.filter((p) => Number.isFinite(p[1])).length === 1) {
      const p = s.points.find((q) => Number.isFinite(q[1]));
      if (p) { ctx.fillStyle = s.color; ctx.fillRect(px(p[0]) - 2, py(p[1]) - 2, 4, 4); }
    }
    ctx.fillStyle = s.color;
    ctx.fillText(s.name, lx, 14);
    lx += ctx.measureText(s.name).width + 16;
  }
}

window.drawChart = drawChart;
