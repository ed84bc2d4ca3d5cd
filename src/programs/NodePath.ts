/**
 * The files an agent keeps in its node path, and a liveness check for the pid in its lock.
 * Kept apart from Agent.ts so that the client commands load without the node's layers.
 */
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs"
import { join } from "node:path"
import { Effect } from "effect"
import { OperationError } from "./Input.js"

/** The control API's Unix socket (mode 0600). */
export const socketPath = (nodePath: string) => join(nodePath, "agent.sock")

/** The lock file holding the running agent's pid. */
export const lockPath = (nodePath: string) => join(nodePath, "agent.lock")

/** Whether a process with this pid exists (EPERM: it exists but is not ours). */
export const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** One agent per node path: an exclusive lock file holding our pid, removed on exit. */
export const lockNodePath = (nodePath: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(nodePath, { recursive: true, mode: 0o700 })
        chmodSync(nodePath, 0o700)
        const path = lockPath(nodePath)
        for (let attempt = 0; attempt < 2; attempt++) {
          try {
            const fd = openSync(path, "wx", 0o600)
            writeSync(fd, `${process.pid}\n`)
            closeSync(fd)
            return path
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
            const pid = Number.parseInt(readFileSync(path, "utf8"), 10)
            if (Number.isInteger(pid) && pid !== process.pid && pidAlive(pid))
              throw new OperationError({ message: `another agent (pid ${pid}) is running at ${nodePath}` })
            rmSync(path, { force: true })
          }
        }
        throw new OperationError({ message: `cannot lock ${nodePath}` })
      },
      catch: (e) =>
        e instanceof OperationError
          ? e
          : new OperationError({ message: `cannot use node path ${nodePath}: ${(e as Error).message}` })
    }),
    (path) => Effect.sync(() => rmSync(path, { force: true }))
  )
