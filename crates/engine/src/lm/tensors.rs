//! The tensor names and shapes an [`LmConfig`] implies in Kyutai's two checkpoint layouts, so that
//! a checkpoint can be checked from its header alone (`model::check_checkpoint`).

use super::config::LmConfig;

type Tensors = Vec<(String, Vec<usize>)>;

impl LmConfig {
    /// A norm's tensors under `p`: `alpha` [1, 1, d] (RMSNorm) or `weight`, `bias` [d] (LayerNorm).
    fn norm_tensors(&self, p: &str, d: usize, t: &mut Tensors) {
        if self.norm.starts_with("rms_norm") {
            t.push((format!("{p}.alpha"), vec![1, 1, d]));
        } else {
            t.push((format!("{p}.weight"), vec![d]));
            t.push((format!("{p}.bias"), vec![d]));
        }
    }

    /// A depformer input embedding under `p` with `rows` rows (low-rank: the table and its
    /// `low_rank` projection).
    fn depformer_emb_tensors(&self, p: &str, rows: usize, t: &mut Tensors) {
        let dd = self.depformer_dim;
        match self.depformer_low_rank_embeddings {
            Some(r) => {
                t.push((format!("{p}.weight"), vec![rows, r]));
                t.push((format!("{p}.low_rank.weight"), vec![dd, r]));
            }
            None => t.push((format!("{p}.weight"), vec![rows, dd])),
        }
    }

    /// Every tensor of a checkpoint in Kyutai's Candle layout (`kyutai/moshiko-candle-bf16`):
    /// the temporal names as in the PyTorch layout, the depformer split per step into
    /// `depformer.{k}.{linear_in, emb, linear_out, transformer.layers.{l}.*}`.
    pub fn candle_layout_tensors(&self) -> Tensors {
        let (d, dd) = (self.dim, self.depformer_dim);
        let dh = self.depformer_gated_hidden();
        let mut t: Tensors = self
            .pytorch_layout_tensors()
            .into_iter()
            .filter(|(n, _)| !(n.starts_with("depformer") || n.starts_with("linears.")))
            .collect();
        for k in 0..self.dep_q {
            let p = format!("depformer.{k}");
            let rows = if k == 0 { self.text_card + 1 } else { self.card + 1 };
            t.push((format!("{p}.linear_in.weight"), vec![dd, d]));
            t.push((format!("{p}.emb.weight"), vec![rows, dd]));
            t.push((format!("{p}.linear_out.weight"), vec![self.card, dd]));
            for l in 0..self.depformer_num_layers {
                let q = format!("{p}.transformer.layers.{l}");
                t.push((format!("{q}.self_attn.in_proj_weight"), vec![3 * dd, dd]));
                t.push((format!("{q}.self_attn.out_proj.weight"), vec![dd, dd]));
                self.norm_tensors(&format!("{q}.norm1"), dd, &mut t);
                self.norm_tensors(&format!("{q}.norm2"), dd, &mut t);
                t.push((format!("{q}.gating.linear_in.weight"), vec![2 * dh, dd]));
                t.push((format!("{q}.gating.linear_out.weight"), vec![dd, dh]));
            }
        }
        t.sort();
        t
    }

    /// Parameters a streaming step reads in full: every weight except the embedding tables (a
    /// step gathers a few of their rows). Times the dtype's size over a step's time, this is the
    /// achieved weight bandwidth.
    /// Only the depformer steps a step runs count (PersonaPlex: 8 of 16).
    pub fn streamed_params(&self) -> usize {
        let (run, sets) = (self.agent_streams(), self.depformer_weight_sets());
        let step_of = |n: &str| -> Option<usize> {
            let rest = ["depformer_in.", "linears."].iter().find_map(|p| n.strip_prefix(p)).or_else(|| n.split(".gating.").nth(1))?;
            rest.split('.').next()?.parse().ok()
        };
        self.pytorch_layout_tensors()
            .iter()
            .filter(|(n, _)| !n.contains("emb"))
            .filter(|(n, _)| step_of(n).is_none_or(|k| k < run))
            .map(|(n, s)| {
                let all = s.iter().product::<usize>();
                // The stacked per-step attention weights: only the sets of the steps run are read.
                if n.starts_with("depformer.layers.") && n.contains("self_attn") { all / sets * run.min(sets) } else { all }
            })
            .sum()
    }

