// @ts-check
// The workflow graph: df.instance_nodes rows → a flowchart (sequences as
// arrows, JOIN/RACE as a fork and a merge, IF as a decision with its arms, a
// LOOP as a frame around its body with a back arrow), laid out by ELK's
// layered algorithm, drawn as SVG. Statuses are painted on the drawing and
// repainted in place as they change (the shape of an instance never does).

const SVG = 'http://www.w3.org/2000/svg';

/**
 * @typedef {{ id: string, type: string, query: string | null, query_cut?: boolean, result_name: string | null,
 *   left_node: string | null, right_node: string | null, status: string, inferred_status: string,
 *   skipped_because?: string | null, result: string | null, result_cut?: boolean, status_details?: string | null,
 *   created_at?: string | null, updated_at: string, iteration: number | null, stamp: string | null, wake_at?: string | null }} DfNode
 * @typedef {'step' | 'fork' | 'merge' | 'decision' | 'loop' | 'start' | 'end'} Kind
 * @typedef {{ vid: string, kind: Kind, df: string | null, parent: string, width: number, height: number, label: string }} Visual
 * @typedef {{ id: string, from: string, to: string, parent: string, label?: string }} Edge
 * @typedef {{ loop: string, from: string, to: string, label: string }} BackEdge
 * @typedef {{ visuals: Map<string, Visual>, edges: Edge[], back: BackEdge[], byDf: Map<string, string[]> }} Model
 * @typedef {{ x: number, y: number, width: number, height: number }} Box
 * @typedef {{ boxes: Map<string, Box>, edges: { edge: Edge, points: {x: number, y: number}[], labelAt?: {x: number, y: number} }[], width: number, height: number }} Layout
 */

const SIZE = {
  step: [236, 50],
  fork: [150, 32],
  merge: [64, 12],
  decision: [180, 46],
  start: [20, 20],
  end: [96, 30],
};
const LOOP_PAD = { top: 44, left: 34, bottom: 22, right: 20 };

/** @param {string | null} q */
function config(q) {
  if (!q || q.trim()[0] !== '{') return {};
  try {
    const v = JSON.parse(q);
    return v && typeof v === 'object' && !Array.isArray(v) ? v : {};
  } catch {
    return {};
  }
}

/** @param {string} s @param {number} n */
export function cut(s, n) {
  return s.length > n ? s.slice(0, Math.max(1, n - 1)) + '…' : s;
}

