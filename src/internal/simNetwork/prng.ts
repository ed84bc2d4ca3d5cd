/**
 * The simulated world's source of randomness (jitter, loss): seeded, so that the same seed
 * gives the same world on every platform.
 */

/** A seeded source of uniform numbers in [0, 1). */
export interface Prng {
  readonly next: () => number
}

/** The 32-bit seed for a number or a string (FNV-1a). */
export const seedOf = (seed: number | string): number => {
  if (typeof seed === "number") return Math.trunc(seed) >>> 0
  let h = 0x811c9dc5
  for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193)
  return h >>> 0
}

/** sfc32 seeded through splitmix32: small, fast and the same on every platform. */
export const makePrng = (seed: number | string): Prng => {
  let s = seedOf(seed)
  const splitmix = () => {
    s = (s + 0x9e3779b9) | 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
    return (z ^ (z >>> 16)) >>> 0
  }
  let a = splitmix()
  let b = splitmix()
  let c = splitmix()
  let d = splitmix()
  const next = () => {
    const t = (((a + b) | 0) + d) | 0
    d = (d + 1) | 0
    a = b ^ (b >>> 9)
    b = (c + (c << 3)) | 0
    c = (c << 21) | (c >>> 11)
    c = (c + t) | 0
    return (t >>> 0) / 4294967296
  }
  for (let i = 0; i < 12; i++) next()
  return { next }
}
