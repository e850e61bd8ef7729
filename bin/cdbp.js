#!/usr/bin/env node
// The installed entry point. The code ships as TypeScript and runs through tsx's loader, so the
// measured code (see src/attestation/measurement.ts) is exactly the source a reviewer reads.
import { register } from 'tsx/esm/api';
register();
const { runMain } = await import('../cli/main.ts');
runMain();
