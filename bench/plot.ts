/**
 * A tiny SVG line chart, no plotting dependency: pure functions from numbers to SVG text.
 * Used for "throughput vs threads, one line per arm" (bench/results/<date>-mysql.svg).
 */

/** `dash` is an SVG stroke-dasharray ("5,3"); absent = a solid line. */
export interface Series { name: string; color: string; dash?: string; points: Array<{ x: number; y: number }> }
export interface Panel { title: string; series: Series[] }
export interface ChartOptions { title: string; subtitle?: string; xLabel: string; yLabel: string }

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

/** A "nice" axis maximum (1, 2, 2.5 or 5 × 10^k) at or above `v`. */
export function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function compact(v: number): string {
  if (v >= 1000) return `${Number((v / 1000).toFixed(1))}k`;
  return String(Number(v.toFixed(1)));
}

/** Side-by-side panels sharing a legend; x is categorical (the distinct x values, evenly spaced). */
export function lineChartSvg(panels: Panel[], o: ChartOptions): string {
  const pw = 300, ph = 220, ml = 56, mr = 16, mt = 64;
  // Wide enough for the title and subtitle even with a single panel.
  const width = Math.max(ml + panels.length * (pw + mr) + 8, 640);
  // The legend wraps onto as many rows as the chart's width needs.
  const names = [...new Map(panels.flatMap((p) => p.series).map((s) => [s.name, s])).values()];
  const legendW = 220;
  const perRow = Math.max(1, Math.floor((width - ml) / legendW));
  const legendTop = mt + ph + 52;
  const height = legendTop + Math.ceil(names.length / perRow) * 18 + 4;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${ml}" y="20" font-size="14" font-weight="bold">${esc(o.title)}</text>`,
  ];
  if (o.subtitle) out.push(`<text x="${ml}" y="36" fill="#555">${esc(o.subtitle)}</text>`);
  panels.forEach((panel, i) => {
    const x0 = ml + i * (pw + mr);
    const xs = [...new Set(panel.series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
    const yMax = niceMax(Math.max(0, ...panel.series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite)));
    const px = (x: number) => x0 + (xs.length === 1 ? pw / 2 : ((xs.indexOf(x) + 0.5) / xs.length) * pw);
    const py = (y: number) => mt + ph - (y / yMax) * ph;
    out.push(`<text x="${x0 + pw / 2}" y="${mt - 8}" text-anchor="middle" font-weight="bold">${esc(panel.title)}</text>`);
    out.push(`<rect x="${x0}" y="${mt}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
    for (let k = 0; k <= 4; k++) {
      const v = (yMax * k) / 4;
      out.push(`<line x1="${x0}" x2="${x0 + pw}" y1="${py(v)}" y2="${py(v)}" stroke="#eee"/>`);
      out.push(`<text x="${x0 - 4}" y="${py(v) + 4}" text-anchor="end" fill="#333">${compact(v)}</text>`);
    }
    for (const x of xs) out.push(`<text x="${px(x)}" y="${mt + ph + 14}" text-anchor="middle">${x}</text>`);
    out.push(`<text x="${x0 + pw / 2}" y="${mt + ph + 30}" text-anchor="middle" fill="#333">${esc(o.xLabel)}</text>`);
    for (const s of panel.series) {
      const pts = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
      if (pts.length === 0) continue;
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''} points="${pts.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' ')}"/>`);
      for (const p of pts) out.push(`<circle cx="${px(p.x).toFixed(1)}" cy="${py(p.y).toFixed(1)}" r="3" fill="${s.color}"><title>${esc(`${s.name} @ ${p.x}: ${p.y.toFixed(1)}`)}</title></circle>`);
    }
  });
  out.push(`<text transform="translate(14 ${mt + ph / 2}) rotate(-90)" text-anchor="middle" fill="#333">${esc(o.yLabel)}</text>`);
  names.forEach((s, i) => {
    const lx = ml + (i % perRow) * legendW;
    const ly = legendTop + Math.floor(i / perRow) * 18;
    out.push(`<line x1="${lx}" x2="${lx + 24}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    out.push(`<text x="${lx + 30}" y="${ly}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

/** How each MySQL arm is drawn: the proxy arms in warm colours, the no-TLS references dotted. */
const ARM_STYLE: Record<string, { name: string; color: string; dash?: string }> = {
  direct: { name: 'direct TLS to MariaDB', color: '#1f77b4' },
  native: { name: 'proxy, native data plane', color: '#d62728' },
  node: { name: 'proxy, Node data plane', color: '#ff7f0e', dash: '5,3' },
  plain: { name: 'plain TCP to MariaDB (no TLS)', color: '#7f7f7f', dash: '2,3' },
  'c-forward': { name: 'C forwarder, no TLS', color: '#2ca02c', dash: '2,3' },
};

/** The MySQL scenario's summary as one panel per sysbench test: tps vs threads, one line per arm. */
export function mysqlThroughputSvg(cells: Array<{ test: string; threads: number; arms: Partial<Record<string, { tps: number }>> }>, subtitle: string): string {
  const tests = [...new Set(cells.map((c) => c.test))];
  const arms = Object.keys(ARM_STYLE).filter((a) => cells.some((c) => c.arms[a]));
  return lineChartSvg(tests.map((test) => {
    const rows = cells.filter((c) => c.test === test);
    return {
      title: test,
      series: arms.map((a) => ({ ...(ARM_STYLE[a]!), points: rows.filter((r) => r.arms[a]).map((r) => ({ x: r.threads, y: r.arms[a]!.tps })) })),
    };
  }), { title: 'sysbench throughput (tps) vs threads, per arm', subtitle, xLabel: 'sysbench threads', yLabel: 'transactions per second' });
}
