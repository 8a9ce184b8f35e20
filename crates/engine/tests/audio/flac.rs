//! A tiny FLAC encoder for tests: STREAMINFO + frames of VERBATIM 16-bit subframes, with the
//! header CRC-8 and frame CRC-16 the format requires.

fn crc8(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { (crc << 1) ^ 0x07 } else { crc << 1 };
        }
        crc
    })
}

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |mut crc, &b| {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x8005 } else { crc << 1 };
        }
        crc
    })
}

/// Encodes interleaved 16-bit `samples` as a FLAC stream with `block`-frame frames.
pub fn flac_bytes(samples: &[i16], channels: u8, rate: u32, block: usize) -> Vec<u8> {
    let ch = channels as usize;
    let total = (samples.len() / ch) as u64;
    let mut v = b"fLaC".to_vec();
    v.extend([0x80, 0, 0, 34]); // last metadata block, STREAMINFO, 34 bytes
    v.extend((block as u16).to_be_bytes());
    v.extend((block as u16).to_be_bytes());
    v.extend([0u8; 6]); // min/max frame size unknown
    let packed: u64 = ((rate as u64) << 44) | (((channels - 1) as u64) << 41) | (15u64 << 36) | total;
    v.extend(packed.to_be_bytes());
    v.extend([0u8; 16]); // MD5 unknown
    for (idx, chunk) in samples.chunks(block * ch).enumerate() {
        assert!(idx < 128, "frame number must fit one UTF-8 byte here");
        let n = chunk.len() / ch;
        let mut f = vec![0xff, 0xf8, 0x70, ((channels - 1) << 4) | 0x08, idx as u8];
        f.extend(((n - 1) as u16).to_be_bytes());
        f.push(crc8(&f));
        for c in 0..ch {
            f.push(0x02); // VERBATIM subframe, no wasted bits
            f.extend(chunk.iter().skip(c).step_by(ch).flat_map(|s| s.to_be_bytes()));
        }
        let crc = crc16(&f);
        f.extend(crc.to_be_bytes());
        v.extend(f);
    }
    v
}
