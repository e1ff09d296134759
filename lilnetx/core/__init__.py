"""The method core of LilNetX: latent reparameterized layers and their group decoders
(:mod:`.latent`), the learned factorized probability model (:mod:`.entropy`), the slice
sparsity and L2 priors (:mod:`.priors`), and the converted model with its joint rate
(:mod:`.model`)."""
