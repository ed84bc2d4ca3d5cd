/**
 * quicmesh/testing: whole networks of nodes in one process, for tests and simulations.
 *
 * `import { SimWorld, Simulation, KeyRingTest } from "quicmesh/testing"`: a simulated network
 * of hosts, NATs and links in which each node's QuicTransport is an in-memory endpoint
 * (`SimNetwork`, `SimWorld`), the agent RPC carried directly on it (`PeerRpcSim`), virtual
 * time (`SimRuntime`), scripted worlds and whole scenarios (`Simulation`), and deterministic
 * identities (`KeyRingTest`). The real connection manager runs unchanged on it.
 */

/** A KeyRing whose key is derived from a seed, in memory, no files. */
export * as KeyRingTest from "./layers/KeyRingTest.js"
/** `PeerRpc` directly over simulated connections: calls as messages, no encoding. */
export * as PeerRpcSim from "./layers/PeerRpcSim.js"
/** The simulated network's layers: the world (`layer`) and each node's transport in it (`transport`). */
export * as SimWorld from "./layers/SimWorld.js"

/** Virtual time: a clock that jumps to the next timer when every fiber waits, a fixed-order scheduler. */
export * as SimRuntime from "./programs/SimRuntime.js"

/** Worlds of real connection managers to script by hand (`makeWorld`), and whole scenarios (`runScenario`). */
export * as Simulation from "./programs/Simulation.js"
/** The simulated network as a service: hosts, NATs, links, partitions and crashes. */
export * as SimNetwork from "./services/SimNetwork.js"
