/** The control API's error: an operation ran but failed (crosses the socket to the CLI). */
import { Schema } from "effect"

export class ControlError extends Schema.TaggedError<ControlError>()("ControlError", {
  message: Schema.String
}) {}
