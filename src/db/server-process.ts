/**
 * One supervised database server process: spawn once, know whether it runs, stop it with the
 * engine's clean-shutdown signal escalating to SIGKILL, or kill it to simulate a crash. Shared by the
 * private mariadbd and postgres launchers so both stop the same way.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';

export class ServerProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> | undefined;

  /** `cleanStop` is the signal the engine treats as a clean shutdown (mariadbd: SIGTERM, postgres: SIGINT). */
  constructor(private readonly cleanStop: NodeJS.Signals) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  spawn(binary: string, args: string[], options: SpawnOptions): void {
    const child = spawn(binary, args, options);
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  }

  /** Resolves with the exit code when the server exits (for supervisors). */
  whenExited(): Promise<number | null> {
    return this.exited ?? Promise.resolve(null);
  }

  async stop(timeoutMs: number): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill(this.cleanStop);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Simulates a crash: no clean shutdown, no checkpoint. */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill('SIGKILL');
    await this.exited;
  }
}

/** The last lines of a log file joined on one line, for one-line error messages. */
export function logTail(file: string, lines = 8): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return `(no log at ${file})`;
  }
}
