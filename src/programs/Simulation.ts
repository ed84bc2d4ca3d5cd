/**
 * Simulation: whole networks of real connection managers in one process, on virtual time.
 *
 * Every node is the production connection manager, composed by `Node.make` (the library's
 * composition of a node from services already made: a layer graph per node would cost more
 * memory than the node) with an in-memory NodeGraph and KeyRingTest keys, over a transport
 * bound in the SimNetwork world, its configuration one `NodeConfig` tree.
 * The agent RPC is PeerRpcSim by default (calls as messages on the simulated connections, one
 * PeerRpc for the whole world), or with `rpc: "wire"` a PeerRpcLive per node (the real
 * @effect/rpc framing as bytes on simulated streams). The whole run goes through
 * `SimRuntime.simulate`: a virtual clock that jumps to the next timer whenever every fiber
 * waits, and a scheduler that runs fibers in a fixed order. So a scenario is a pure function
 * of its options: the same options give the same trace hash and the same figures.
 *
 * - `makeWorld`: a world to script by hand (tests): add nodes, join them, crash, restart and
 *   look up; its `sim` partitions and heals the network.
 * - `runScenario`: build N nodes that join through a few seeds, optionally crash a fraction,
 *   run L lookups of random live targets from random live nodes, and report.
 */

export * from "../internal/simulation/figures.js"
export * from "../internal/simulation/options.js"
export * from "../internal/simulation/scenario.js"
export * from "../internal/simulation/world.js"