    /// Every tensor of a checkpoint in Kyutai's released PyTorch layout, with its shape: per-step
    /// depformer attention projections stacked along dim 0, FFNs as `gating.{k}` (one per weight
    /// set); plain FFNs as `linear1`/`linear2`; LayerNorms as `weight`/`bias`.
    pub fn pytorch_layout_tensors(&self) -> Tensors {
        let (d, dd, k) = (self.dim, self.depformer_dim, self.dep_q);
        let mut t: Tensors = vec![
            ("text_emb.weight".into(), vec![self.text_card + 1, d]),
            ("text_linear.weight".into(), vec![self.text_card, d]),
        ];
        self.norm_tensors("out_norm", d, &mut t);
        self.depformer_emb_tensors("depformer_text_emb", self.text_card + 1, &mut t);
        for i in 0..self.n_q {
            t.push((format!("emb.{i}.weight"), vec![self.card + 1, d]));
        }
        let h = self.ffn_hidden();
        for l in 0..self.num_layers {
            let p = format!("transformer.layers.{l}");
            t.push((format!("{p}.self_attn.in_proj_weight"), vec![3 * d, d]));
            t.push((format!("{p}.self_attn.out_proj.weight"), vec![d, d]));
            self.norm_tensors(&format!("{p}.norm1"), d, &mut t);
            self.norm_tensors(&format!("{p}.norm2"), d, &mut t);
            if self.gating == "none" {
                t.push((format!("{p}.linear1.weight"), vec![h, d]));
                t.push((format!("{p}.linear2.weight"), vec![d, h]));
            } else {
                t.push((format!("{p}.gating.linear_in.weight"), vec![2 * h, d]));
                t.push((format!("{p}.gating.linear_out.weight"), vec![d, h]));
            }
        }
        for i in 0..self.depformer_inputs() {
            t.push((format!("depformer_in.{i}.weight"), vec![dd, d]));
        }
        for i in 0..k - 1 {
            self.depformer_emb_tensors(&format!("depformer_emb.{i}"), self.card + 1, &mut t);
        }
        for i in 0..k {
            t.push((format!("linears.{i}.weight"), vec![self.card, dd]));
        }
        let sets = self.depformer_weight_sets();
        let dh = self.depformer_gated_hidden();
        let dff = self.depformer_plain_hidden();
        for l in 0..self.depformer_num_layers {
            let p = format!("depformer.layers.{l}");
            t.push((format!("{p}.self_attn.in_proj_weight"), vec![sets * 3 * dd, dd]));
            t.push((format!("{p}.self_attn.out_proj.weight"), vec![sets * dd, dd]));
            self.norm_tensors(&format!("{p}.norm1"), dd, &mut t);
            self.norm_tensors(&format!("{p}.norm2"), dd, &mut t);
            if self.depformer_gating == "none" {
                t.push((format!("{p}.linear1.weight"), vec![dff, dd]));
                t.push((format!("{p}.linear2.weight"), vec![dd, dff]));
            } else if !self.depformer_weights_per_step {
                t.push((format!("{p}.gating.linear_in.weight"), vec![2 * dh, dd]));
                t.push((format!("{p}.gating.linear_out.weight"), vec![dd, dh]));
            } else {
                for s in 0..sets {
                    t.push((format!("{p}.gating.{s}.linear_in.weight"), vec![2 * dh, dd]));
                    t.push((format!("{p}.gating.{s}.linear_out.weight"), vec![dd, dh]));
                }
            }
        }
        t.sort();
        t
    }
}
