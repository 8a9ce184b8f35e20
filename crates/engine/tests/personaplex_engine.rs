//! PersonaPlex against NVIDIA's reference (golden/personaplex_tiny, made by the fork's own
//! classes and offline pipeline; golden/README.md): a tiny PersonaPlex with a 16-step depformer, a
//! preset-style `voice.pt` written by the fork, a persona prompt, and a conversation on user.wav.
//! Greedy and replayed-noise runs, the wav voice path, the empty text prompt (the reference
//! crashes on it; the fixture's run has its one-line fix), 8 against 16 depformer steps, a slot
//! prompted while another row talks, the 7B's names, and the errors of bad prompts.
//!
//! Timing: our step s is the reference's LMGen call s + 1 (it runs the model one call late, see
//! lm/prompt.rs); the same position, the same inputs. Codes and tokens must be identical. Floats:
//! the LM's (logits, temporal output, input embeddings) within `F32_REL_TOL` of their peak, a few
//! f32 ulps summed over the layers as in tests/lm_parity.rs (the fixture's own streamed-vs-batch
//! text logits differ by 1.9e-6 on a peak of ~10); the PCM within `F32_ABS_TOL`, Mimi's bound in
//! tests/e2e_parity.rs.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::{Fixture, Report, F32_ABS_TOL, F32_REL_TOL};
use moshi_engine::conversation::Moshi;
use moshi_engine::exec::RunOptions;
use moshi_engine::lm::{GenConfig, LmConfig, LmPrompt, ReplayNoise, SamplingConfig, StepOut, VoicePrompt};
use moshi_engine::model_files::MoshiFiles;
use moshi_engine::persona::{load_voice_pt, PromptSpec, VoiceSource};

const TEXT: &str = "You are a helpful assistant named Ada.";
/// Prompt frames of the fixture's runs (27 voice + 6 + 38 text + 6) and its user frames.
const P: usize = 77;
const USER_FRAMES: usize = 24;

fn dir() -> PathBuf {
    common::golden_dir().join("personaplex_tiny")
}

fn moshi() -> Moshi {
    MoshiFiles::from_dir(&dir()).unwrap().load(DType::F32, &Device::Cpu).unwrap()
}

fn fixture() -> Fixture {
    Fixture::load("personaplex_tiny/io.safetensors")
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("meta.json")).unwrap()).unwrap()
}

/// A fixture tensor as rows of i64.
fn rows(fx: &Fixture, name: &str) -> Vec<Vec<i64>> {
    let t = fx.get(name).to_dtype(DType::I64).unwrap();
    let t = if t.rank() == 1 { t.unsqueeze(1).unwrap() } else { t };
    t.to_vec2::<i64>().unwrap()
}

/// The user codes of the conversation, one `Vec` of 8 per frame.
fn user_frames(fx: &Fixture, run: &str) -> Vec<Vec<i64>> {
    let t = fx.get(&format!("{run}.user_codes")).t().unwrap().contiguous().unwrap();
    t.to_vec2::<i64>().unwrap()
}

fn prompt(moshi: &Moshi, text: &str, voice: &str) -> LmPrompt {
    moshi.prepare_prompt(&PromptSpec { text: text.into(), voice: VoiceSource::File(dir().join(voice)) }).unwrap()
}

/// Feed `prompt` then `user` frames through the LM alone (batch 1); every step's output.
fn run_lm(moshi: &Moshi, prompt: &LmPrompt, user: &[Vec<i64>], gen: GenConfig, noise: Option<ReplayNoise>, all_steps: bool) -> Vec<StepOut> {
    let opts = RunOptions::default();
    let mut st = match noise {
        Some(n) => moshi.lm.new_state_with_noise(1, gen, Box::new(n), &opts).unwrap(),
        None => moshi.lm.new_state(1, gen, 0, &opts).unwrap(),
    };
    st.set_all_depformer_steps(all_steps);
    moshi.lm.start_prompt(&mut st, 0, prompt).unwrap();
    let mut out = Vec::new();
    while st.prompting(0) {
        out.push(moshi.lm.step(&mut st, &[0; 8]).unwrap());
    }
    for u in user {
        out.push(moshi.lm.step(&mut st, u).unwrap());
    }
    out
}

fn t1(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap()
}

/// The tokens a step chose for its target position: text, then the 8 agent codebooks.
fn chosen(o: &StepOut) -> Vec<i64> {
    std::iter::once(o.text[0] as i64).chain(o.audio.iter().map(|&a| a as i64)).collect()
}

