import { CdbpError } from './errors.ts';

/**
 * One validated configuration schema for every role, one env prefix (CDBP_). A value comes from, in
 * order: an explicit override (CLI flag), the environment, the default. All problems are collected and
 * reported at once, so an operator fixes a bad deployment in one round.
 */
export const ENV_PREFIX = 'CDBP_';

type Kind = 'string' | 'int' | 'bool' | 'enum' | 'list';

interface FieldBase<K extends Kind, T> {
  kind: K;
  doc: string;
  default?: T;
  /** Required with no default: missing is an error. */
  required?: boolean;
  /** Secret values are never echoed in errors or `cdbp config`. */
  secret?: boolean;
}
export type StringField = FieldBase<'string', string>;
export type IntField = FieldBase<'int', number> & { min?: number; max?: number };
export type BoolField = FieldBase<'bool', boolean>;
export type EnumField<V extends string = string> = FieldBase<'enum', V> & { values: readonly V[] };
export type ListField = FieldBase<'list', string[]>;
export type Field = StringField | IntField | BoolField | EnumField | ListField;
export type Schema = Record<string, Field>;

type ValueOf<F> = F extends IntField ? number
  : F extends BoolField ? boolean
  : F extends EnumField<infer V> ? V
  : F extends ListField ? string[]
  : string;
type IsOptional<F> = F extends { default: unknown } ? false : F extends { required: true } ? false : true;
export type ConfigOf<S extends Schema> = {
  [K in keyof S as IsOptional<S[K]> extends true ? never : K]: ValueOf<S[K]>;
} & {
  [K in keyof S as IsOptional<S[K]> extends true ? K : never]?: ValueOf<S[K]>;
};

/** camelCase key → CDBP_SNAKE_CASE env name. */
export function envName(key: string): string {
  return ENV_PREFIX + key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

export function loadConfig<S extends Schema>(
  schema: S,
  overrides: Record<string, string | number | boolean | string[] | undefined> = {},
  env: NodeJS.ProcessEnv = process.env,
): ConfigOf<S> {
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema)) {
    const source = overrides[key] !== undefined ? `--${kebab(key)}` : envName(key);
    const raw = overrides[key] !== undefined ? overrides[key] : env[envName(key)];
    if (raw === undefined || raw === '') {
      if (field.default !== undefined) out[key] = field.default;
      else if (field.required) problems.push(`${source}: required (${field.doc})`);
      continue;
    }
    const parsed = parseValue(field, raw);
    if (parsed.ok) out[key] = parsed.value;
    else problems.push(`${source}: ${parsed.problem}${field.secret ? '' : ` (got ${JSON.stringify(raw)})`}`);
  }
  if (problems.length > 0) {
    throw new CdbpError('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`, {
      details: { problems },
    });
  }
  return out as ConfigOf<S>;
}

function parseValue(field: Field, raw: string | number | boolean | string[]):
  { ok: true; value: unknown } | { ok: false; problem: string } {
  switch (field.kind) {
    case 'string':
      return typeof raw === 'string' ? { ok: true, value: raw } : { ok: false, problem: 'must be a string' };
    case 'int': {
      const n = typeof raw === 'number' ? raw : /^-?\d+$/.test(String(raw)) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n)) return { ok: false, problem: 'must be an integer' };
      if (field.min !== undefined && n < field.min) return { ok: false, problem: `must be ≥ ${field.min}` };
      if (field.max !== undefined && n > field.max) return { ok: false, problem: `must be ≤ ${field.max}` };
      return { ok: true, value: n };
    }
    case 'bool': {
      if (typeof raw === 'boolean') return { ok: true, value: raw };
      const s = String(raw).toLowerCase();
      if (['1', 'true', 'yes', 'on'].includes(s)) return { ok: true, value: true };
      if (['0', 'false', 'no', 'off'].includes(s)) return { ok: true, value: false };
      return { ok: false, problem: 'must be true or false' };
    }
    case 'enum':
      return field.values.includes(String(raw))
        ? { ok: true, value: String(raw) }
        : { ok: false, problem: `must be one of ${field.values.join(', ')}` };
    case 'list':
      return {
        ok: true,
        value: Array.isArray(raw) ? raw : String(raw).split(',').map((s) => s.trim()).filter(Boolean),
      };
  }
}

function kebab(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();
}

/** Human-readable reference of a schema (for `--help` and docs). */
export function describeSchema(schema: Schema): string {
  return Object.entries(schema)
    .map(([k, f]) => `  ${envName(k).padEnd(38)} ${f.doc}${f.default !== undefined && !f.secret ? ` [${JSON.stringify(f.default)}]` : ''}`)
    .join('\n');
}
