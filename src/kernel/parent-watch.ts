/**
 * A child started by a supervisor (`cdbp up`) in its own process group does not get the terminal's
 * signals; if the supervisor dies without stopping it, this notices (the parent pid changes) and runs
 * the child's normal shutdown, so no orphan keeps a datadir locked.
 */
export function watchParent(onOrphaned: () => void, env: NodeJS.ProcessEnv = process.env): void {
  const expected = Number(env.CDBP_PARENT_PID);
  if (!Number.isInteger(expected) || expected <= 0) return;
  const timer = setInterval(() => {
    if (process.ppid !== expected) {
      clearInterval(timer);
      onOrphaned();
    }
  }, 1000);
  timer.unref();
}