/// Compare every step of `ours` with the reference's calls (`run` prefix, calls 1..): inputs,
/// the tokens chosen, text logits, the detail calls' floats, and the returned tokens of the
/// conversation calls. `calls`: the reference calls to compare (from 1).
fn compare_run(rep: &mut Report, moshi: &Moshi, fx: &Fixture, run: &str, ours: &[StepOut], calls: std::ops::Range<usize>) {
    let model_input = rows(fx, &format!("{run}.model_input"));
    let written = rows(fx, &format!("{run}.written"));
    let embedding_input = rows(fx, &format!("{run}.embedding_input"));
    let out_tokens = rows(fx, &format!("{run}.out_tokens"));
    let (mut inputs, mut ref_inputs, mut picks, mut ref_picks, mut outs, mut ref_outs) = Default::default();
    let flat_push = |v: &mut Vec<i64>, x: &[i64]| v.extend_from_slice(x);
    for c in calls.clone() {
        let o = &ours[c - 1];
        if embedding_input[c][0] == 0 {
            flat_push(&mut inputs, &o.input);
            flat_push(&mut ref_inputs, &model_input[c]);
            flat_push(&mut picks, &chosen(o));
            flat_push(&mut ref_picks, &written[c][..9]);
        }
        if c >= P {
            flat_push(&mut outs, o.tokens.as_ref().expect("conversation steps return tokens"));
            flat_push(&mut ref_outs, &out_tokens[c][..9]);
        }
    }
    let v = |x: Vec<i64>| Tensor::from_vec(x.clone(), x.len(), &Device::Cpu).unwrap();
    rep.codes(&format!("{run}: model inputs (token calls)"), &v(inputs), &v(ref_inputs));
    rep.codes(&format!("{run}: tokens chosen for each target (forced or sampled)"), &v(picks), &v(ref_picks));
    rep.codes(&format!("{run}: returned tokens of the conversation calls"), &v(outs), &v(ref_outs));
    if let Some(logits) = fx.tensors.get(&format!("{run}.text_logits")) {
        let ours_l: Vec<Tensor> = calls.clone().map(|c| flat(&ours[c - 1].text_logits)).collect();
        let want = logits.narrow(0, calls.start, calls.len()).unwrap();
        rep.float_rel(&format!("{run}: text logits, calls {calls:?}"), &Tensor::stack(&ours_l, 0).unwrap(), &want, F32_REL_TOL);
    }
    let Some(detail) = fx.tensors.get(&format!("{run}.detail_calls")) else { return };
    let detail: Vec<i64> = detail.to_vec1().unwrap();
    for (i, &c) in detail.iter().enumerate().filter(|(_, &c)| calls.contains(&(c as usize))) {
        let o = &ours[c as usize - 1];
        let dl: Vec<Tensor> = o.depformer_logits.iter().take(8).map(flat).collect();
        let ref_dl = fx.get(&format!("{run}.depformer_logits")).get(i).unwrap().narrow(0, 0, 8).unwrap();
        rep.float_rel(&format!("{run}: call {c}: depformer logits, steps 0..8"), &Tensor::stack(&dl, 0).unwrap(), &ref_dl, F32_REL_TOL);
        let ref_out = fx.get(&format!("{run}.transformer_out")).get(i).unwrap();
        rep.float_rel(&format!("{run}: call {c}: temporal output"), &flat(&o.transformer_out), &ref_out, F32_REL_TOL);
        if embedding_input[c as usize][0] == 0 {
            let emb = moshi.lm.temporal().embed_host(&o.input, 1).unwrap();
            let ref_emb = fx.get(&format!("{run}.embedding")).get(i).unwrap();
            rep.float_rel(&format!("{run}: call {c}: summed input embedding"), &flat(&emb), &ref_emb, F32_REL_TOL);
        }
    }
}

