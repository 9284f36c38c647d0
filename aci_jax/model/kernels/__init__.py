"""Backend attention kernels for `aci_jax.model.attention`: Pallas splash attention on TPU
(`splash`), cuDNN fused attention on GPU (`cudnn`). Each computes the function of
`attention.dense_attention` for the inputs it can express and hands the rest to a fallback."""
