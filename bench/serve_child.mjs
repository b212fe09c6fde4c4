// Starts `mmfree-cli serve` as a child process on 127.0.0.1, on a port the system picks, for the
// benchmarks here and the Node tests (tests/node/serve_helper.mjs). Resolves with
// { url, port, proc, log } once the server says where it listens (log(): its stderr so far);
// rejects if it exits first. --exit-with-parent: it never outlives the process that started it.
import { spawn } from "node:child_process";

export function spawnServer(cli, args = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(cli, ["serve", "--port", "0", "--exit-with-parent", ...args], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    proc.stderr.on("data", (d) => {
      err += d;
      const m = /listening on port (\d+)/.exec(err);
      if (m) resolve({ url: `http://127.0.0.1:${m[1]}`, port: Number(m[1]), proc, log: () => err });
    });
    proc.on("exit", (code) => reject(new Error(`server exited (${code}): ${err}`)));
  });
}