#[test]
fn the_prompt_text_encodes_as_the_reference() {
    let moshi = moshi();
    let m = meta();
    let want: Vec<u32> = m["text_prompt"]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let wrapped = moshi_engine::persona::wrap_with_system_tags(TEXT);
    assert_eq!(wrapped, m["text_prompt"]["wrapped"].as_str().unwrap());
    assert_eq!(moshi.tokenizer.encode(&wrapped).unwrap(), want);
    assert_eq!(moshi.tokenizer.decode(&want), wrapped, "encoding is decoding's inverse here");
    // Extra spaces are removed as SentencePiece removes them; a character no piece spells is one
    // <unk> (id 0) per run.
    assert_eq!(moshi.tokenizer.encode("  You   are  ").unwrap(), moshi.tokenizer.encode("You are").unwrap());
    assert_eq!(moshi.tokenizer.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(moshi.tokenizer.encode("ZZ").unwrap(), vec![4, 0], "`▁`, then one <unk> for the run of Z");
    assert_eq!(moshi_engine::persona::wrap_with_system_tags(" <system> x <system> "), "<system> x <system>");
}

#[test]
fn greedy_preset_voice_run_matches_the_reference_call_by_call() {
    let moshi = moshi();
    let fx = fixture();
    let p = prompt(&moshi, TEXT, "voice.pt");
    assert_eq!(p.frame_count(moshi.lm.config()).unwrap(), P);
    let user = user_frames(&fx, "greedy");
    let ours = run_lm(&moshi, &p, &user[..USER_FRAMES - 1], GenConfig::greedy(), None, false);
    assert_eq!(ours.len(), 100);
    assert!(ours[..P - 1].iter().all(|o| !o.ready[0]) && ours[P - 1..].iter().all(|o| o.ready[0]));
    assert!(ours[P - 1].prompt_done[0]);
    let mut rep = Report::default();
    compare_run(&mut rep, &moshi, &fx, "greedy", &ours, 1..101);
    rep.finish("PersonaPlex tiny, greedy, preset voice: every call");
}

#[test]
fn greedy_pipeline_pcm_matches_the_reference_offline_wav() {
    let moshi = moshi();
    let fx = fixture();
    let p = prompt(&moshi, TEXT, "voice.pt");
    let input = moshi_engine::audio::load_mono_24k(&dir().join("user.wav")).unwrap();
    let n = moshi.frame_size();
    let mut conv = moshi.conversation(GenConfig::greedy(), 0, false, &RunOptions::default()).unwrap();
    moshi.start_prompt(&mut conv, 0, &p).unwrap();
    let (mut pcm, mut codes, mut prompt_frames) = (Vec::new(), Vec::new(), 0);
    while conv.prompting(0) {
        let out = moshi.step(&mut conv, &vec![0.0; n]).unwrap();
        prompt_frames += 1;
        pcm.extend(out.pcm.unwrap_or_default());
    }
    assert_eq!((prompt_frames, pcm.len()), (P, n), "the prompt's last frame gives the first output");
    for f in moshi_engine::audio::frames(&input, n) {
        let out = moshi.step(&mut conv, &f).unwrap();
        codes.extend(out.user_codes);
        pcm.extend(out.pcm.unwrap());
    }
    let mut rep = Report::default();
    let ours_codes = Tensor::from_vec(codes, (USER_FRAMES, 8), &Device::Cpu).unwrap().t().unwrap();
    rep.codes("user codes (Mimi encode of user.wav)", &ours_codes, fx.get("greedy.user_codes"));
    // The reference's wav: its 24 decoded frames (the first is the prompt's last, silence).
    let ref_pcm = fx.get("greedy.decoded_pcm");
    rep.float("reply PCM, 24 frames", &t1(&pcm[..USER_FRAMES * n]), ref_pcm, F32_ABS_TOL);
    rep.finish("PersonaPlex tiny, greedy, the whole pipeline");
}

#[test]
fn sampled_run_with_the_references_noise_gives_its_tokens() {
    let moshi = moshi();
    let fx = fixture();
    let p = prompt(&moshi, TEXT, "voice.pt");
    let text_noise = fx.get("sampled.noise_text").to_vec2::<f32>().unwrap();
    let audio_noise = fx.get("sampled.noise_audio").to_vec3::<f32>().unwrap();
    // Reference call P + j is our step P − 1 + j; at j = 0 (the last prompt step) only the text
    // and codebook 0 are sampled, codebooks 1..7 being forced (the reference draws them anyway).
    let mut noise = ReplayNoise::new();
    for j in 0..USER_FRAMES {
        noise.push(text_noise[j].clone());
        for block in &audio_noise[j][..if j == 0 { 1 } else { 8 }] {
            noise.push(block.clone());
        }
    }
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    let user = user_frames(&fx, "sampled");
    let ours = run_lm(&moshi, &p, &user[..USER_FRAMES - 1], gen, Some(noise), false);
    let mut rep = Report::default();
    compare_run(&mut rep, &moshi, &fx, "sampled", &ours, 1..101);
    rep.finish("PersonaPlex tiny, sampled (replayed noise), preset voice");
}

#[test]
fn wav_voice_is_normalized_encoded_and_fed_as_the_reference() {
    let moshi = moshi();
    let fx = fixture();
    let m = meta();
    let samples = moshi_engine::audio::load_mono_24k(&dir().join("voice.wav")).unwrap();
    let lufs = moshi_engine::audio::loudness::integrated_loudness(&samples, 24_000).unwrap();
    let want = m["voice_loudness"]["input_lufs"].as_f64().unwrap();
    eprintln!("voice loudness {lufs} LUFS, pyloudnorm {want} (Δ {:.2e} dB)", lufs - want);
    assert!((lufs - want).abs() < 1e-6, "loudness {lufs} vs pyloudnorm {want}");
    let p = prompt(&moshi, TEXT, "voice.wav");
    let VoicePrompt::Codes(codes) = &p.voice else { panic!("a wav voice gives codes") };
    let mut rep = Report::default();
    let ours = Tensor::from_vec(codes.concat(), (codes.len(), 8), &Device::Cpu).unwrap().t().unwrap();
    rep.codes("voice codes (−24 LUFS, Mimi)", &ours, fx.get("wav.voice_codes"));
    let user = user_frames(&fx, "greedy");
    let steps = run_lm(&moshi, &p, &user[..USER_FRAMES - 1], GenConfig::greedy(), None, false);
    compare_run(&mut rep, &moshi, &fx, "wav", &steps, 1..27);
    // From the first silence on, the wav run equals the preset run (the fixture's check).
    compare_run(&mut rep, &moshi, &fx, "greedy", &steps, 27..101);
    rep.finish("PersonaPlex tiny, wav voice");
}

#[test]
fn an_empty_text_prompt_runs_both_silences_back_to_back() {
    let moshi = moshi();
    let fx = fixture();
    let p = prompt(&moshi, "", "voice.pt");
    assert!(p.text.is_empty());
    assert_eq!(p.frame_count(moshi.lm.config()).unwrap(), 39);
    let user = user_frames(&fx, "empty");
    let ours = run_lm(&moshi, &p, &user[..USER_FRAMES - 1], GenConfig::greedy(), None, false);
    let out_tokens = rows(&fx, "empty.out_tokens");
    let got: Vec<i64> = ours[38..].iter().flat_map(|o| o.tokens.clone().unwrap()).collect();
    let want: Vec<i64> = (39..63).flat_map(|c| out_tokens[c][..9].to_vec()).collect();
    assert_eq!(got, want, "returned tokens of the empty-prompt run");
}

/// A step's returned tokens and the tokens it chose.
type Step = (Option<Vec<i64>>, Vec<i64>);

#[test]
fn eight_depformer_steps_give_the_tokens_of_sixteen() {
    let moshi = moshi();
    let fx = fixture();
    let p = prompt(&moshi, TEXT, "voice.pt");
    let user = user_frames(&fx, "greedy");
    let sampled = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    for gen in [GenConfig::greedy(), sampled] {
        let run = |all: bool| {
            let mut st = moshi.lm.new_state(1, gen, 1234, &RunOptions::default()).unwrap();
            st.set_all_depformer_steps(all);
            moshi.lm.start_prompt(&mut st, 0, &p).unwrap();
            let mut out = Vec::new();
            for i in 0..P + user.len() {
                let u = if i < P { vec![0; 8] } else { user[i - P].clone() };
                let o = moshi.lm.step(&mut st, &u).unwrap();
                out.push(((o.tokens.clone(), chosen(&o)), o.depformer_logits.len()));
            }
            out
        };
        let (eight, sixteen) = (run(false), run(true));
        assert!(eight.iter().all(|o| o.1 == 8) && sixteen.iter().all(|o| o.1 == 16));
        let strip = |v: Vec<(Step, usize)>| v.into_iter().map(|o| o.0).collect::<Vec<_>>();
        assert_eq!(strip(eight), strip(sixteen), "8 and 16 depformer steps differ ({gen:?})");
    }
}

#[test]
fn a_slot_prompted_while_another_row_talks_computes_what_it_would_alone() {
    let moshi = moshi();
    let n = moshi.frame_size();
    let p = prompt(&moshi, TEXT, "voice.pt");
    let input = moshi_engine::audio::load_mono_24k(&dir().join("user.wav")).unwrap();
    let frames: Vec<Vec<f32>> = moshi_engine::audio::frames(&input, n).collect();
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    // Row 1 alone: prompt, then the user's frames.
    let collect = |conv: &mut moshi_engine::conversation::Conversation, row: usize, b: usize, join: usize| {
        let mut got = Vec::new();
        for i in 0..join + P + frames.len() {
            let mine = if i < join + P { vec![0.25f32; n] } else { frames[i - join - P].clone() };
            let other = frames[i % frames.len()].clone();
            let pcm: Vec<f32> = if b == 1 { mine } else if row == 1 { [other, mine].concat() } else { unreachable!() };
            if b == 2 && i == join {
                conv.reset_row(1, gen, 77).unwrap();
                moshi.start_prompt(conv, 1, &p).unwrap();
            }
            if i < join {
                moshi.step(conv, &pcm).unwrap();
                continue;
            }
            let out = moshi.step(conv, &pcm).unwrap();
            let r = if b == 1 { 0 } else { 1 };
            let k = 9;
            got.push((
                out.ready[r],
                out.ready[r].then(|| out.tokens.as_ref().unwrap()[r * k..(r + 1) * k].to_vec()),
                out.ready[r].then(|| out.pcm.as_ref().unwrap()[r * n..(r + 1) * n].to_vec()),
            ));
        }
        got
    };
    let mut alone = moshi.slots(1, &RunOptions::default()).unwrap();
    alone.reset_row(0, gen, 77).unwrap();
    moshi.start_prompt(&mut alone, 0, &p).unwrap();
    let want = collect(&mut alone, 0, 1, 0);
    // Row 0 talks from the start; row 1 is reset and prompted at frame 5.
    let mut both = moshi.slots(2, &RunOptions::default()).unwrap();
    both.reset_row(0, gen, 5).unwrap();
    let got = collect(&mut both, 1, 2, 5);
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!((g.0, &g.1), (w.0, &w.1), "frame {i}: ready/tokens");
        if let (Some(a), Some(b)) = (&g.2, &w.2) {
            worst = a.iter().zip(b).fold(worst, |m, (x, y)| m.max((x - y).abs()));
        }
    }
    eprintln!("prompted slot beside a talking row: identical tokens, PCM within {worst:.2e}");
    assert!(worst <= F32_ABS_TOL, "PCM differs by {worst}");
}

