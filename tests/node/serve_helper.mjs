// Starts `mmfree-cli serve` (MMFREE_CLI) on 127.0.0.1 on a free port for a test, with 2 threads
// (bench/serve_child.mjs: resolves with { url, port, proc, log } once the server listens).
import { spawnServer } from "../../bench/serve_child.mjs";

export const cli = process.env.MMFREE_CLI;
if (!cli) throw new Error("set MMFREE_CLI to the mmfree-cli binary");

export function serve(args = []) {
  return spawnServer(cli, ["-t", "2", ...args]);
}

// Stops a child process (SIGTERM) and resolves once it has exited, so that a test removes its
// directories only after the server has finished writing into them.
export function stop(proc) {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    proc.once("exit", () => resolve());
    proc.kill("SIGTERM");
  });
}
