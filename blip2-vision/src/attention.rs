//! `Blip2Attention`: EVA-CLIP's multi-head self-attention with one fused `qkv` projection.

use blip2_core::error::{Error, Result};
use blip2_core::Weights;
use burn::tensor::TensorData;

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
    Error::InvalidInput(format!("unexpected tensor data: {e:?}"))
}
