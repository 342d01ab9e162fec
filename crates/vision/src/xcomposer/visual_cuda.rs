//! The image encoder of [`super::visual`] on the llm crate's CUDA encoder runtime (feature
//! `cuda`): EVA-ViT-g as a [`VitTower`], then `ln_vision`, the perceive sampler (post-LN BERT
//! layers: self-attention, cross-attention to the image every `q_cross_freq` layers, the query
//! feed-forward) and `internlm_proj`, every product through cuBLAS and a whole batch of images in
//! one pass. The checkpoint names are [`super::visual`]'s table.

use xcomposer_llm::cuda::CudaError;
use xcomposer_llm::cuda::encoder::{Activation, DevLinear, DevNorm, EncoderRuntime, Heads, HostLinear, HostNorm, HostPreNormBlock, HostVit, VitTower};
use xcomposer_llm::cuda::EngineDtype;
use xcomposer_llm::weights::{WeightError, WeightSource};

use rayon::prelude::*;

use super::visual::VisualConfig;

/// One EVA block: q/k/v stacked with `[q_bias, 0, v_bias]`.
fn eva_block(src: &dyn WeightSource, p: &str, c: &VisualConfig) -> Result<HostPreNormBlock, WeightError> {
    let d = c.vit_dim;
    let qkv = src.load_shaped(&format!("{p}.attn.qkv.weight"), &[3 * d, d])?.data;
    let mut bias = src.load_shaped(&format!("{p}.attn.q_bias"), &[d])?.data;
    bias.extend(std::iter::repeat_n(0.0, d));
    bias.extend(src.load_shaped(&format!("{p}.attn.v_bias"), &[d])?.data);
    Ok(HostPreNormBlock {
        norm1: HostNorm::load(src, &format!("{p}.norm1"), d, c.vit_eps)?,
        qkv: HostLinear { weight: qkv, bias: Some(bias), out: 3 * d, inp: d },
        proj: HostLinear::load(src, &format!("{p}.attn.proj"), d, d, true)?,
        norm2: HostNorm::load(src, &format!("{p}.norm2"), d, c.vit_eps)?,
        fc1: HostLinear::load(src, &format!("{p}.mlp.fc1"), d, c.vit_mlp, true)?,
        fc2: HostLinear::load(src, &format!("{p}.mlp.fc2"), c.vit_mlp, d, true)?,
    })
}

/// EVA-ViT-g on the host.
fn eva_vit(src: &dyn WeightSource, c: &VisualConfig) -> Result<HostVit, WeightError> {
    let (d, p) = (c.vit_dim, c.patch_size);
    let n = (c.img_size / p).pow(2);
    // Blocks read and converted to f32 in parallel (one at a time took most of a 36 s load).
    let blocks = (0..c.vit_depth).into_par_iter().map(|i| eva_block(src, &format!("visual_encoder.blocks.{i}"), c)).collect::<Result<_, _>>()?;
    Ok(HostVit {
        patch: HostLinear {
            weight: src.load_shaped("visual_encoder.patch_embed.proj.weight", &[d, 3, p, p])?.data,
            bias: Some(src.load_shaped("visual_encoder.patch_embed.proj.bias", &[d])?.data),
            out: d,
            inp: 3 * p * p,
        },
        cls: src.load_shaped("visual_encoder.cls_token", &[1, 1, d])?.data,
        pos: src.load_shaped("visual_encoder.pos_embed", &[1, n + 1, d])?.data,
        pre_norm: None,
        blocks,
        img: c.img_size,
        patch_size: p,
        heads: c.vit_heads,
        act: Activation::Gelu,
    })
}

/// BERT attention: `LN(x + dense(attn(q = x, k = v = kv)))`.
struct Attention {
    q: DevLinear,
    k: DevLinear,
    v: DevLinear,
    out: DevLinear,
    norm: DevNorm,
}

