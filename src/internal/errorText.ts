/**
 * errorText: an error's message as one line of text, with its causes (no transport code: the
 * modules of the package's main entry use it too).
 */
/** An error's message, with its causes' after it in parentheses. */
export const describe = (e: unknown): string => {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause
    const own = e.message || e.constructor.name
    return cause instanceof Error ? `${own} (${describe(cause)})` : own
  }
  return String(e)
}
