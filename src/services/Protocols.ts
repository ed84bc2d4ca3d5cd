/**
 * Protocols: the application protocols a node serves on its connections, and opening a stream
 * of one on a connection.
 *
 * A stream of protocol `id` starts with a header naming it; the acceptor answers with one
 * status (accepted, or refused with a reason) before anything else (`internal/protocolWire.ts`
 * has the bytes). The agent RPC's own streams carry no header and are told apart by their first
 * byte, so they cost nothing more.
 *
 * - Serving: `Protocols` is the node's registry. `handle(id, handler)` serves `id` on every
 *   connection while the scope is open; the handler gets the stream as an `@effect/platform`
 *   `Socket` and the calling peer (`Contact`: NodeId from the handshake, observed address),
 *   and the stream ends when the handler returns.
 * - Opening: `open(connection, id)` waits for the status (a refusal is an
 *   `UnsupportedProtocolError`); `openOptimistic` returns at once and the status is checked by
 *   the socket's first read. `ConnectionManager.openStream(nodeId, id)` does it by NodeId.
 */
import type { Socket } from "@effect/platform"
import { Context, Data, Duration, Effect, Either, Layer, Option, Predicate, Schema, type Scope } from "effect"
import * as ProtocolWire from "../internal/protocolWire.js"
import type { Contact } from "./Contact.js"
import * as NodeId from "./NodeId.js"
import { ConnectionError, type QuicConnection } from "./QuicTransport.js"

const SEGMENT = /^[A-Za-z0-9._-]{1,64}$/
/** Ids starting so are the node's own protocols. */
export const RESERVED_PREFIX = "quicmesh/"

/** Why `text` is not a protocol id, or undefined when it is one. */
const invalidReason = (text: string): string | undefined => {
  if (text.length === 0) return "it is empty"
  if (text.length > 255) return "it is longer than 255 characters"
  const bad = text.split("/").find((segment) => !SEGMENT.test(segment))
  if (bad !== undefined)
    return `segment "${bad.slice(0, 80)}" is not 1-64 characters of letters, digits, ".", "_" or "-"`
  if (text.startsWith(RESERVED_PREFIX))
    return `ids starting with "${RESERVED_PREFIX}" are reserved for the node`
  return undefined
}

/** A protocol id was not valid ("segment(/segment)*", each 1-64 of `[A-Za-z0-9._-]`, not reserved). */
export class InvalidProtocolIdError extends Data.TaggedError("InvalidProtocolIdError")<{
  readonly text: string
  readonly detail: string
}> {
  override get message() {
    return `invalid protocol id "${this.text.slice(0, 80)}": ${this.detail}`
  }
}

/** The peer refused the protocol: it does not serve it (or not that version), or answered no status. */
export class UnsupportedProtocolError extends Data.TaggedError("UnsupportedProtocolError")<{
  readonly protocol: string
  readonly detail: string
  readonly nodeId?: NodeId.NodeIdEncoded
}> {
  override get message() {
    const peer = this.nodeId === undefined ? "the peer" : `node ${this.nodeId}`
    return `${peer} refused protocol "${this.protocol}": ${this.detail}`
  }
}

/** An application protocol's name and version, e.g. "notes/1": "segment(/segment)*". */
export const ProtocolIdSchema = Schema.String.pipe(
  Schema.filter((text) => invalidReason(text) ?? true),
  Schema.brand("quicmesh/ProtocolId")
)
export type ProtocolId = typeof ProtocolIdSchema.Type

export const ProtocolId = {
  /** `text` as a protocol id, or why it is not one. */
  make: (text: string): Either.Either<ProtocolId, InvalidProtocolIdError> => {
    const detail = invalidReason(text)
    return detail === undefined
      ? Either.right(text as ProtocolId)
      : Either.left(new InvalidProtocolIdError({ text, detail }))
  },
  /** `text` as a protocol id; throws `InvalidProtocolIdError` when it is not one. */
  unsafeMake: (text: string): ProtocolId => Either.getOrThrowWith(ProtocolId.make(text), (e) => e),
  is: (text: unknown): text is ProtocolId => Predicate.isString(text) && invalidReason(text) === undefined,
  schema: ProtocolIdSchema
} as const

/** Serves one stream of a protocol; `caller` is the peer as the connection proves it. */
export type StreamHandler = (socket: Socket.Socket, caller: Contact) => Effect.Effect<void>

export interface ProtocolsService {
  /**
   * Serves `protocol` with `handler` on every connection while the scope is open. A second
   * handler for the same id replaces the first (until its own scope closes).
   */
  readonly handle: (protocol: ProtocolId, handler: StreamHandler) => Effect.Effect<void, never, Scope.Scope>
  /** The handler serving `protocol` now, if any (by the id's text as it came from the wire). */
  readonly lookup: (protocol: string) => Option.Option<StreamHandler>
}

