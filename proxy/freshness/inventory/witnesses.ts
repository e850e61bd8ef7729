/**
 * Which observed page versions may serve as witnesses. Pure.
 *
 * A page read at LSN X becomes a witness once a durable checkpoint C > X is seen *after* the read: the
 * checkpoint means every change below C is in the data files, so whatever a crash leaves on disk carries at
 * least the change at X, and the page can never again be found below X (ARIES' write-ahead rule; InnoDB's
 * log_checkpoint fsyncs the data files before it writes C). The checkpoint read before the sweep is only a
 * lower bound of that: a page the database keeps rewriting (an undo log page, a hot leaf) is always above
 * it when the sweep reads it, and would never be witnessed. So the candidates above the limit are kept
 * (`pending`) and promoted by the checkpoint read after the file, or by a later sweep's.
 */
import type { Witness } from './types.ts';

/** Highest LSN per page over every list, highest first. */
function byPage(lists: Witness[][], keep: (lsn: bigint) => boolean): Array<{ page: number; lsn: bigint }> {
  const best = new Map<number, bigint>();
  for (const list of lists) {
    for (const w of list) {
      const lsn = BigInt(w.lsn);
      if (!keep(lsn)) continue;
      const had = best.get(w.page);
      if (had === undefined || lsn > had) best.set(w.page, lsn);
    }
  }
  return [...best].map(([page, lsn]) => ({ page, lsn })).sort((a, b) => (b.lsn > a.lsn ? 1 : b.lsn < a.lsn ? -1 : a.page - b.page));
}

const out = (ws: Array<{ page: number; lsn: bigint }>): Witness[] => ws.map((w) => ({ page: w.page, lsn: w.lsn.toString() }));

/**
 * Splits observed versions (this read's, a previous sweep's witnesses and pending candidates of the same
 * tablespace) at `durable` (the highest LSN a checkpoint seen after every one of those reads covers): the
 * `n` highest at or below it are the witnesses; the `n` highest above it wait for a later checkpoint.
 */
export function pickWitnesses(observed: Witness[][], durable: bigint, n: number): { witnesses: Witness[]; pending: Witness[] } {
  // Per side: a page's older version can witness while its newer one still waits.
  return {
    witnesses: out(byPage(observed, (lsn) => lsn <= durable).slice(0, n)),
    pending: out(byPage(observed, (lsn) => lsn > durable).slice(0, n)),
  };
}

/** Keeps the `n` highest-LSN pages offered, highest first. */
export function keepTop(top: Array<{ page: number; lsn: bigint }>, page: number, lsn: bigint, n: number): void {
  if (top.length >= n && lsn <= top[top.length - 1]!.lsn) return;
  top.push({ page, lsn });
  top.sort((a, b) => (b.lsn > a.lsn ? 1 : b.lsn < a.lsn ? -1 : a.page - b.page));
  if (top.length > n) top.pop();
}