#[test]
fn the_7b_personaplex_checkpoint_has_475_tensors_as_the_fork_builds_it() {
    let want = common::names_file("personaplex_tiny/personaplex7b_checkpoint_names.txt");
    assert_eq!(want.len(), 475);
    let cfg = LmConfig::personaplex_7b();
    let mut got = cfg.pytorch_layout_tensors();
    let mut want = want;
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!((cfg.agent_streams(), cfg.user_streams(), cfg.dep_q), (8, 8, 16));
    // A step reads the weights of 8 depformer steps: as many as moshiko's.
    assert_eq!(cfg.streamed_params(), LmConfig::default().streamed_params());
    // A checkpoint with moshiko's 8-step depformer is refused, naming the tensor and both shapes.
    let moshiko = common::names_file("moshi7b_checkpoint_names.txt");
    let e = moshi_engine::lm::check_checkpoint(&cfg, &moshiko).unwrap_err().to_string();
    assert!(e.contains("depformer") && (e.contains("missing") || e.contains("shape")), "{e}");
}

#[test]
fn bad_prompts_get_clear_errors() {
    let moshi = moshi();
    let spec = |text: &str, voice: VoiceSource| PromptSpec { text: text.into(), voice };
    let missing = dir().join("no-such-voice.pt");
    let e = moshi.prepare_prompt(&spec(TEXT, VoiceSource::File(missing))).unwrap_err().to_string();
    assert!(e.contains("no-such-voice.pt") && e.contains("no such file"), "{e}");
    // voice.pt against the 7B's width: a voice of the wrong shape.
    let e = load_voice_pt(&dir().join("voice.pt"), &LmConfig::personaplex_7b()).unwrap_err().to_string();
    assert!(e.contains("[26, 1, 1, 64]") && e.contains("4096"), "{e}");
    // A file that is not a PyTorch voice.
    let e = load_voice_pt(&dir().join("config.json"), moshi.lm.config()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("not a PyTorch voice"), "{e}");
    let long = "Ada ".repeat(3000);
    let e = moshi.prepare_prompt(&spec(&long, VoiceSource::None)).unwrap_err().to_string();
    assert!(e.contains("context of 3000"), "{e}");
    let e = moshi_engine::persona::resolve_voice("NOPE", Some(&dir())).unwrap_err().to_string();
    assert!(e.contains("NOPE.pt"), "{e}");
    assert_eq!(moshi_engine::persona::resolve_voice("voice", Some(&dir())).unwrap(), dir().join("voice.pt"));
    // A Moshi without prompt training refuses prompts instead of ignoring them.
    let tiny = moshi_engine::tiny::load_moshi(DType::F32, &Device::Cpu).unwrap();
    let e = tiny.prepare_prompt(&spec(TEXT, VoiceSource::None)).unwrap_err().to_string();
    assert!(e.contains("no prompt training"), "{e}");
    let mut st = tiny.lm.new_state(1, GenConfig::greedy(), 0, &RunOptions::default()).unwrap();
    let lm_prompt = LmPrompt { voice: VoicePrompt::None, text: vec![5] };
    assert!(tiny.lm.start_prompt(&mut st, 0, &lm_prompt).unwrap_err().to_string().contains("no prompt training"));
    // A prompt starts a conversation.
    let mut st = moshi.lm.new_state(1, GenConfig::greedy(), 0, &RunOptions::default()).unwrap();
    moshi.lm.step(&mut st, &[0; 8]).unwrap();
    let e = moshi.lm.start_prompt(&mut st, 0, &lm_prompt).unwrap_err().to_string();
    assert!(e.contains("reset the row"), "{e}");
}

