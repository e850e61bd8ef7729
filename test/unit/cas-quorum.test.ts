/**
 * The replicated counter's quorum rules (src/cas-client/quorum.ts) and a member's in-memory counters
 * (cas/replication/memory-counters.ts). Exhaustive over small clusters: any two majorities meet, a joiner
 * always meets every acknowledged write, and no two digests can both gather a majority for one epoch.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { majority, catchUpQuorum, combineReads, decideAdvance, currentIncarnations, formatMembership, parseMembership, parseSlotUrn, slotUrn } from '../../src/cas-client/quorum.ts';
import { MemoryCounters } from '../../cas/replication/memory-counters.ts';

const subsets = (n: number): number[][] => {
  const out: number[][] = [];
  for (let m = 0; m < 1 << n; m++) out.push([...Array(n).keys()].filter((i) => m & (1 << i)));
  return out;
};

test('majorities of 1..7 members always intersect; a smaller set need not', () => {
  for (let n = 1; n <= 7; n++) {
    const maj = subsets(n).filter((s) => s.length >= majority(n));
    for (const a of maj) for (const b of maj) assert.ok(a.some((x) => b.includes(x)), `n=${n}`);
    if (n >= 2) {
      const small = subsets(n).filter((s) => s.length === majority(n) - 1);
      assert.ok(small.some((a) => small.some((b) => !a.some((x) => b.includes(x)))), `n=${n}: minorities can miss each other`);
    }
  }
});

test('a restarted member that hears from catchUpQuorum(n) others meets every acknowledged write', () => {
  for (let n = 2; n <= 7; n++) {
    const joiner = 0;
    const others = [...Array(n).keys()].filter((i) => i !== joiner);
    // Every write acknowledged by a majority (possibly including the joiner's lost memory) ...
    for (const w of subsets(n).filter((s) => s.length >= majority(n))) {
      const survivors = w.filter((i) => i !== joiner);
      // ... is met by every set of catchUpQuorum(n) other members.
      for (const r of subsets(n).filter((s) => s.length === catchUpQuorum(n) && !s.includes(joiner))) {
        assert.ok(r.some((x) => survivors.includes(x)), `n=${n} w=${w} r=${r}`);
      }
    }
    // One fewer is not enough.
    const fewer = catchUpQuorum(n) - 1;
    const missed = subsets(n).filter((s) => s.length >= majority(n) && s.includes(joiner)).some((w) =>
      subsets(n).some((r) => r.length === fewer && !r.includes(joiner) && !r.some((x) => w.includes(x) && x !== joiner)));
    assert.ok(missed || fewer < 0, `n=${n}: ${fewer} others can miss an acknowledged write`);
    void others;
  }
  assert.equal(catchUpQuorum(3), 2);
  assert.equal(catchUpQuorum(5), 3);
});

test('combineReads: needs a majority of distinct instances, takes the highest epoch, refuses two digests for one epoch', () => {
  assert.deepEqual(combineReads([{ instance: 'a', value: 3, digest: 'x' }], 3), { kind: 'no-quorum', answered: 1, needed: 2 });
  // One instance answering twice (traffic redirected to it) counts once.
  assert.equal(combineReads([{ instance: 'a', value: 3, digest: 'x' }, { instance: 'a', value: 3, digest: 'x' }], 3).kind, 'no-quorum');
  const ok = combineReads([{ instance: 'a', value: 3, digest: 'x' }, { instance: 'b', value: 4, digest: 'y' }], 3);
  assert.equal(ok.kind, 'ok');
  assert.equal(ok.kind === 'ok' && ok.value, 4);
  assert.deepEqual(combineReads([{ instance: 'a', value: 4, digest: 'x' }, { instance: 'b', value: 4, digest: 'y' }], 3), { kind: 'fork', value: 4, digests: ['x', 'y'] });
});

test('combineReads: two writers raced for the top epoch: the digest a majority holds is the answer, else wait, else a fork', () => {
  const a = { instance: 'a', value: 4, digest: 'x' };
  const b = { instance: 'b', value: 4, digest: 'y' };
  const c = { instance: 'c', value: 4, digest: 'x' };
  // The third instance can still settle it.
  assert.deepEqual(combineReads([a, b], 3, false), { kind: 'undecided', value: 4 });
  const won = combineReads([a, b, c], 3, true);
  assert.equal(won.kind, 'ok');
  assert.deepEqual(won.kind === 'ok' && [won.digest, won.instances], ['x', ['a', 'c']]);
  assert.equal(combineReads([a, b, c], 3, false).kind, 'ok', 'a majority needs no more answers');
  // Everyone answered and no digest has a majority: nobody can have been acknowledged for epoch 4.
  assert.equal(combineReads([a, b, { instance: 'c', value: 3, digest: 'w' }], 3, true).kind, 'fork');
  // Disagreement below the top epoch: the winner moved on.
  const moved = combineReads([{ ...a, value: 5, digest: 'z' }, b, c], 3, true);
  assert.deepEqual(moved.kind === 'ok' && [moved.value, moved.digest], [5, 'z']);
  // Exhaustively over 3 and 5 instances: an acknowledged digest (held by a majority) is never overruled.
  for (const n of [3, 5]) {
    for (let mask = 0; mask < 3 ** n; mask++) {
      const views = [...Array(n)].map((_, i) => ({ instance: `i${i}`, value: 7, digest: ['p', 'q', 'r'][Math.floor(mask / 3 ** i) % 3]! }));
      const out = combineReads(views, n, true);
      const maj = ['p', 'q', 'r'].find((d) => views.filter((v) => v.digest === d).length >= majority(n));
      if (maj) assert.deepEqual(out.kind === 'ok' && out.digest, maj);
      else assert.equal(out.kind, new Set(views.map((v) => v.digest)).size === 1 ? 'ok' : 'fork');
    }
  }
});

test('decideAdvance: ok at a majority, pending while one is reachable, conflict or no-quorum when not', () => {
  assert.equal(decideAdvance([{ instance: 'a', kind: 'ok' }], 2, 3).kind, 'pending');
  assert.equal(decideAdvance([{ instance: 'a', kind: 'ok' }, { instance: 'b', kind: 'ok' }], 1, 3).kind, 'ok');
  assert.equal(decideAdvance([{ instance: 'a', kind: 'ok' }, { instance: 'a', kind: 'ok' }], 1, 3).kind, 'pending', 'one instance twice is one receipt');
  assert.deepEqual(decideAdvance([{ instance: 'a', kind: 'ok' }, { kind: 'failed', reason: 'down' }, { kind: 'failed', reason: 'down' }], 0, 3),
    { kind: 'no-quorum', accepted: 1, needed: 2, reasons: ['down', 'down'] });
  assert.deepEqual(decideAdvance([{ instance: 'a', kind: 'conflict', value: 9, digest: 'z' }, { instance: 'b', kind: 'conflict', value: 8, digest: 'q' }], 1, 3),
    { kind: 'conflict', value: 9, digest: 'z' });
});

test('a fork: two writers advancing the same epoch with different digests never both reach a majority', () => {
  // Members accept at most one digest per epoch (compare-and-advance), whatever order the requests arrive in.
  for (let order = 0; order < 1 << 3; order++) {
    const mems = [new MemoryCounters(), new MemoryCounters(), new MemoryCounters()];
    const accepted = { x: 0, y: 0 };
    mems.forEach((m, i) => {
      const first = order & (1 << i) ? 'x' : 'y';
      for (const d of [first, first === 'x' ? 'y' : 'x'] as const) {
        const cur = m.counters.get('s')?.value ?? 0;
        if (cur === 0) { void m.append('s', 'advance', 1, d); accepted[d]++; }
      }
    });
    assert.ok(!(accepted.x >= majority(3) && accepted.y >= majority(3)));
    assert.equal(accepted.x + accepted.y, 3);
  }
});

test('MemoryCounters: never moves back on an advance; catch-up takes the highest epoch and reports conflicting digests', async () => {
  const m = new MemoryCounters();
  await m.append('s', 'advance', 5, 'a');
  await assert.rejects(m.append('s', 'advance', 4, 'b'));
  await m.append('s', 'recover', 2, 'r'); // owner-signed recovery may move it back: that is its point
  assert.equal(m.counters.get('s')!.value, 2);
  m.merge([{ service: 's', value: 7, digest: 'x' }, { service: 's', value: 6, digest: 'w' }, { service: 't', value: 1, digest: 'p' }]);
  assert.equal(m.counters.get('s')!.value, 7);
  m.merge([{ service: 's', value: 3, digest: 'old' }]);
  assert.equal(m.counters.get('s')!.value, 7, 'a lower epoch never lowers a counter');
  m.merge([{ service: 'u', value: 4, digest: 'x' }, { service: 'u', value: 4, digest: 'y' }]);
  assert.equal(m.counters.get('u'), undefined);
  assert.deepEqual(m.conflicts, [{ service: 'u', value: 4, digests: ['x', 'y'] }]);
  assert.deepEqual(m.snapshot().map((e) => e.service), ['s', 't']);
  // A race for epoch 4 that the winner moved past (5): no conflict.
  const n = new MemoryCounters();
  n.merge([{ service: 'v', value: 4, digest: 'x' }, { service: 'v', value: 4, digest: 'y' }, { service: 'v', value: 5, digest: 'z' }]);
  assert.deepEqual(n.conflicts, []);
  assert.equal(n.counters.get('v')!.digest, 'z');
});

test('MemoryCounters: a reopen unanchors every service (advances refused); an owner recovery anchors it; catch-up carries the mark and any anchored value beats it', async () => {
  const m = new MemoryCounters();
  await m.append('a', 'advance', 3, 'd3');
  m.unanchor(['a', 'b']);
  assert.equal(m.counters.has('a'), false, 'the old value is gone with the reopen');
  assert.ok(m.isUnanchored('a') && m.isUnanchored('b'));
  await assert.rejects(m.append('a', 'advance', 1, 'x'), /unanchored/);
  assert.deepEqual(m.snapshot().map((e) => [e.service, e.unanchored ?? false]), [['a', true], ['b', true]]);
  await m.append('b', 'recover', 0, '');
  assert.ok(!m.isUnanchored('b'));
  assert.deepEqual(m.counters.get('b')!.value, 0);
  // A joiner catching up from members that still carry the mark and from one the owner re-anchored.
  const j = new MemoryCounters();
  j.merge([{ service: 'a', value: 0, digest: '', unanchored: true }, { service: 'b', value: 0, digest: '', unanchored: true }, { service: 'b', value: 7, digest: 'd7' }]);
  assert.ok(j.isUnanchored('a'));
  assert.ok(!j.isUnanchored('b'));
  assert.equal(j.counters.get('b')!.value, 7);
  // A member that holds a value does not take the mark from a lagging peer; a later anchored value clears it.
  j.merge([{ service: 'b', value: 0, digest: '', unanchored: true }]);
  assert.ok(!j.isUnanchored('b'));
  j.merge([{ service: 'a', value: 2, digest: 'd2' }]);
  assert.ok(!j.isUnanchored('a'));
  assert.equal(j.counters.get('a')!.value, 2);
});

test('currentIncarnations: only the newest generation any answer names for a slot counts, once per slot', () => {
  const ans = (slot: number, gen: number, view: Array<[number, number]>, id = `${slot}.${gen}`) =>
    ({ id, incarnation: { slot, gen, members: 3 }, membership: new Map(view) });
  // Member 3 admitted X into slot 1 (gen 2): member 1 (gen 1) is retired by member 3's answer.
  const m1 = ans(1, 1, [[1, 1], [2, 1], [3, 1]]);
  const m2 = ans(2, 1, [[1, 1], [2, 1], [3, 1]]);
  const m3 = ans(3, 1, [[1, 2], [2, 1], [3, 1]]);
  assert.deepEqual(currentIncarnations([m1, m2, m3]).map((a) => a.id), ['2.1', '3.1']);
  // Without member 3's answer nobody knows: both count (the intersection argument makes this safe: any
  // majority of slots meets an admitter of the replacement).
  assert.deepEqual(currentIncarnations([m1, m2]).map((a) => a.id), ['1.1', '2.1']);
  // The replacement's own certificate is evidence too.
  assert.deepEqual(currentIncarnations([m1, ans(1, 2, [[1, 2]])]).map((a) => a.id), ['1.2']);
  // One answer per slot (a redirected URL answering twice counts once).
  assert.equal(currentIncarnations([m2, m2]).length, 1);
});

test('slot URN and membership: round trip, malformed refused', () => {
  assert.deepEqual(parseSlotUrn(slotUrn({ slot: 2, gen: 1796316698146, members: 3 })), { slot: 2, gen: 1796316698146, members: 3 });
  for (const bad of ['urn:cdbp:cas-slot:4.1/3', 'urn:cdbp:cas-slot:0.1/3', 'urn:cdbp:cas-slot:1.0/3', 'urn:cdbp:cas-slot:1.1', 'urn:cdbp:cas-slot:x.1/3']) {
    assert.equal(parseSlotUrn(bad), undefined, bad);
  }
  const m = new Map([[3, 9], [1, 5], [2, 7]]);
  assert.equal(formatMembership(m), '1.5,2.7,3.9');
  assert.deepEqual(parseMembership('1.5,2.7,3.9'), new Map([[1, 5], [2, 7], [3, 9]]));
  assert.deepEqual(parseMembership(''), new Map());
  assert.throws(() => parseMembership('1.5;2.7'), /malformed membership/);
});
