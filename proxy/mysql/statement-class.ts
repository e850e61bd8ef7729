/**
 * Which COM_QUERY statements can never need a freshness hold, decided from the first bytes of the
 * query text. Strict freshness holds the OK of every command that may have changed durable state; a
 * connector's `SET NAMES`, a `USE`, or a transaction's `ROLLBACK` must not wait for the CAS (that would
 * make connecting impossible while the CAS is unreachable, when reads must keep working).
 *
 * The rule is conservative: anything not recognised is a possible write. Multi-statement texts are
 * handled by the tracker (a response with several results is always held if it contains an OK).
 */

/** Leading keywords whose statements change no durable data. */
const READ_ONLY_KEYWORDS = new Set(['SELECT', 'SHOW', 'SET', 'USE', 'DESCRIBE', 'DESC', 'EXPLAIN', 'BEGIN', 'START', 'ROLLBACK', 'HELP']);

/** Bytes of query text the classifier looks at (the pump copies no more than this). */
export const STATEMENT_PREFIX_BYTES = 64;

/**
 * True when the statement starting in `text` (a prefix of the query, latin1-decoded is enough for
 * keywords) cannot change durable state. `SET ... autocommit` is excluded: switching autocommit on
 * commits an open transaction. Executable comments (`/*!`, `/*M!`) are treated as unknown.
 */
export function isReadOnlyStatement(text: Buffer): boolean {
  let i = 0;
  const n = text.length;
  for (;;) {
    while (i < n && (text[i] === 0x20 || text[i] === 0x09 || text[i] === 0x0a || text[i] === 0x0d)) i++;
    if (i + 1 < n && text[i] === 0x2f && text[i + 1] === 0x2a) { // "/*"
      if (i + 2 < n && (text[i + 2] === 0x21 || text[i + 2] === 0x4d)) return false; // /*! or /*M!
      const end = text.indexOf('*/', i + 2, 'latin1');
      if (end < 0) return false;
      i = end + 2;
      continue;
    }
    if (text[i] === 0x23 || (i + 2 < n && text[i] === 0x2d && text[i + 1] === 0x2d && (text[i + 2] === 0x20 || text[i + 2] === 0x09))) {
      const end = text.indexOf('\n', i, 'latin1');
      if (end < 0) return false;
      i = end + 1;
      continue;
    }
    break;
  }
  let j = i;
  while (j < n && ((text[j]! | 0x20) >= 0x61 && (text[j]! | 0x20) <= 0x7a)) j++;
  if (j === i || j - i > 10) return false;
  const keyword = text.toString('latin1', i, j).toUpperCase();
  if (!READ_ONLY_KEYWORDS.has(keyword)) return false;
  if (keyword === 'SET' && /autocommit/i.test(text.toString('latin1', j))) return false;
  // A keyword cut by the end of the prefix is not a keyword we know.
  return j < n || n < STATEMENT_PREFIX_BYTES;
}
