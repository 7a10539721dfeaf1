// A small line chart on a canvas: no library.  lineChart(canvas, series, options)
//   series: [{label, color, dashed?, values: [number | null, ...]}] (oldest first)
//   options: {seconds: the span shown, unit: text after the numbers}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${(value / 1e6).toFixed(abs >= 1e7 ? 0 : 1)}M`;
  if (abs >= 1e4) return `${(value / 1e3).toFixed(abs >= 1e5 ? 0 : 1)}k`;
  if (abs >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return value.toFixed(abs >= 10 ? 1 : 2);
}

export function lineChart(canvas, series, { seconds = 300, unit = "" } = {}) {
  const ratio = globalThis.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 44, right = 8, top = 8, bottom = 20;
  const w = width - left - right, h = height - top - bottom;
  let max = 0, count = 0;
  for (const s of series) {
    count = Math.max(count, s.values.length);
    for (const v of s.values) if (v !== null && v > max) max = v;
  }
  max = niceMax(max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#667085";
  g.strokeStyle = "#e3e6eb";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + h - (h * i) / 4;
    g.beginPath();
    g.moveTo(left, Math.round(y) + 0.5);
    g.lineTo(left + w, Math.round(y) + 0.5);
    g.stroke();
    g.fillText(formatNumber((max * i) / 4) + unit, left - 6, y);
  }
  g.textAlign = "left";
  g.textBaseline = "alphabetic";
  g.fillText(`-${Math.round(seconds / 60) >= 1 ? `${Math.round(seconds / 60)} min` : `${seconds} s`}`, left, height - 5);
  g.textAlign = "right";
  g.fillText("now", left + w, height - 5);
  const slots = Math.max(count - 1, 1);
  for (const s of series) {
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.setLineDash(s.dashed ? [5, 4] : []);
    g.beginPath();
    let drawing = false;
    const offset = count - s.values.length;
    s.values.forEach((v, i) => {
      if (v === null) {
        drawing = false;
        return;
      }
      const x = left + (w * (i + offset)) / slots;
      const y = top + h - (h * v) / max;
      if (drawing) g.lineTo(x, y);
      else g.moveTo(x, y);
      drawing = true;
    });
    g.stroke();
  }
}