/** The node's registry of served protocols (`Node.layerWith` provides one). */
export class Protocols extends Context.Tag("quicmesh/Protocols")<Protocols, ProtocolsService>() {}

/** A registry serving `initial` (ids already checked). */
export const make = (initial: Iterable<readonly [ProtocolId, StreamHandler]> = []): ProtocolsService => {
  const handlers = new Map<string, StreamHandler>(initial)
  return {
    handle: (protocol, handler) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          handlers.set(protocol, handler)
        }),
        () =>
          Effect.sync(() => {
            if (handlers.get(protocol) === handler) handlers.delete(protocol)
          })
      ),
    lookup: (protocol) => Option.fromNullable(handlers.get(protocol))
  }
}

/** An empty registry. */
export const layer: Layer.Layer<Protocols> = Layer.sync(Protocols, () => make())

/** A registry serving `handlers` (keyed by protocol id) from the start. */
export const layerWith = (
  handlers: Readonly<Record<string, StreamHandler>>
): Layer.Layer<Protocols, InvalidProtocolIdError> =>
  Layer.effect(
    Protocols,
    Effect.map(
      Effect.forEach(Object.entries(handlers), ([text, handler]) =>
        Effect.map(ProtocolId.make(text), (id) => [id, handler] as const)
      ),
      make
    )
  )

const streamError = (connection: QuicConnection, cause: unknown) =>
  new ConnectionError({
    connectionId: connection.id,
    reason: "stream",
    detail: `the protocol stream failed: ${Predicate.hasProperty(cause, "message") ? String(cause.message) : String(cause)}`
  })

const refusal = (connection: QuicConnection, protocol: ProtocolId, detail: string) =>
  new UnsupportedProtocolError({ protocol, detail, nodeId: NodeId.encode(connection.remoteNodeId) })

/** A new stream on `connection` with the header naming `protocol` written. */
const openWithHeader = (connection: QuicConnection, protocol: ProtocolId) =>
  Effect.gen(function* () {
    const socket = yield* connection.openStream
    const write = yield* socket.writer
    yield* Effect.mapError(write(ProtocolWire.encodeHeader(protocol)), (e) => streamError(connection, e))
    return socket
  })

/** How long `open` waits for the peer's status unless told. */
export const defaultStatusTimeout = Duration.seconds(15)

/**
 * Opens a stream of `protocol` on `connection` and waits for the peer's status (at most
 * `timeout`, by default 15 s): the socket returned carries the protocol's bytes. Closing the
 * scope ends the stream.
 */
export const open = (
  connection: QuicConnection,
  protocol: ProtocolId,
  options?: { readonly timeout?: Duration.DurationInput }
): Effect.Effect<Socket.Socket, UnsupportedProtocolError | ConnectionError, Scope.Scope> =>
  Effect.gen(function* () {
    const socket = yield* openWithHeader(connection, protocol)
    if (!ProtocolWire.isChunkReader(socket))
      return ProtocolWire.statusChecked(socket, (reason) => refusal(connection, protocol, reason))
    const status = yield* ProtocolWire.readPrefix(socket, ProtocolWire.parseStatus, {
      maxBytes: ProtocolWire.MAX_HEADER_BYTES,
      timeout: options?.timeout ?? defaultStatusTimeout
    }).pipe(Effect.mapError((e) => streamError(connection, e)))
    switch (status._tag) {
      case "Done":
        if (Option.isSome(status.value)) return yield* refusal(connection, protocol, status.value.value)
        return socket as Socket.Socket
      case "Invalid":
        return yield* refusal(connection, protocol, status.detail)
      case "More":
        return yield* Effect.dieMessage("readPrefix returned an incomplete prefix")
    }
  })

/**
 * Opens a stream of `protocol` on `connection` without waiting: the caller may write at once.
 * The socket's `run` reads the status first; a refusal fails it with a `SocketGenericError`
 * whose `cause` is the `UnsupportedProtocolError` (see `refusalOf`).
 */
export const openOptimistic = (
  connection: QuicConnection,
  protocol: ProtocolId
): Effect.Effect<Socket.Socket, ConnectionError, Scope.Scope> =>
  Effect.map(openWithHeader(connection, protocol), (socket) =>
    ProtocolWire.statusChecked(socket, (reason) => refusal(connection, protocol, reason))
  )

/** The refusal behind a failed read of an `openOptimistic` socket, if it was one. */
export const refusalOf = (error: unknown): Option.Option<UnsupportedProtocolError> => {
  if (error instanceof UnsupportedProtocolError) return Option.some(error)
  return Predicate.hasProperty(error, "cause") && error.cause instanceof UnsupportedProtocolError
    ? Option.some(error.cause)
    : Option.none()
}