impl Attention {
    fn load(rt: &EncoderRuntime, src: &dyn WeightSource, p: &str, kv_dim: usize, c: &VisualConfig) -> Result<Self, CudaError> {
        let h = c.q_dim;
        Ok(Attention {
            q: rt.linear(HostLinear::load(src, &format!("{p}.self.query"), h, h, true)?)?,
            k: rt.linear(HostLinear::load(src, &format!("{p}.self.key"), kv_dim, h, true)?)?,
            v: rt.linear(HostLinear::load(src, &format!("{p}.self.value"), kv_dim, h, true)?)?,
            out: rt.linear(HostLinear::load(src, &format!("{p}.output.dense"), h, h, true)?)?,
            norm: rt.norm(HostNorm::load(src, &format!("{p}.output.LayerNorm"), h, c.q_eps)?)?,
        })
    }

    /// Updates the queries' rows `x` (f32) and `xt` (their copy in the runtime's type) from
    /// `kv` (runtime type, `nk` rows per item).
    #[allow(clippy::too_many_arguments)]
    fn forward(&self, rt: &mut EncoderRuntime, x: u64, xt: u64, kv: u64, batch: usize, nq: usize, nk: usize, heads: usize) -> Result<(), CudaError> {
        let (h, e) = (self.q.out, rt.elem());
        let mark = rt.mark();
        let (yq, yk, yv) = (rt.scratch(batch * nq * h * e)?, rt.scratch(batch * nk * h * e)?, rt.scratch(batch * nk * h * e)?);
        let att = rt.scratch(batch * nq * h * e)?;
        rt.product(xt, batch * nq, &self.q, yq)?;
        rt.product(kv, batch * nk, &self.k, yk)?;
        rt.product(kv, batch * nk, &self.v, yv)?;
        let at = |y, lin: &DevLinear| Heads { y, ld: h, col0: 0, bias: lin.bias() };
        rt.attention(at(yq, &self.q), at(yk, &self.k), at(yv, &self.v), batch, nq, nk, heads, h / heads, att)?;
        rt.product(att, batch * nq, &self.out, yq)?;
        rt.residual_add_norm(x, yq, self.out.bias(), batch * nq, &self.norm, xt, x)?;
        rt.release(mark);
        Ok(())
    }
}

/// One perceive-sampler layer, query side.
struct SamplerLayer {
    attn: Attention,
    cross: Option<Attention>,
    up: DevLinear,
    down: DevLinear,
    ffn_norm: DevNorm,
}

/// The whole image path on the GPU.
pub struct CudaVisual {
    rt: EncoderRuntime,
    vit: VitTower,
    ln_vision: DevNorm,
    queries: xcomposer_llm::cuda::Buf,
    embed_norm: DevNorm,
    layers: Vec<SamplerLayer>,
    proj: DevLinear,
    flag_start: Vec<f32>,
    flag_end: Vec<f32>,
    /// Sizes.
    pub config: VisualConfig,
}

impl CudaVisual {
    /// Loads the image encoder of an XComposer checkpoint onto GPU 0 in `dtype`.
    pub fn load(src: &dyn WeightSource, c: &VisualConfig, dtype: EngineDtype) -> Result<Self, CudaError> {
        let rt = EncoderRuntime::new(dtype)?;
        let vit = VitTower::upload(&rt, eva_vit(src, c)?)?;
        let h = c.q_dim;
        let mut layers = vec![];
        for i in 0..c.q_layers {
            let p = format!("Qformer.bert.encoder.layer.{i}");
            let cross = if i.is_multiple_of(c.q_cross_freq) { Some(Attention::load(&rt, src, &format!("{p}.crossattention"), c.vit_dim, c)?) } else { None };
            layers.push(SamplerLayer {
                attn: Attention::load(&rt, src, &format!("{p}.attention"), h, c)?,
                cross,
                up: rt.linear(HostLinear::load(src, &format!("{p}.intermediate_query.dense"), h, c.q_mlp, true)?)?,
                down: rt.linear(HostLinear::load(src, &format!("{p}.output_query.dense"), c.q_mlp, h, true)?)?,
                ffn_norm: rt.norm(HostNorm::load(src, &format!("{p}.output_query.LayerNorm"), h, c.q_eps)?)?,
            });
        }
        let flag = |name: &str| src.load_shaped(name, &[1, 1, c.llm_dim]).map(|t| t.data);
        Ok(CudaVisual {
            ln_vision: rt.norm(HostNorm::load(src, "ln_vision", c.vit_dim, c.ln_vision_eps)?)?,
            queries: rt.upload_f32(&src.load_shaped("query_tokens", &[1, c.num_query, h])?.data)?,
            embed_norm: rt.norm(HostNorm::load(src, "Qformer.bert.embeddings.LayerNorm", h, c.q_eps)?)?,
            proj: rt.linear(HostLinear::load(src, "internlm_proj", h, c.llm_dim, true)?)?,
            flag_start: flag("flag_image_start")?,
            flag_end: flag("flag_image_end")?,
            layers,
            vit,
            rt,
            config: c.clone(),
        })
    }

