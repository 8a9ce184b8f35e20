//! opus-rs against libopus 1.6.1 on streams libopus itself encodes: 5 rate/channel layouts × 3
//! applications × 6 frame durations (2.5 to 60 ms) × 5 bitrate/FEC/DTX/VBR settings, 2 s of a
//! chirp with noise and gaps each, every packet decoded by both at 24 kHz and compared at full
//! scale. Prints the configurations where they differ by more than 1e-5 and the largest
//! difference: `cargo run --release --example libopus_streams` (docs/fuzzing.md, 2026-12-04).
use opusic_sys as sys;
fn signal(n: usize, rate: usize, ch: usize, seed: u32) -> Vec<f32> {
    let mut s = seed; let mut out = Vec::with_capacity(n * ch);
    for i in 0..n { let t = i as f32 / rate as f32;
        for c in 0..ch { s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let noise = ((s >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.1;
            let f = 200.0 + 3000.0 * t + 50.0 * c as f32; // a chirp
            let env = if (i / (rate / 4)) % 3 == 2 { 0.0 } else { 0.5 }; // gaps for DTX
            out.push(env * (2.0 * std::f32::consts::PI * f * t).sin() + noise * env); } }
    out
}
fn main() {
    let mut worst = 0f32; let mut total = 0usize;
    for &(rate, ch) in &[(48000usize, 1usize), (48000, 2), (24000, 1), (16000, 1), (8000, 1)] {
      for &app in &[sys::OPUS_APPLICATION_VOIP, sys::OPUS_APPLICATION_AUDIO, sys::OPUS_APPLICATION_RESTRICTED_LOWDELAY] {
        for &frame_ms10 in &[25usize, 50, 100, 200, 400, 600] {
          for &(bitrate, fec, dtx, vbr) in &[(8000, 0, 0, 1), (16000, 1, 1, 1), (32000, 0, 0, 0), (64000, 1, 0, 1), (128000, 0, 1, 1)] {
            let mut err = 0;
            let enc = unsafe { sys::opus_encoder_create(rate as i32, ch as i32, app, &mut err) };
            if err != 0 { continue; }
            unsafe {
                sys::opus_encoder_ctl(enc, sys::OPUS_SET_BITRATE_REQUEST, bitrate as i32);
                sys::opus_encoder_ctl(enc, sys::OPUS_SET_INBAND_FEC_REQUEST, fec as i32);
                sys::opus_encoder_ctl(enc, sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST, 10i32 * fec as i32);
                sys::opus_encoder_ctl(enc, sys::OPUS_SET_DTX_REQUEST, dtx as i32);
                sys::opus_encoder_ctl(enc, sys::OPUS_SET_VBR_REQUEST, vbr as i32);
            }
            let frame = rate * frame_ms10 / 1000 / 10;
            let x = signal(rate * 2, rate, ch, bitrate as u32 + frame as u32);
            let mut ours = opus_rs::OpusDecoder::new(24000, ch).unwrap();
            let lib = unsafe { sys::opus_decoder_create(24000, ch as i32, &mut err) };
            let mut pk = vec![0u8; 4000];
            let (mut maxd, mut npk, mut bad) = (0f32, 0, String::new());
            for f in x.chunks_exact(frame * ch) {
                let n = unsafe { sys::opus_encode_float(enc, f.as_ptr(), frame as i32, pk.as_mut_ptr(), 4000) };
                if n < 0 { bad = format!("encode {n}"); break; }
                let p = &pk[..n as usize];
                let mut a = vec![0f32; 2880 * ch]; let mut b = vec![0f32; 2880 * ch];
                let r = ours.decode(p, 2880, &mut a);
                let m = unsafe { sys::opus_decode_float(lib, p.as_ptr(), p.len() as i32, b.as_mut_ptr(), 2880, 0) };
                match r { Ok(k) if k as i32 == m => { for i in 0..k*ch { maxd = maxd.max((a[i].clamp(-1.,1.) - b[i].clamp(-1.,1.)).abs()); } }
                          r => { bad = format!("packet {npk} ({} bytes): opus-rs {r:?}, libopus {m}", p.len()); break; } }
                npk += 1;
            }
            total += npk; worst = worst.max(maxd);
            if maxd > 1e-5 || !bad.is_empty() { println!("rate {rate} ch {ch} app {app} frame {frame_ms10}/10 ms bitrate {bitrate} fec {fec} dtx {dtx} vbr {vbr}: {npk} packets, max diff {maxd:e} {bad}"); }
            unsafe { sys::opus_encoder_destroy(enc); sys::opus_decoder_destroy(lib); }
          }
        }
      }
    }
    println!("{total} packets in all, largest difference {worst:e}");
}
