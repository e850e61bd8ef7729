/**
 * Can a PostgreSQL statement text (a Query message, or the text of a prepared statement) change durable
 * data? Strict freshness holds the acknowledgment of every transaction that may have written; one that
 * only read is answered at once, so reads never wait for the CAS (and keep working while it is
 * unreachable). The answer is `read` only when the text is plainly a read; anything else, anything
 * not recognised or not seen whole, is `write` (held: safe, just slower).
 *
 * `read` when every statement of the text (split at each `;`, which over-splits inside literals and
 * only ever makes the answer more conservative) starts with one of READ_KEYWORDS, after blanks and
 * comments, and nowhere in the whole text (literals and comments included) is there a word of
 * WRITE_WORDS. So `SELECT ... INTO t`, `SELECT ... FOR UPDATE`, a data-modifying `WITH`, `SELECT
 * nextval('s')`, `EXPLAIN ANALYZE` (which runs the statement) and `COPY ... FROM` are writes.
 *
 * Limit (the same as MySQL's, docs/FRESHNESS.md): a SELECT calling a user-defined function that
 * writes (a volatile PL/pgSQL function doing INSERT, dblink_exec, ...) cannot be told from its text; it
 * is answered as a read, so its write is acknowledged before it is sealed. The built-in writing
 * functions are in WRITE_WORDS. COPY FROM STDIN is a write whatever its text (the conversation sees
 * the CopyInResponse), and so is every FunctionCall message (the fast-path large-object API).
 */
import type { WriteClass } from './conversation.ts';

const READ_KEYWORDS = new Set([
  'SELECT', 'VALUES', 'TABLE', 'WITH', 'SHOW', 'SET', 'RESET', 'BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT',
  'SAVEPOINT', 'RELEASE', 'FETCH', 'MOVE', 'CLOSE', 'DECLARE', 'DEALLOCATE', 'DISCARD', 'LISTEN', 'UNLISTEN', 'NOTIFY',
  'PREPARE', 'EXPLAIN', 'COPY',
]);

/**
 * Words that make any text a write: data-modifying statements (also inside WITH, EXPLAIN, PREPARE,
 * COPY (...) TO), SELECT INTO, row locks (FOR UPDATE / FOR [KEY] SHARE), and the built-in functions
 * that write: sequences, large objects, logical decoding messages.
 */
const WRITE_WORDS = /\b(insert|update|delete|merge|into|share|nextval|setval|lo_[a-z0-9_]*|lowrite|pg_logical_emit_message)\b/i;

export function classifyStatement(text: string, complete: boolean): WriteClass {
  if (!complete) return 'write';
  if (WRITE_WORDS.test(text)) return 'write';
  for (const segment of text.split(';')) {
    const start = skipBlanks(segment, 0);
    if (start < 0) return 'write';
    if (start >= segment.length) continue;
    if (!isReadStatement(segment, start)) return 'write';
  }
  return 'read';
}

function isReadStatement(s: string, start: number): boolean {
  const m = /^[A-Za-z_]+/.exec(s.slice(start, start + 16));
  if (!m) return false;
  const next = s[start + m[0].length];
  if (next !== undefined && /[0-9$]/.test(next)) return false; // an identifier such as select1
  const word = m[0].toUpperCase();
  if (!READ_KEYWORDS.has(word)) return false;
  const rest = s.slice(start + m[0].length);
  // COMMIT PREPARED commits what another session prepared.
  if (word === 'COMMIT') return !/^\s+prepared\b/i.test(rest);
  // Plain EXPLAIN only plans; EXPLAIN ANALYZE runs the statement.
  if (word === 'EXPLAIN') return !/\banaly[sz]e\b/i.test(rest);
  // COPY ... TO STDOUT reads; COPY ... FROM (and COPY TO a server file) is not a read.
  if (word === 'COPY') return /\bto\s+stdout\b/i.test(rest) && !/\bfrom\s+(stdin|program|'|e')/i.test(rest);
  return true;
}

/** Offset after blanks and comments (`--` to end of line, nested block comments), or -1 if a comment is not closed. */
function skipBlanks(s: string, from: number): number {
  let i = from;
  const n = s.length;
  for (;;) {
    while (i < n && /\s/.test(s[i]!)) i++;
    if (s.startsWith('--', i)) {
      const end = s.indexOf('\n', i);
      if (end < 0) return n;
      i = end + 1;
      continue;
    }
    if (s.startsWith('/*', i)) {
      let depth = 0;
      let j = i;
      while (j < n) {
        if (s.startsWith('/*', j)) {
          depth++;
          j += 2;
        } else if (s.startsWith('*/', j)) {
          depth--;
          j += 2;
          if (depth === 0) break;
        } else {
          j++;
        }
      }
      if (depth !== 0) return -1;
      i = j;
      continue;
    }
    return i;
  }
}