    /// The LLM embeddings of `batch` images' preprocessed pixels (`[batch, 3, S, S]` row-major):
    /// `[batch, num_query + 2, llm_dim]` row-major, the flags included.
    pub fn forward(&mut self, pixels: &[f32], batch: usize) -> Result<Vec<f32>, CudaError> {
        let c = self.config.clone();
        let s = c.img_size;
        if pixels.len() != batch * 3 * s * s {
            return Err(CudaError::Unsupported(format!("{} pixel values for {batch} images of 3 × {s} × {s}", pixels.len())));
        }
        let rt = &mut self.rt;
        let mark = rt.mark();
        let (n, e) = (self.vit.tokens(), rt.elem());
        let px = rt.scratch(pixels.len() * 4)?;
        rt.upload_to(px, pixels)?;
        let h = rt.scratch(batch * n * c.vit_dim * 4)?;
        self.vit.forward(rt, px, batch, h)?;
        let image = rt.scratch(batch * n * c.vit_dim * e)?;
        rt.layer_norm(h, c.vit_dim, &self.ln_vision, image, 0, batch * n)?;
        let (nq, qd) = (c.num_query, c.q_dim);
        let (x, xt) = (rt.scratch(batch * nq * qd * 4)?, rt.scratch(batch * nq * qd * e)?);
        rt.repeat_rows(self.queries.ptr, x, batch, nq, qd)?;
        rt.layer_norm(x, qd, &self.embed_norm, xt, x, batch * nq)?;
        for l in &self.layers {
            l.attn.forward(rt, x, xt, xt, batch, nq, nq, c.q_heads)?;
            if let Some(cross) = &l.cross {
                cross.forward(rt, x, xt, image, batch, nq, n, c.q_heads)?;
            }
            feed_forward(rt, l, x, xt, batch * nq)?;
        }
        let out = rt.scratch(batch * nq * c.llm_dim * 4)?;
        rt.product_f32(xt, batch * nq, &self.proj, out)?;
        rt.add_bias(out, self.proj.bias(), batch * nq, c.llm_dim)?;
        let proj = rt.download_f32(out, batch * nq * c.llm_dim)?;
        rt.release(mark);
        let mut embeds = Vec::with_capacity(batch * (nq + 2) * c.llm_dim);
        for b in proj.chunks(nq * c.llm_dim) {
            embeds.extend_from_slice(&self.flag_start);
            embeds.extend_from_slice(b);
            embeds.extend_from_slice(&self.flag_end);
        }
        Ok(embeds)
    }

}

/// `x = LN(x + down(gelu(up(x))))` on the query rows.
fn feed_forward(rt: &mut EncoderRuntime, l: &SamplerLayer, x: u64, xt: u64, rows: usize) -> Result<(), CudaError> {
    let (h, f) = (l.up.inp, l.up.out);
    let mark = rt.mark();
    let (y, out) = (rt.scratch(rows * f * rt.elem())?, rt.scratch(rows * h * rt.elem())?);
    rt.product(xt, rows, &l.up, y)?;
    rt.bias_act(y, l.up.bias(), y, rows, f, Activation::Gelu)?;
    rt.product(y, rows, &l.down, out)?;
    rt.residual_add_norm(x, out, l.down.bias(), rows, &l.ffn_norm, xt, x)?;
    rt.release(mark);
    Ok(())
}
