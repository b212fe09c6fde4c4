// Starts `mmfree-cli serve` (MMFREE_CLI) on 127.0.0.1 on a free port for a test; resolves with
// { url, port, proc } once the server says where it listens. --exit-with-parent: it never
// outlives the test process.
import { spawn } from "node:child_process";

export const cli = process.env.MMFREE_CLI;
if (!cli) throw new Error("set MMFREE_CLI to the mmfree-cli binary");

export function serve(args = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(cli, ["serve", "--port", "0", "--exit-with-parent", "-t", "2", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    proc.stderr.on("data", (d) => {
      err += d;
      const m = /listening on port (\d+)/.exec(err);
      if (m) resolve({ url: `http://127.0.0.1:${m[1]}`, port: Number(m[1]), proc });
    });
    proc.on("exit", (code) => reject(new Error(`server exited (${code}): ${err}`)));
  });
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
