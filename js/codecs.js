// Bytes from Python → typed arrays. Mirrors nbinspect/codecs.py function by function.
// Binary traits arrive as DataView (anywidget); nothing here parses JSON numbers.

// Bytes of the stamp (a CRC-32) nbinspect puts in front of every binary trait (codecs.stamped): with it two
// payloads that differ differ in their first bytes, which keeps ipywidgets' change check from walking them.
export const STAMP_BYTES = 4;

/** A binary trait's payload, without its stamp. @param {DataView | ArrayBuffer | Uint8Array | null | undefined} v */
export function bytesOf(v) {
  if (!v) return new Uint8Array(0);
  const b = v instanceof Uint8Array ? v : v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  return b.length > STAMP_BYTES ? b.subarray(STAMP_BYTES) : new Uint8Array(0);
}

/** Little-endian float32 values (codecs.float32_bytes). Copies when the buffer is unaligned. */
export function float32sOf(v) {
  const b = bytesOf(v);
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength >> 2);
  return new Float32Array(b.slice().buffer);
}

/** Inverse of codecs.quantize: a uint8 cell of a map whose largest value is `scale`. */
export function dequantize(q, scale) {
  return (q * scale) / 255;
}

/** Little-endian int32 values (codecs.int32_bytes). Copies when the buffer is unaligned. */
export function int32sOf(v) {
  const b = bytesOf(v);
  if (b.byteOffset % 4 === 0) return new Int32Array(b.buffer, b.byteOffset, b.byteLength >> 2);
  return new Int32Array(b.slice().buffer);
}

/** Inverse of codecs.quantize_signed: a uint8 with 128 = 0, in a column whose largest |value| is `scale`. */
export function dequantizeSigned(q, scale) {
  return ((q - 128) * scale) / 127;
}
