"""The resumable training state: a set of named parts (model weights, optimizers, random state,
EMA...), each saved into the state file and loaded back, checked before anything is assigned."""
