/**
 * The owner's one-shot steps of the compose stack, run in the app image (see compose/docker-compose.yml):
 *
 *   keys    make the simulated platform key (stands in for TEE hardware: the proxy signs evidence with
 *           it, the CAS trusts its public half) and the owner key, each in its own volume, once; the
 *           owner's PUBLIC key (hex) goes to a public volume too (the replicated CAS's owner allow-list).
 *   policy  sign and apply the service policy that allows exactly the measurement of the code in THIS
 *           image (re-signed, naming its predecessor, when the image's code changes). CDBP_CAS_URL may
 *           name several members of a replicated CAS: the first that answers applies it (etcd carries
 *           it to the others).
 *
 * Nothing here ends up in an image layer: keys live in volumes created at run time. Everything is
 * SIMULATED: a real deployment has no platform key file (the CPU signs) and keeps the owner key offline.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, chmodSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generatePlatformKey } from '../../src/attestation/simulated.ts';
import { measureShippedCode } from '../../src/attestation/measurement.ts';
import { loadOwnerKey } from '../../src/provisioning/policy.ts';
import { ensureOwnerKey, ensureServicePolicy } from '../../cli/local-policy.ts';

const env = (name: string, fallback?: string): string => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`${name} is not set`);
  return v;
};
const say = (msg: string) => console.log(`cdbp-setup: ${msg}`);

async function keys(): Promise<void> {
  const platformKey = env('CDBP_PLATFORM_KEY_FILE', '/keys/platform/platform.key');
  const platformPubDir = env('CDBP_PLATFORM_PUB_DIR', '/keys/platform-pub');
  const ownerKey = env('CDBP_OWNER_KEY_FILE', '/keys/owner/owner.key');
  for (const f of [platformKey, ownerKey]) mkdirSync(path.dirname(f), { recursive: true, mode: 0o700 });
  if (!existsSync(platformKey)) {
    const { publicKeyHex } = await generatePlatformKey(platformKey);
    say(`SIMULATED platform key created (public ${publicKeyHex.slice(0, 16)}…)`);
  } else {
    say('SIMULATED platform key present');
  }
  // The CAS gets only the public half, in a volume of its own.
  mkdirSync(platformPubDir, { recursive: true });
  const pub = path.join(platformPubDir, path.basename(`${platformKey}.pub`));
  copyFileSync(`${platformKey}.pub`, pub);
  chmodSync(pub, 0o644);
  await ensureOwnerKey(ownerKey);
  const ownerPublic = loadOwnerKey(ownerKey).publicKey.toString('hex');
  const ownerPubDir = process.env.CDBP_OWNER_PUB_DIR;
  if (ownerPubDir) {
    mkdirSync(ownerPubDir, { recursive: true });
    writeFileSync(path.join(ownerPubDir, 'owner.pub'), `${ownerPublic}\n`, { mode: 0o644 });
  }
  say(`owner key ${ownerKey}: public ${ownerPublic}`);
}

async function policy(): Promise<void> {
  const casUrls = env('CDBP_CAS_URL').split(',').map((u) => u.trim()).filter(Boolean);
  const caFile = env('CDBP_CAS_CA_FILE');
  const ownerKeyFile = env('CDBP_OWNER_KEY_FILE', '/keys/owner/owner.key');
  const service = env('CDBP_SERVICE', 'mariadb');
  const measurement = measureShippedCode();
  const failures: string[] = [];
  for (const casUrl of casUrls) {
    try {
      const applied = await ensureServicePolicy({ casUrl, caPem: readFileSync(caFile, 'utf8'), ownerKeyFile, service, measurement });
      say(`policy for service ${service} ${applied.changed ? 'applied' : 'unchanged'} at ${casUrl}: ${applied.policyHash} (measurement ${measurement}, tee mode simulated)`);
      return;
    } catch (e) {
      if (casUrls.length === 1) throw e;
      // One member down is normal for a replicated CAS: try the next. A refusal is reported with the rest.
      const err = e as { code?: string; message?: string };
      failures.push(`${casUrl}: ${err.code ? `${err.code}: ` : ''}${err.message ?? String(e)}`);
      say(`${failures.at(-1)!} (trying the next member)`);
    }
  }
  throw new Error(failures.join('; '));
}

const step = process.argv[2];
try {
  if (step === 'keys') await keys();
  else if (step === 'policy') await policy();
  else if (step === 'measurement') console.log(measureShippedCode());
  else {
    console.error('usage: setup.ts keys|policy|measurement');
    process.exit(2);
  }
} catch (e) {
  const err = e as { code?: string; message?: string };
  console.error(`cdbp-setup: ${step} failed: ${err.code ? `${err.code}: ` : ''}${err.message ?? String(e)}`);
  process.exit(1);
}