/** @param {number} s */
export function seconds(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ''}`;
  return `${Math.floor(s / 86400)} d${Math.floor((s % 86400) / 3600) ? ` ${Math.floor((s % 86400) / 3600)} h` : ''}`;
}

/** What a step does, in one line. @param {DfNode} n */
export function summary(n) {
  const c = config(n.query);
  switch (n.type) {
    case 'SQL':
      return (n.query ?? '').replace(/\s+/g, ' ').trim();
    case 'HTTP':
    case 'HTTP_MULTIPART':
      return `${String(c.method ?? 'POST').toUpperCase()} ${String(c.url ?? '')}`;
    case 'SLEEP':
      return `sleep ${seconds(Number(n.query))}`;
    case 'SIGNAL':
      return `wait for signal “${String(c.signal_name ?? '')}”${c.timeout_seconds ? ` (≤ ${seconds(Number(c.timeout_seconds))})` : ''}`;
    case 'WAIT_SCHEDULE':
      return `wait for ${String(c.cron_expr ?? '')}${c.time_zone ? ` ${String(c.time_zone)}` : ''}`;
    case 'BREAK':
      return c.break_value === null || c.break_value === undefined ? 'break' : `break with ${String(c.break_value)}`;
    default:
      return n.type;
  }
}

/** The badge of a step. @param {string} type */
export function kindLabel(type) {
  return (
    { SQL: 'SQL', HTTP: 'HTTP', HTTP_MULTIPART: 'HTTP multipart', SLEEP: 'SLEEP', SIGNAL: 'SIGNAL', WAIT_SCHEDULE: 'SCHEDULE', BREAK: 'BREAK' }[type] ??
    type
  );
}

/** The signal a running SIGNAL node waits for. @param {DfNode} n */
export function awaitedSignal(n) {
  return n.type === 'SIGNAL' && n.inferred_status === 'running' ? String(config(n.query).signal_name ?? '') : undefined;
}

/** Loop iterations a node's status belongs to: its stamp '/2/3' → '2 › 3'. @param {DfNode} n */
export function iterationOf(n) {
  return n.stamp ? n.stamp.split('/').filter(Boolean).join(' › ') : '';
}

/**
 * The flowchart of an instance.
 * @param {DfNode[]} nodes @param {string} rootId
 * @returns {Model}
 */
export function buildModel(nodes, rootId) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  /** @type {Map<string, Visual>} */
  const visuals = new Map();
  /** @type {Edge[]} */
  const edges = [];
  /** @type {BackEdge[]} */
  const back = [];
  /** @type {Map<string, string[]>} */
  const byDf = new Map();
  const seen = new Set();
  let seq = 0;
  /** @param {Kind} kind @param {string | null} df @param {string} parent @param {string} label */
  const add = (kind, df, parent, label) => {
    const vid = `v${++seq}`;
    const [w, h] = kind === 'loop' ? [0, 0] : SIZE[kind];
    visuals.set(vid, { vid, kind, df, parent, width: w, height: h, label });
    if (df) byDf.set(df, [...(byDf.get(df) ?? []), vid]);
    return vid;
  };
  /** @param {string} from @param {string} to @param {string} parent @param {string} [label] */
  const edge = (from, to, parent, label) => edges.push({ id: `e${edges.length + 1}`, from, to, parent, ...(label ? { label } : {}) });
  /**
   * @param {string | null | undefined} id @param {string} parent @param {number} depth
   * @returns {{ entry: string, exit: string }}
   */
  const build = (id, parent, depth) => {
    const n = id ? byId.get(id) : undefined;
    if (!n || seen.has(n.id) || depth > 300) {
      const v = add('step', null, parent, 'not visible');
      return { entry: v, exit: v };
    }
    seen.add(n.id);
    switch (n.type) {
      case 'THEN': {
        const l = build(n.left_node, parent, depth + 1);
        const r = build(n.right_node, parent, depth + 1);
        edge(l.exit, r.entry, parent);
        return { entry: l.entry, exit: r.exit };
      }
      case 'JOIN':
      case 'RACE': {
        const extra = n.type === 'JOIN' ? config(n.query).extra_nodes : undefined;
        const branches = [n.left_node, n.right_node, ...(Array.isArray(extra) ? extra.map(String) : [])];
        const fork = add('fork', n.id, parent, n.type === 'JOIN' ? `JOIN · all ${branches.length}` : `RACE · first of ${branches.length}`);
        const merge = add('merge', n.id, parent, '');
        for (const b of branches) {
          const g = build(b, parent, depth + 1);
          edge(fork, g.entry, parent);
          edge(g.exit, merge, parent);
        }
        return { entry: fork, exit: merge };
      }
      case 'IF': {
        const c = config(n.query);
        let entry;
        let decision;
        if (typeof c.condition_node === 'string') {
          const cond = build(c.condition_node, parent, depth + 1);
          decision = add('decision', n.id, parent, 'IF · condition true?');
          edge(cond.exit, decision, parent);
          entry = cond.entry;
        } else {
          decision = add('decision', n.id, parent, `IF · $${String(c.result_name ?? '?')} has rows?`);
          entry = decision;
        }
        const merge = add('merge', n.id, parent, '');
        const yes = build(n.left_node, parent, depth + 1);
        const no = build(n.right_node, parent, depth + 1);
        edge(decision, yes.entry, parent, 'true');
        edge(decision, no.entry, parent, 'false');
        edge(yes.exit, merge, parent);
        edge(no.exit, merge, parent);
        return { entry, exit: merge };
      }
      case 'LOOP': {
        const frame = add('loop', n.id, parent, 'LOOP');
        const body = build(n.left_node, frame, depth + 1);
        const c = config(n.query);
        let last = body.exit;
        if (typeof c.condition_node === 'string') {
          const cond = build(c.condition_node, frame, depth + 1);
          edge(body.exit, cond.entry, frame);
          last = cond.exit;
        }
        back.push({ loop: frame, from: last, to: body.entry, label: typeof c.condition_node === 'string' ? 'again while true' : 'again until break' });
        return { entry: frame, exit: frame };
      }
      default: {
        const v = add('step', n.id, parent, summary(n));
        return { entry: v, exit: v };
      }
    }
  };
  const start = add('start', null, 'root', 'start');
  const g = build(rootId, 'root', 0);
  const end = add('end', null, 'root', 'end');
  edge(start, g.entry, 'root');
  edge(g.exit, end, 'root');
  return { visuals, edges, back, byDf };
}

/**
 * Lays the model out with ELK (layered, top to bottom, orthogonal edges).
 * @param {Model} model
 * @returns {Promise<Layout>}
 */
export async function layout(model) {
  /** @type {any} */
  const ELKClass = /** @type {any} */ (window).ELK;
  if (!ELKClass) throw new Error('the layout library did not load');
  const elk = new ELKClass();
  /** @type {Map<string, any>} */
  const elkNodes = new Map();
  const root = {
    id: 'root',
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.direction': 'DOWN',
      'elk.hierarchyHandling': 'INCLUDE_CHILDREN',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.layered.considerModelOrder.strategy': 'NODES_AND_EDGES',
      'elk.layered.crossingMinimization.forceNodeModelOrder': 'true',
      'elk.layered.nodePlacement.strategy': 'BRANDES_KOEPF',
      'elk.layered.nodePlacement.bk.fixedAlignment': 'BALANCED',
      'elk.layered.spacing.nodeNodeBetweenLayers': '26',
      'elk.spacing.nodeNode': '26',
      'elk.spacing.edgeNode': '16',
      'elk.spacing.edgeEdge': '10',
      'elk.spacing.edgeLabel': '4',
      'elk.edgeLabels.placement': 'CENTER',
      'elk.padding': '[top=16,left=16,bottom=16,right=16]',
    },
    /** @type {any[]} */ children: [],
    /** @type {any[]} */ edges: [],
  };
  elkNodes.set('root', root);
  for (const v of model.visuals.values()) {
    /** @type {any} */
    const n = { id: v.vid };
    if (v.kind === 'loop') {
      n.children = [];
      n.edges = [];
      n.layoutOptions = { 'elk.padding': `[top=${LOOP_PAD.top},left=${LOOP_PAD.left},bottom=${LOOP_PAD.bottom},right=${LOOP_PAD.right}]` };
    } else {
      n.width = v.width;
      n.height = v.height;
    }
    elkNodes.set(v.vid, n);
  }
  for (const v of model.visuals.values()) elkNodes.get(v.parent).children.push(elkNodes.get(v.vid));
  for (const e of model.edges) {
    elkNodes.get(e.parent).edges.push({
      id: e.id,
      sources: [e.from],
      targets: [e.to],
      ...(e.label ? { labels: [{ text: e.label, width: e.label.length * 7 + 10, height: 16 }] } : {}),
    });
  }
  const out = await elk.layout(root);
  /** @type {Map<string, Box>} */
  const boxes = new Map();
  /** @type {Map<string, {x: number, y: number}>} */
  const origin = new Map([['root', { x: 0, y: 0 }]]);
  /** @param {any} n @param {number} ox @param {number} oy */
  const walk = (n, ox, oy) => {
    for (const c of n.children ?? []) {
      const x = ox + c.x;
      const y = oy + c.y;
      boxes.set(c.id, { x, y, width: c.width, height: c.height });
      origin.set(c.id, { x, y });
      walk(c, x, y);
    }
  };
  walk(out, 0, 0);
  /** @type {Layout['edges']} */
  const laid = [];
  const byId = new Map(model.edges.map((e) => [e.id, e]));
  /** @param {any} n */
  const collect = (n) => {
    for (const e of n.edges ?? []) {
      const o = origin.get(e.container ?? n.id) ?? { x: 0, y: 0 };
      const s = e.sections?.[0];
      if (!s) continue;
      const points = [s.startPoint, ...(s.bendPoints ?? []), s.endPoint].map((p) => ({ x: p.x + o.x, y: p.y + o.y }));
      const l = e.labels?.[0];
      laid.push({ edge: /** @type {Edge} */ (byId.get(e.id)), points, ...(l ? { labelAt: { x: l.x + o.x + l.width / 2, y: l.y + o.y + l.height / 2 } } : {}) });
    }
    for (const c of n.children ?? []) collect(c);
  };
  collect(out);
  return { boxes, edges: laid, width: out.width, height: out.height };
}

/**
 * @param {string} tag @param {Record<string, string | number>} [attrs] @param {string} [text]
 * @returns {SVGElement}
 */
function el(tag, attrs = {}, text) {
  const e = /** @type {SVGElement} */ (document.createElementNS(SVG, tag));
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * Draws the laid-out model into `svg`, replacing what it held; `onSelect` is told of clicks on a node.
 * @param {SVGSVGElement} svg @param {Model} model @param {Layout} lay @param {(df: string) => void} onSelect
 */
export function draw(svg, model, lay, onSelect) {
  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${Math.ceil(lay.width)} ${Math.ceil(lay.height)}`);
  svg.dataset.width = String(Math.ceil(lay.width));
  svg.dataset.height = String(Math.ceil(lay.height));
  const defs = el('defs');
  const marker = el('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }));
  defs.append(marker);
  svg.append(defs);
  const frames = el('g', { class: 'frames' });
  const lines = el('g', { class: 'edges' });
  const shapes = el('g', { class: 'shapes' });
  svg.append(frames, lines, shapes);

  const visuals = [...model.visuals.values()];
  // Outer frames first, so inner ones are drawn above them.
  const depth = (/** @type {Visual} */ v) => {
    let d = 0;
    for (let p = v.parent; p !== 'root'; p = model.visuals.get(p)?.parent ?? 'root') d++;
    return d;
  };
  for (const v of visuals.filter((x) => x.kind === 'loop').sort((a, b) => depth(a) - depth(b))) {
    const b = lay.boxes.get(v.vid);
    if (!b) continue;
    const g = el('g', { class: 'node loop', transform: `translate(${b.x},${b.y})`, 'data-vid': v.vid });
    g.append(
      el('rect', { class: 'frame', width: b.width, height: b.height, rx: 14 }),
      el('rect', { class: 'tab', x: 0, y: 0, width: b.width, height: 30, rx: 14 }),
      el('text', { class: 'kind', x: 14, y: 20 }, 'LOOP'),
      el('text', { class: 'iter', x: 56, y: 20 }, ''),
      el('text', { class: 'state', x: b.width - 14, y: 20, 'text-anchor': 'end' }, ''),
    );
    bindNode(g, v, onSelect);
    frames.append(g);
  }
  for (const le of lay.edges) {
    const d = le.points.map((p, i) => `${i ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
    const path = el('path', { class: 'edge', d, 'marker-end': 'url(#arrow)', 'data-to': le.edge.to });
    lines.append(path);
    if (le.edge.label && le.labelAt) {
      const w = le.edge.label.length * 6.6 + 12;
      const g = el('g', { class: 'edge-label', transform: `translate(${le.labelAt.x},${le.labelAt.y})` });
      g.append(el('rect', { x: -w / 2, y: -9, width: w, height: 18, rx: 9 }), el('text', { x: 0, y: 4, 'text-anchor': 'middle' }, le.edge.label));
      lines.append(g);
    }
  }
  // A loop's way back: down from its last node, up its frame's left margin, into its first node.
  for (const be of model.back) {
    const f = lay.boxes.get(be.loop);
    const from = lay.boxes.get(be.from);
    const to = lay.boxes.get(be.to);
    if (!f || !from || !to) continue;
    const x = f.x + 20;
    const yOut = from.y + from.height + 11;
    const yIn = to.y - 12;
    const d = `M${from.x + from.width / 2},${from.y + from.height} L${from.x + from.width / 2},${yOut} L${x},${yOut} L${x},${yIn} L${to.x + to.width / 2},${yIn} L${to.x + to.width / 2},${to.y}`;
    lines.append(el('path', { class: 'edge back', d, 'marker-end': 'url(#arrow)', 'data-to': be.to }));
    const label = el('text', { class: 'back-label', transform: `translate(${x - 6},${(yIn + yOut) / 2}) rotate(-90)`, 'text-anchor': 'middle' }, be.label);
    lines.append(label);
  }
  for (const v of visuals) {
    if (v.kind === 'loop') continue;
    const b = lay.boxes.get(v.vid);
    if (!b) continue;
    const g = el('g', { class: `node ${v.kind}`, transform: `translate(${b.x},${b.y})`, 'data-vid': v.vid });
    const w = b.width;
    const h = b.height;
    switch (v.kind) {
      case 'step':
        g.append(
          el('rect', { class: 'box', width: w, height: h, rx: 9 }),
          el('rect', { class: 'bar', x: 0, y: 0, width: 6, height: h, rx: 3 }),
          el('text', { class: 'kind', x: 16, y: 18 }, ''),
          el('text', { class: 'name', x: 16, y: 18 }, ''),
          el('text', { class: 'state', x: w - 12, y: 18, 'text-anchor': 'end' }, ''),
          el('text', { class: 'summary', x: 16, y: 37 }, cut(v.label, 29)),
          el('title', {}, v.label),
        );
        break;
      case 'fork':
        g.append(el('rect', { class: 'box', width: w, height: h, rx: h / 2 }), el('text', { class: 'label', x: w / 2, y: h / 2 + 4.5, 'text-anchor': 'middle' }, v.label));
        break;
      case 'decision':
        g.append(
          el('polygon', { class: 'box', points: `${h / 2},0 ${w - h / 2},0 ${w},${h / 2} ${w - h / 2},${h} ${h / 2},${h} 0,${h / 2}` }),
          el('text', { class: 'label', x: w / 2, y: h / 2 + 4.5, 'text-anchor': 'middle' }, cut(v.label, 24)),
          el('title', {}, v.label),
        );
        break;
      case 'merge':
        g.append(el('rect', { class: 'box', width: w, height: h, rx: h / 2 }));
        break;
      case 'start':
        g.append(el('circle', { class: 'box', cx: w / 2, cy: h / 2, r: w / 2 - 1 }));
        break;
      case 'end':
        g.append(el('rect', { class: 'box', width: w, height: h, rx: h / 2 }), el('text', { class: 'label', x: w / 2, y: h / 2 + 4.5, 'text-anchor': 'middle' }, 'end'));
        break;
    }
    bindNode(g, v, onSelect);
    shapes.append(g);
  }
}

/** @param {SVGElement} g @param {Visual} v @param {(df: string) => void} onSelect */
function bindNode(g, v, onSelect) {
  if (!v.df) return;
  const df = v.df;
  g.dataset.nodeId = df;
  g.setAttribute('tabindex', '0');
  g.setAttribute('role', 'button');
  g.addEventListener('click', (ev) => {
    ev.stopPropagation();
    onSelect(df);
  });
  g.addEventListener('keydown', (ev) => {
    const k = /** @type {KeyboardEvent} */ (ev).key;
    if (k === 'Enter' || k === ' ') {
      ev.preventDefault();
      onSelect(df);
    }
  });
}

const STATE_TEXT = { completed: '✓ completed', failed: '✗ failed', running: '● running', pending: '○ pending', skipped: '– skipped' };

/**
 * Paints statuses (and loop iterations, names) on the drawing; cheap, run on every update.
 * @param {SVGSVGElement} svg @param {Model} model @param {Map<string, DfNode>} byId @param {string} instanceStatus @param {string | null} selected
 */
export function paint(svg, model, byId, instanceStatus, selected) {
  for (const g of /** @type {NodeListOf<SVGGElement>} */ (svg.querySelectorAll('g.node'))) {
    const v = model.visuals.get(g.dataset.vid ?? '');
    if (!v) continue;
    const n = v.df ? byId.get(v.df) : undefined;
    let status = n ? n.inferred_status : 'pending';
    if (v.kind === 'start') status = 'completed';
    if (v.kind === 'end') status = instanceStatus === 'completed' ? 'completed' : instanceStatus === 'failed' ? 'failed' : instanceStatus === 'cancelled' ? 'cancelled' : 'pending';
    if (v.kind === 'step' && !v.df) status = 'skipped';
    g.setAttribute('class', `node ${v.kind} st-${status}${n && n.id === selected ? ' selected' : ''}`);
    g.dataset.status = status;
    if (n) {
      g.dataset.type = n.type;
      g.dataset.title = v.kind === 'step' ? v.label : v.label || n.type;
    }
    const state = g.querySelector('text.state');
    if (state) state.textContent = /** @type {Record<string, string>} */ (STATE_TEXT)[status] ?? status;
    if (v.kind === 'step' && n) {
      const kind = /** @type {SVGTextElement} */ (g.querySelector('text.kind'));
      const name = /** @type {SVGTextElement} */ (g.querySelector('text.name'));
      kind.textContent = kindLabel(n.type);
      name.textContent = n.result_name ? `as $${cut(n.result_name, 12)}` : '';
      name.setAttribute('x', String(16 + kindLabel(n.type).length * 7.4 + 8));
    }
    if (v.kind === 'loop' && n) {
      const iter = g.querySelector('text.iter');
      if (iter) iter.textContent = n.iteration ? `iteration ${n.iteration}` : '';
    }
  }
  for (const p of /** @type {NodeListOf<SVGPathElement>} */ (svg.querySelectorAll('path.edge'))) {
    const to = model.visuals.get(p.dataset.to ?? '');
    const n = to?.df ? byId.get(to.df) : undefined;
    const reached = to?.kind === 'end' ? ['completed', 'failed'].includes(instanceStatus) : n ? !['pending', 'skipped'].includes(n.inferred_status) : false;
    p.classList.toggle('taken', reached);
  }
}
