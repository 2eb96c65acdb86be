//! `Blip2Attention`: EVA-CLIP's multi-head self-attention with one fused `qkv` projection.

use blip2_core::config::VisionConfig;
use blip2_core::error::{Error, Result};
use blip2_core::nn::Dense;
use blip2_core::{nn, Weights};
use burn::module::Module;
use burn::tensor::{s, Device, Tensor, TensorData};

/// Reads the fused `qkv` bias `[3 * hidden]` of one attention block, whichever way the
/// checkpoint stores it:
///
/// - `qkv.bias`, as transformers 5 saves it (q, k and v thirds; EVA-CLIP's k third is zero);
/// - `q_bias` and `v_bias`, as the hub's BLIP-2 repos store it (k bias implicitly zero).
///
/// Returns `None` when the checkpoint has neither (a config with `qkv_bias: false`). Having
/// only one of `q_bias` / `v_bias` is an error naming the missing key.
pub fn read_qkv_bias(attn: &Weights, hidden: usize) -> Result<Option<TensorData>> {
    if let Some(fused) = attn.get_optional("qkv.bias", &[3 * hidden])? {
        return Ok(Some(fused));
    }
    let q = attn.get_optional("q_bias", &[hidden])?;
    let v = attn.get_optional("v_bias", &[hidden])?;
    let (q, v) = match (q, v) {
        (None, None) => return Ok(None),
        (Some(q), Some(v)) => (q, v),
        (Some(_), None) => return Err(attn.missing("v_bias")),
        (None, Some(_)) => return Err(attn.missing("q_bias")),
    };
    let q = q.try_into_vec_as::<f32>().map_err(data_err)?;
    let v = v.try_into_vec_as::<f32>().map_err(data_err)?;
    let mut fused = Vec::with_capacity(3 * hidden);
    fused.extend_from_slice(&q);
    fused.extend(std::iter::repeat_n(0.0f32, hidden));
    fused.extend_from_slice(&v);
    Ok(Some(
        TensorData::new(fused, [3 * hidden]).convert_dtype(attn.dtype().to_burn()),
    ))
}

fn data_err(e: burn::tensor::DataError) -> Error {
    Error::Backend(format!("unexpected tensor data: {e:?}"))
}

/// `Blip2Attention`: one fused `qkv` projection (`[3 * hidden, hidden]`, bias `[q, 0, v]`),
/// softmax attention scaled by `head_dim^-0.5`, output `projection`.
#[derive(Module, Debug)]
pub struct Blip2Attention {
    qkv: Dense,
    projection: Dense,
    num_heads: usize,
}

impl Blip2Attention {
    /// Loads the block under `w` (`...self_attn`).
    pub fn load(w: &Weights, config: &VisionConfig, device: &Device) -> Result<Self> {
        let hidden = config.hidden_size;
        let weight = nn::tensor(w.get("qkv.weight", &[3 * hidden, hidden])?, device);
        let bias = if config.qkv_bias {
            let bias = read_qkv_bias(w, hidden)?.ok_or_else(|| w.missing("qkv.bias"))?;
            Some(nn::tensor(bias, device))
        } else {
            None
        };
        // Every product here has `batch * (patches + 1)` rows: the weights are packed for that.
        let qkv = Dense::new(weight, bias).packed();
        Ok(Blip2Attention {
            qkv,
            projection: nn::linear(&w.pp("projection"), hidden, hidden, true, device)?.packed(),
            num_heads: config.num_attention_heads,
        })
    }

    /// `[batch, seq, hidden]` → `[batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        // [batch, seq, 3, heads, head_dim] -> [3, batch, heads, seq, head_dim]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([batch, seq, 3, self.num_heads, head_dim])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| {
            qkv.clone()
                .slice(s![i..i + 1])
                .reshape([batch, self.num_heads, seq, head_dim])
        };
        let out = nn::scaled_attention(part(0), part(1), part(2), None);
        self.projection.forward(nn::merge_heads(out))
    }
}
