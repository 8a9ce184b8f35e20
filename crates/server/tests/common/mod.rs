//! What the server tests share: the tiny model, a client-side Ogg Opus stream laid out as Kyutai's
//! web client sends it (opus-recorder: OpusHead page, OpusTags page, then pages of two 20 ms
//! packets), and a reader for what the server sends.
#![allow(dead_code)]

use candle_core::{DType, Device};
use moshi_engine::conversation::Moshi;
use moshi_server::audio_io::OpusInput;
use moshi_server::ogg_stream::{opus_head, opus_tags};
use ogg::{PacketWriteEndInfo, PacketWriter};
use opus_rs::{Application, OpusEncoder};

pub fn tiny() -> Moshi {
    moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap()
}

/// The repository's sample (24 kHz mono after resampling).
pub fn hello() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/hello.wav");
    moshi_engine::audio::load_mono_24k(std::path::Path::new(path)).unwrap()
}

/// `samples` (24 kHz mono) as the Ogg pages Kyutai's web client sends, one page per message.
pub fn client_pages(samples: &[f32]) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(24_000, 1, Application::Voip).unwrap();
    let mut w = PacketWriter::new(Vec::new());
    let mut pages = Vec::new();
    let serial = 0x5eed;
    let take = |w: &mut PacketWriter<'static, Vec<u8>>| std::mem::take(w.inner_mut());
    w.write_packet(opus_head(3840, 24_000), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    pages.push(take(&mut w));
    w.write_packet(opus_tags("RecorderJS"), serial, PacketWriteEndInfo::EndPage, 0).unwrap();
    pages.push(take(&mut w));
    let mut buf = vec![0u8; 4000];
    let mut granule = 0u64;
    for (i, chunk) in samples.chunks(480).enumerate() {
        let mut frame = chunk.to_vec();
        frame.resize(480, 0.0);
        let n = enc.encode(&frame, 480, &mut buf).unwrap();
        granule += 960;
        let end = if i % 2 == 1 { PacketWriteEndInfo::EndPage } else { PacketWriteEndInfo::NormalPacket };
        w.write_packet(buf[..n].to_vec(), serial, end, granule).unwrap();
        if i % 2 == 1 {
            pages.push(take(&mut w));
        }
    }
    pages
}

/// Decodes the server's audio messages (checks they form one valid Ogg Opus stream).
pub fn reader() -> OpusInput {
    OpusInput::new(24_000 * 600, 1 << 17)
}
