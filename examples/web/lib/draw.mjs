// Pictures on <canvas>: a matrix as a heatmap (the mask, the attention probabilities, their error) and the
// error at each position as bars against the tolerance, on a log scale.

const SIZE = 280; // the plot area's side, in CSS pixels
const MARGIN = 36;

// viridis at 9 stops (matplotlib's default map): dark purple for 0, yellow for 1
const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
  [92, 200, 99], [170, 220, 50], [253, 231, 37]];

function colour(t) {
  if (!Number.isFinite(t)) return 'rgb(255,0,0)';
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  const [a, b] = [VIRIDIS[i], VIRIDIS[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(',')})`;
}

function prepare(canvas, width, height) {
  const scale = window.devicePixelRatio || 1;
  canvas.width = width * scale;
  canvas.height = height * scale;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext('2d');
  ctx.scale(scale, scale);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.font = '11px sans-serif';
  return ctx;
}

// values: rows x cols (row-major). lo..hi map to the colour scale; `log` maps log10 of the values.
export function heatmap(canvas, values, rows, cols, { title, lo = 0, hi = 1, log = false, xLabel = 'key',
  yLabel = 'query' } = {}) {
  const cell = Math.max(1, Math.floor(SIZE / Math.max(rows, cols)));
  const [w, h] = [cell * cols, cell * rows];
  const ctx = prepare(canvas, w + MARGIN + 70, h + 40);
  const map = (v) => (log ? (Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo) : (v - lo) / (hi - lo));
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      ctx.fillStyle = colour(map(values[r * cols + c]));
      ctx.fillRect(MARGIN + c * cell, 20 + r * cell, cell, cell);
    }
  }
  ctx.fillStyle = '#000';
  ctx.fillText(title, MARGIN, 12);
  ctx.fillText(`${xLabel} 0..${cols - 1}`, MARGIN, h + 34);
  ctx.save();
  ctx.translate(12, 20 + h);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(`${yLabel} 0..${rows - 1}`, 0, 0);
  ctx.restore();
  const x = MARGIN + w + 12; // the colour bar
  for (let i = 0; i < h; i++) {
    ctx.fillStyle = colour(1 - i / Math.max(h - 1, 1));
    ctx.fillRect(x, 20 + i, 12, 1);
  }
  ctx.fillStyle = '#000';
  ctx.fillText(log ? `1e${hi}` : String(hi), x + 16, 28);
  ctx.fillText(log ? `1e${lo}` : String(lo), x + 16, 20 + h);
}

// One bar per position: the largest |actual - expected| there, log scale, with the tolerance's atol dashed.
export function errorBars(canvas, errors, { title, atol, xLabel = 'position' }) {
  const n = errors.length;
  const bar = Math.max(1, Math.floor(SIZE / n));
  const [w, h] = [bar * n, 160];
  const ctx = prepare(canvas, w + MARGIN + 96, h + 40);
  const finite = Array.from(errors).filter(Number.isFinite);
  const lo = -10;
  const hi = Math.max(Math.ceil(Math.log10(Math.max(...finite, atol * 10, 1e-9))), lo + 1);
  const y = (v) => 20 + h - (h * (Math.log10(Math.max(v, 10 ** lo)) - lo)) / (hi - lo);
  ctx.strokeStyle = '#999';
  ctx.strokeRect(MARGIN, 20, w, h);
  for (let i = 0; i < n; i++) {
    const v = errors[i];
    const bad = !Number.isFinite(v) || v > atol;
    ctx.fillStyle = bad ? '#d62728' : '#1f77b4';
    const top = Number.isFinite(v) ? y(v) : 20;
    ctx.fillRect(MARGIN + i * bar + (bar > 3 ? 1 : 0), top, Math.max(bar - (bar > 3 ? 2 : 0), 1), 20 + h - top);
  }
  ctx.strokeStyle = '#d62728';
  ctx.setLineDash([4, 3]);
  ctx.beginPath();
  ctx.moveTo(MARGIN, y(atol));
  ctx.lineTo(MARGIN + w, y(atol));
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = '#000';
  ctx.fillText(title, MARGIN, 12);
  ctx.fillText(`atol=${atol}`, MARGIN + w + 4, y(atol) + 4);
  ctx.fillText(`1e${hi}`, 2, 28);
  ctx.fillText(`1e${lo}`, 2, 20 + h);
  ctx.fillText(`${xLabel} 0..${n - 1}`, MARGIN, h + 34);
}
