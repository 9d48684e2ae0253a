// Small hand-written SVG line charts: time on the x axis, one line per version (coloured by a CSS
// class), a 0..max y scale with three gridlines labelled with the unit. No dependencies.

const NS = 'http://www.w3.org/2000/svg';
const W = 320;
const H = 130;
const LEFT = 50;
const RIGHT = 6;
const TOP = 8;
const BOTTOM = 18;

function node(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  if (text != null) el.textContent = text;
  return el;
}

/** A round number at or above `value`: 1, 2, 2.5, 5 times a power of ten. */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].find((m) => m * power >= value * 0.999) * power;
}

function label(value, unit) {
  const text = value >= 1000 ? `${+(value / 1000).toFixed(1)}k` : value >= 10 ? value.toFixed(0) : String(+value.toFixed(2));
  return `${text} ${unit}`;
}

/** An SVG path through the points, with a gap wherever a value is missing. */
function pathOf(points, x, y) {
  let d = '';
  let pen = false;
  for (const [t, v] of points) {
    if (v == null || !Number.isFinite(v)) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  }
  return d;
}

/**
 * A chart of one metric. `options.max` fixes the scale's top (a share: 100); `options.floor` is
 * the smallest top the scale takes, so that a flat line at 0 does not fill the chart.
 * Returns {el, draw(series, from, to)}; each series is {cls, points: [[ms, value]], dashed}.
 */
export function lineChart(title, unit, options = {}) {
  const svg = node('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  const grid = node('g', { class: 'grid' });
  const lines = node('g', { class: 'lines' });
  svg.append(node('title', {}, title), grid, lines);

  function draw(series, from, to) {
    let top = options.max;
    if (top == null) {
      let highest = 0;
      for (const s of series) for (const [t, v] of s.points) if (t >= from && v > highest) highest = v;
      top = niceMax(Math.max(highest, options.floor ?? 1));
    }
    const span = Math.max(to - from, 1);
    const x = (t) => LEFT + ((t - from) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - Math.min(v, top) / top) * (H - TOP - BOTTOM);

    grid.replaceChildren();
    for (const v of [0, top / 2, top]) {
      grid.append(node('line', { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v) }),
        node('text', { x: LEFT - 4, y: y(v) + 3, 'text-anchor': 'end' }, label(v, unit)));
    }
    const minutes = Math.round(span / 60000);
    grid.append(node('text', { x: LEFT, y: H - 4 }, minutes >= 1 ? `-${minutes} min` : `-${Math.round(span / 1000)} s`),
      node('text', { x: W - RIGHT, y: H - 4, 'text-anchor': 'end' }, 'now'));

    lines.replaceChildren(...series.map((s) => node('path', {
      class: `line ${s.cls}${s.dashed ? ' dashed' : ''}`,
      d: pathOf(s.points.filter(([t]) => t >= from), x, y),
    })));
  }

  return { el: svg, draw };
}
