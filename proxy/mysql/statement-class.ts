/**
 * What a COM_QUERY / COM_STMT_PREPARE statement can do to durable state, decided from the first bytes
 * of its text. Strict freshness holds every acknowledgment of a possible write; a connector's
 * `SET NAMES`, a `USE`, a `SELECT` or a `ROLLBACK` must not wait for the CAS (that would make connecting
 * and reading impossible while the CAS is unreachable).
 *
 * Classes (the tracker turns them into hold decisions, see tracker.ts):
 * - `read`:  changes no durable data (SELECT, SHOW, USE, DESCRIBE/DESC, EXPLAIN, HELP, ROLLBACK, and
 *            SET in its plainly session-only forms, see isSessionOnlySet).
 * - `begin`: BEGIN [WORK] / START TRANSACTION: read-only, except that inside an open transaction it
 *            commits that transaction implicitly (its OK then carries IN_TRANS of the new one).
 * - `dml`:   INSERT / UPDATE / DELETE / REPLACE: atomic statements that never commit implicitly.
 * - `write`: anything else, including anything not recognised (DDL, COMMIT, CALL, BEGIN NOT ATOMIC, ...).
 *
 * Limit: a SELECT (or `SET @x = 1` without parentheses is fine, `SET @x = f()` is not) calling a stored
 * function that writes cannot be seen from the text; SELECT stays `read` (documented in FRESHNESS.md).
 */

export type StatementClass = 'read' | 'begin' | 'dml' | 'write';

const READ_KEYWORDS = new Set(['SELECT', 'SHOW', 'USE', 'DESCRIBE', 'DESC', 'EXPLAIN', 'ROLLBACK', 'HELP']);
const DML_KEYWORDS = new Set(['INSERT', 'UPDATE', 'DELETE', 'REPLACE']);

/** Bytes of query text the classifier looks at (the pump copies no more than this). */
export const STATEMENT_PREFIX_BYTES = 64;

/**
 * SET forms that write or commit: SET PASSWORD (mysql.global_priv), SET DEFAULT ROLE, SET GLOBAL /
 * @@global, SET STATEMENT ... FOR <any statement>, anything naming autocommit (switching it on commits),
 * NEXT VALUE FOR (advances a sequence). Comments are refused too: `/*!...*\/` is executable.
 */
const SET_WRITES = /\b(password|statement|global|autocommit|next)\b|default\s+role|\/\*|\(/i;

function isSpace(b: number | undefined): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

function isLetter(b: number | undefined): boolean {
  return b !== undefined && (b | 0x20) >= 0x61 && (b | 0x20) <= 0x7a;
}

/** Offset of the first token after whitespace and plain comments, or -1 when it cannot be trusted. */
function skipBlanks(text: Buffer, from: number): number {
  let i = from;
  const n = text.length;
  for (;;) {
    while (i < n && isSpace(text[i])) i++;
    if (i + 1 < n && text[i] === 0x2f && text[i + 1] === 0x2a) { // "/*"
      if (i + 2 < n && (text[i + 2] === 0x21 || text[i + 2] === 0x4d)) return -1; // /*! or /*M! (executable)
      const end = text.indexOf('*/', i + 2, 'latin1');
      if (end < 0) return -1;
      i = end + 2;
      continue;
    }
    if (text[i] === 0x23 || (i + 2 < n && text[i] === 0x2d && text[i + 1] === 0x2d && isSpace(text[i + 2]))) {
      const end = text.indexOf('\n', i, 'latin1');
      if (end < 0) return -1;
      i = end + 1;
      continue;
    }
    return i;
  }
}

/** The word starting at `i` (letters only, upper-cased), and where it ends. */
function wordAt(text: Buffer, i: number): { word: string; end: number } {
  let j = i;
  while (j < text.length && isLetter(text[j])) j++;
  return { word: j - i > 0 && j - i <= 12 ? text.toString('latin1', i, j).toUpperCase() : '', end: j };
}

/**
 * `text` is the start of the statement (latin1 is enough for keywords); `complete` says whether it is
 * the whole statement. A keyword cut off by the end of an incomplete prefix is not trusted.
 */
export function classifyStatement(text: Buffer, complete: boolean): StatementClass {
  const i = skipBlanks(text, 0);
  if (i < 0) return 'write';
  const { word, end } = wordAt(text, i);
  if (word === '' || (end === text.length && !complete)) return 'write';
  const after = text[end];
  // "SELECTX", "SET_x", "DESC1": an identifier, not the keyword
  if (after !== undefined && (isLetter(after) || after === 0x5f || after === 0x24 || (after >= 0x30 && after <= 0x39))) return 'write';
  if (word === 'SET') return isSessionOnlySet(text, end, complete) ? 'read' : 'write';
  if (READ_KEYWORDS.has(word)) return 'read';
  if (DML_KEYWORDS.has(word)) return 'dml';
  if (word === 'BEGIN' || word === 'START') return transactionStart(text, word, end, complete) ? 'begin' : 'write';
  return 'write';
}

/** SET is session-only when the whole statement is visible and has no call, subquery or writing form. */
function isSessionOnlySet(text: Buffer, from: number, complete: boolean): boolean {
  if (!complete) return false;
  return !SET_WRITES.test(text.toString('latin1', from));
}

/** `BEGIN`, `BEGIN WORK`, `START TRANSACTION ...` (not BEGIN NOT ATOMIC, START SLAVE/REPLICA, ...). */
function transactionStart(text: Buffer, keyword: string, from: number, complete: boolean): boolean {
  const i = skipBlanks(text, from);
  if (i < 0) return false;
  if (i >= text.length) return complete && keyword === 'BEGIN';
  if (keyword === 'BEGIN' && text[i] === 0x3b) return true; // "BEGIN;": the tracker sees any following statement
  const next = wordAt(text, i);
  if (next.end === text.length && !complete) return false;
  return keyword === 'BEGIN' ? next.word === 'WORK' : next.word === 'TRANSACTION';
}

/** True when the statement is `read` (kept for callers that only need the yes/no answer). */
export function isReadOnlyStatement(text: Buffer, complete = text.length < STATEMENT_PREFIX_BYTES): boolean {
  return classifyStatement(text, complete) === 'read';
}