/// A PersonaPlex 7B-shaped checkpoint as a sparse file (header only; 16 GB of zeros unwritten).
fn sparse_7b(dir: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (n, shape) in LmConfig::personaplex_7b().pytorch_layout_tensors() {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(n, serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let path = dir.join("model.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(json.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&json).unwrap();
    f.set_len(8 + json.len() as u64 + offset as u64).unwrap();
    path
}

#[test]
fn a_personaplex_checkpoint_is_recognised_without_a_personaplex_config() {
    // NVIDIA's repository: the released file names; its config.json is never read by the fork
    // (content unknown here): without one, or with one that is not an LM config, the 16-step
    // depformer says PersonaPlex.
    let d = common::temp_path("pp7b");
    std::fs::create_dir_all(&d).unwrap();
    sparse_7b(&d);
    for f in [moshi_engine::model_files::RELEASED_MIMI, moshi_engine::model_files::RELEASED_TOKENIZER] {
        std::fs::write(d.join(f), b"x").unwrap();
    }
    assert_eq!(MoshiFiles::from_dir(&d).unwrap().lm_config, LmConfig::personaplex_7b());
    std::fs::write(d.join("config.json"), r#"{"model_type": "personaplex"}"#).unwrap();
    assert_eq!(MoshiFiles::from_dir(&d).unwrap().lm_config, LmConfig::personaplex_7b());
    // Kyutai's 7B config (dep_q 8) with this checkpoint: PersonaPlex too.
    let kyutai = serde_json::to_string(&LmConfig::default()).unwrap();
    std::fs::write(d.join("config.json"), kyutai).unwrap();
    assert_eq!(MoshiFiles::from_dir(&d).unwrap().lm_config, LmConfig::personaplex_7b());
    // The tiny one without its `personaplex` object: its codes are not the real Mimi's, said so.
    let t = common::temp_path("pp-tiny");
    std::fs::create_dir_all(&t).unwrap();
    for f in ["model.safetensors", "mimi.safetensors", "mimi_config.json", "tokenizer.model"] {
        std::fs::copy(dir().join(f), t.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("personaplex");
    cfg["dep_q"] = 8.into();
    std::fs::write(t.join("config.json"), cfg.to_string()).unwrap();
    let e = MoshiFiles::from_dir(&t).unwrap_err().to_string();
    assert!(e.contains("personaplex"), "{e}");
}

#[test]
fn prefilling_the_prompt_equals_stepping_it() {
    let moshi = moshi();
    let fx = fixture();
    let user = user_frames(&fx, "greedy");
    let out_tokens = rows(&fx, "greedy.out_tokens");
    let sampled = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    for (voice, gen) in [("voice.pt", GenConfig::greedy()), ("voice.wav", GenConfig::greedy()), ("voice.pt", sampled)] {
        let p = prompt(&moshi, TEXT, voice);
        let stepped = run_lm(&moshi, &p, &user[..USER_FRAMES - 1], gen, None, false);
        let mut st = moshi.lm.new_state(1, gen, 0, &RunOptions::default()).unwrap();
        moshi.lm.start_prompt(&mut st, 0, &p).unwrap();
        assert_eq!(moshi.lm.prefill_prompts(&mut st).unwrap(), P - 1);
        assert_eq!(moshi.lm.prefill_prompts(&mut st).unwrap(), 0, "only the last prompt frame is left");
        let mut pre = vec![moshi.lm.step(&mut st, &[0; 8]).unwrap()];
        assert!(pre[0].prompt_done[0] && !st.prompting(0));
        pre.extend(user[..USER_FRAMES - 1].iter().map(|u| moshi.lm.step(&mut st, u).unwrap()));
        let mut rep = Report::default();
        let (a, b) = (&pre[..], &stepped[P - 1..]);
        let toks = |v: &[StepOut]| Tensor::from_vec(v.iter().flat_map(|o| o.tokens.clone().unwrap()).collect::<Vec<_>>(), v.len() * 9, &Device::Cpu).unwrap();
        rep.codes("returned tokens, prefilled vs stepped", &toks(a), &toks(b));
        let logits = |v: &[StepOut]| Tensor::stack(&v.iter().map(|o| flat(&o.text_logits)).collect::<Vec<_>>(), 0).unwrap();
        rep.float_rel("text logits after the prefill, vs stepped", &logits(a), &logits(b), F32_REL_TOL);
        if gen == GenConfig::greedy() {
            let want: Vec<i64> = (P..101).flat_map(|c| out_tokens[c][..9].to_vec()).collect();
            // Our step P − 1 + j is the reference's call P + j.
            rep.codes("returned tokens vs the reference", &toks(a), &Tensor::from_vec(want, USER_FRAMES * 9, &Device::Cpu).unwrap());
        }
        rep.finish(&format!("prefill, {voice}, {gen:?}"));
    }
}

/// Row `row` of `conv` after it joins at frame `join` with prompt `p`: its ready outputs
/// (tokens, PCM), its audio the fixture's user frames from its first ready frame on; row 0 talks
/// on `other` throughout (when b > 1). `prefill`: the prompt is prefilled on its own in chunks of
/// that many positions per frame instead of stepped (`Moshi::prefill_row`). Also returns row 0's
/// tokens per frame and the frames the join took to the first ready output.
#[allow(clippy::type_complexity)]
fn joined_row(
    moshi: &Moshi,
    conv: &mut moshi_engine::conversation::Conversation,
    (b, row, join): (usize, usize, usize),
    p: &LmPrompt,
    gen: GenConfig,
    prefill: Option<moshi_engine::lm::PrefillBudget>,
    outputs: usize,
) -> (Vec<(Vec<i64>, Vec<f32>)>, Vec<Option<Vec<i64>>>, usize) {
    let n = moshi.frame_size();
    let input = moshi_engine::audio::load_mono_24k(&dir().join("user.wav")).unwrap();
    let frames: Vec<Vec<f32>> = moshi_engine::audio::frames(&input, n).collect();
    let (mut got, mut others, mut first_ready) = (Vec::new(), Vec::new(), None);
    let mut i = 0;
    while got.len() < outputs {
        if i == join {
            conv.reset_row(row, gen, 77).unwrap();
            moshi.start_prompt(conv, row, p).unwrap();
            if prefill.is_some() {
                assert!(moshi.prefill_row(conv, row).unwrap());
            }
        }
        if let (Some(budget), true) = (prefill, i >= join) {
            let prog = moshi.advance_prefills(conv, &budget).unwrap();
            assert!(prog.failed.is_empty(), "{:?}", prog.failed);
        }
        let mine = if got.is_empty() { vec![0.25f32; n] } else { frames[got.len() - 1].clone() };
        let mut pcm = Vec::new();
        for r in 0..b {
            pcm.extend(if r == row { mine.clone() } else { frames[(i + r) % frames.len()].clone() });
        }
        let out = moshi.step(conv, &pcm).unwrap();
        others.push(out.ready[0].then(|| out.tokens.as_ref().unwrap()[..9].to_vec()));
        if i >= join && out.ready[row] {
            first_ready.get_or_insert(i - join);
            let k = 9;
            got.push((out.tokens.as_ref().unwrap()[row * k..(row + 1) * k].to_vec(), out.pcm.as_ref().unwrap()[row * n..(row + 1) * n].to_vec()));
        }
        i += 1;
    }
    (got, others, first_ready.unwrap())
}

#[test]
fn a_prefilled_row_joins_as_a_stepped_one() {
    use moshi_engine::lm::PrefillBudget;
    let moshi = moshi();
    let p = prompt(&moshi, TEXT, "voice.pt");
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    let opts = RunOptions::default();
    let outputs = 20;
    // The reference for the joining row: alone, its prompt stepped frame by frame.
    let mut alone = moshi.slots(1, &opts).unwrap();
    let (want, _, stepped_latency) = joined_row(&moshi, &mut alone, (1, 0, 0), &p, gen, None, outputs);
    assert_eq!(stepped_latency, P - 1, "stepped: the prompt's last frame gives the first output");
    let worst = |a: &[(Vec<i64>, Vec<f32>)], b: &[(Vec<i64>, Vec<f32>)], what: &str| {
        let mut w = 0f32;
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.0, y.0, "{what}: output {i}: tokens");
            w = x.1.iter().zip(&y.1).fold(w, |m, (u, v)| m.max((u - v).abs()));
        }
        assert!(w <= F32_ABS_TOL, "{what}: PCM differs by {w}");
        w
    };
    // 1. A batch 100 frames in (deeper than the prompt's 77): row 0 talking, row 2 idle; row 1
    //    joins and is prefilled 20 positions per frame, then spliced behind the batch's position.
    let budget = PrefillBudget { max_positions: 20, skip_idle: false };
    let mut batch = moshi.slots(3, &opts).unwrap();
    batch.reset_row(0, gen, 5).unwrap();
    let (got, others_pre, latency) = joined_row(&moshi, &mut batch, (3, 1, 100), &p, gen, Some(budget), outputs);
    assert_eq!(latency, (P - 1).div_ceil(20) - 1, "76 positions in chunks of 20: the 4th chunk's frame is the prompt's last");
    let w1 = worst(&got, &want, "prefilled in a running batch");
    // Row 0 is not disturbed: its tokens are those of the same batch where row 1 steps its prompt.
    let mut stepped = moshi.slots(3, &opts).unwrap();
    stepped.reset_row(0, gen, 5).unwrap();
    let (got_stepped, others_stepped, _) = joined_row(&moshi, &mut stepped, (3, 1, 100), &p, gen, None, outputs);
    worst(&got_stepped, &want, "stepped in a running batch");
    let common = others_pre.len().min(others_stepped.len());
    assert_eq!(others_pre[..common], others_stepped[..common], "row 0's tokens change with row 1's prefill");
    // 2. A fresh batch with nobody else talking: advanced without computing, spliced at once.
    let mut fresh = moshi.slots(2, &opts).unwrap();
    let skip = PrefillBudget { max_positions: 1000, skip_idle: true };
    let (got2, _, latency2) = joined_row(&moshi, &mut fresh, (2, 1, 0), &p, gen, Some(skip), outputs);
    assert_eq!(latency2, 0, "the whole prompt prefilled before the first frame");
    let w2 = worst(&got2, &want, "prefilled in an idle fresh batch");
    // 3. A young batch with someone talking cannot take the splice until it is 76 positions in.
    let mut young = moshi.slots(2, &opts).unwrap();
    young.reset_row(0, gen, 5).unwrap();
    let talking = PrefillBudget { max_positions: 1000, skip_idle: false };
    let (got3, _, latency3) = joined_row(&moshi, &mut young, (2, 1, 10), &p, gen, Some(talking), outputs);
    assert_eq!(latency3, P - 1 - 10, "the splice waits for the batch to be as deep as the prompt");
    let w3 = worst(&got3, &want, "prefilled in a young batch");
    eprintln!("prefilled joins: identical tokens; PCM within {w1:.2e} / {w2:.2e} / {w3:.2e}");
}

/// Two conversations with different personas in one batch — row 0 the fixture's persona and
/// preset voice, row 1 another role and no voice, prompts of different lengths — each give, step
/// for step, the tokens (and readiness) they give alone.
#[test]
fn two_personas_share_a_batch_and_each_runs_as_alone() {
    let moshi = moshi();
    let fx = fixture();
    let user = user_frames(&fx, "greedy");
    let personas = [
        prompt(&moshi, TEXT, "voice.pt"),
        moshi.prepare_prompt(&PromptSpec { text: "You are Bob, a cheerful pirate.".into(), voice: VoiceSource::None }).unwrap(),
    ];
    assert_ne!(personas[0].text.len(), personas[1].text.len());
    let gen = GenConfig { text: SamplingConfig::sampled(0.7, 25), audio: SamplingConfig::sampled(0.8, 40) };
    let steps = P + user.len();
    // Per step, per row: (ready, prompting, text, the 8 agent codebooks).
    type Row = (bool, bool, u32, Vec<u32>);
    let run = |rows: &[usize]| -> Vec<Vec<Row>> {
        let b = rows.len();
        let mut st = moshi.lm.new_slots(b, &RunOptions::default()).unwrap();
        for (slot, &who) in rows.iter().enumerate() {
            st.reset_row(slot, gen, 100 + who as u64).unwrap();
            moshi.lm.start_prompt(&mut st, slot, &personas[who]).unwrap();
        }
        let mut got = vec![Vec::new(); b];
        for s in 0..steps {
            let codes: Vec<i64> = (0..b).flat_map(|_| user[s % user.len()].clone()).collect();
            let o = moshi.lm.step(&mut st, &codes).unwrap();
            for (r, g) in got.iter_mut().enumerate() {
                g.push((o.ready[r], o.prompting[r], o.text[r], o.audio[r * 8..(r + 1) * 8].to_vec()));
            }
        }
        got
    };
    let both = run(&[0, 1]);
    for who in 0..2 {
        let alone = run(&[who]).remove(0);
        for (s, (a, b)) in alone.iter().zip(&both[who]).enumerate() {
            assert_eq!(a, b, "persona {who}, step {s}: alone vs in a batch with the other persona");
        }
        let prompted = alone.iter().filter(|r| r.1).count();
        assert!(prompted > 0 && alone.iter().any(|r| r.0 && !r.1), "persona {who}: {prompted} prompt steps, then the conversation");
    }
    let ends = |r: &[Row]| r.iter().position(|x| !x.1).unwrap();
    assert_ne!(ends(&both[0]), ends(&both[1]), "the two prompts end at different steps");
}
