import { CdbpError } from '../../src/kernel/errors.ts';

export async function run(_argv: string[]): Promise<number> {
  throw new CdbpError('INTERNAL', 'cdbp proxy is not built yet');
}
