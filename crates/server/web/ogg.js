// Ogg Opus for the Moshi page (an ES module): the writer for the microphone's stream and an
// incremental reader for the server's. Pure byte handling; no audio APIs.

const RATE = 24000; // the model's sample rate (OpusHead's informational input rate)

// Page CRC: CRC-32 with polynomial 0x04c11db7, initial value 0, no bit reflection, no final xor,
// computed over the whole page with its CRC field set to zero. (Not zlib's reflected CRC-32.)
const CRC_TABLE = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let r = i << 24;
  for (let k = 0; k < 8; k++) r = (r & 0x80000000) ? (r << 1) ^ 0x04c11db7 : r << 1;
  CRC_TABLE[i] = r >>> 0;
}
function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc;
}

// Page layout: "OggS", version 0, header type (1 continued, 2 BOS, 4 EOS), granule position i64 LE,
// stream serial u32, page sequence u32, CRC u32, segment count, segment table, then the packets.
// Each packet is laced as floor(len/255) segments of 255 plus one segment of len % 255 (0 when the
// packet is a multiple of 255 long), which is what marks where it ends.
function oggPage(flags, granule, serial, seq, packets) {
  const lacing = [];
  for (const p of packets) {
    for (let n = p.length; ; n -= 255) {
      lacing.push(Math.min(n, 255));
      if (n < 255) break;
    }
  }
  if (lacing.length > 255) throw new Error('Ogg page too large');
  const bodyLen = packets.reduce((s, p) => s + p.length, 0);
  const page = new Uint8Array(27 + lacing.length + bodyLen);
  const v = new DataView(page.buffer);
  page.set([0x4f, 0x67, 0x67, 0x53, 0, flags]);
  v.setUint32(6, granule % 0x100000000, true);
  v.setUint32(10, Math.floor(granule / 0x100000000), true);
  v.setUint32(14, serial, true);
  v.setUint32(18, seq, true);
  page[26] = lacing.length;
  page.set(lacing, 27);
  let off = 27 + lacing.length;
  for (const p of packets) { page.set(p, off); off += p.length; }
  v.setUint32(22, oggCrc(page), true);
  return page;
}

// Ogg Opus writer as Kyutai's web client lays it out: OpusHead alone on the BOS page, OpusTags on
// page 1, then two 20 ms packets per page. Granules count 48 kHz samples of all packets so far.
export class OggOpusWriter {
  constructor(emit) {
    this.emit = emit; // called with each finished page
    this.serial = (Math.random() * 0xffffffff) >>> 0;
    this.seq = 0;
    this.granule = 0;
    this.pending = [];
    const head = new Uint8Array(19);
    const hv = new DataView(head.buffer);
    head.set(new TextEncoder().encode('OpusHead'));
    head[8] = 1; // version
    head[9] = 1; // channels
    hv.setUint16(10, 3840, true); // pre-skip (48 kHz samples), as Kyutai's client writes
    hv.setUint32(12, RATE, true); // input sample rate (informational)
    hv.setInt16(16, 0, true); // output gain
    head[18] = 0; // channel mapping family
    const vendor = new TextEncoder().encode('moshi-rs web');
    const tags = new Uint8Array(8 + 4 + vendor.length + 4);
    tags.set(new TextEncoder().encode('OpusTags'));
    new DataView(tags.buffer).setUint32(8, vendor.length, true);
    tags.set(vendor, 12); // then a zero user-comment count
    this.emit(oggPage(2, 0, this.serial, this.seq++, [head]));
    this.emit(oggPage(0, 0, this.serial, this.seq++, [tags]));
  }

  packet(data, samples48k) {
    this.pending.push(data);
    this.granule += samples48k;
    if (this.pending.length === 2) this.flush();
  }

  flush() {
    if (this.pending.length === 0) return;
    this.emit(oggPage(0, this.granule, this.serial, this.seq++, this.pending));
    this.pending = [];
  }
}

// Incremental Ogg reader over the concatenation of all received audio payloads (message boundaries
// need not match page boundaries). Resynchronises on "OggS" after garbage or a CRC mismatch; packets
// spanning pages are reassembled. Calls onPacket(bytes, bos) for each complete packet.
export class OggReader {
  constructor(onPacket) {
    this.onPacket = onPacket;
    this.buf = new Uint8Array(0);
    this.partial = null; // bytes of a packet continued on the next page
    this.crcErrors = 0;
  }

  push(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    let off = 0;
    for (;;) {
      while (off + 4 <= joined.length && !(joined[off] === 0x4f && joined[off + 1] === 0x67 &&
        joined[off + 2] === 0x67 && joined[off + 3] === 0x53)) off++;
      if (off + 27 > joined.length) break;
      const nseg = joined[off + 26];
      if (off + 27 + nseg > joined.length) break;
      const lacing = joined.subarray(off + 27, off + 27 + nseg);
      const bodyLen = lacing.reduce((s, x) => s + x, 0);
      const end = off + 27 + nseg + bodyLen;
      if (end > joined.length) break;
      const page = joined.slice(off, end);
      const v = new DataView(page.buffer);
      const crc = v.getUint32(22, true);
      v.setUint32(22, 0, true);
      if (oggCrc(page) !== crc) { this.crcErrors++; off++; continue; }
      this.readPage(page, lacing);
      off = end;
    }
    this.buf = joined.slice(Math.min(off, joined.length));
  }

  readPage(page, lacing) {
    const flags = page[5];
    const bos = (flags & 2) !== 0;
    if (bos || !(flags & 1)) this.partial = null; // a new stream, or a page that continues nothing
    let pos = 27 + lacing.length;
    let start = pos;
    for (const seg of lacing) {
      pos += seg;
      if (seg < 255) {
        let p = page.subarray(start, pos);
        if (this.partial) { p = concat(this.partial, p); this.partial = null; }
        this.onPacket(p, bos);
        start = pos;
      }
    }
    if (start < pos) this.partial = concat(this.partial || new Uint8Array(0), page.subarray(start, pos));
  }
}

function concat(a, b) {
  const r = new Uint8Array(a.length + b.length);
  r.set(a);
  r.set(b, a.length);
  return r;
}
export function startsWith(bytes, ascii) {
  if (bytes.length < ascii.length) return false;
  for (let i = 0; i < ascii.length; i++) if (bytes[i] !== ascii.charCodeAt(i)) return false;
  return true;
}
