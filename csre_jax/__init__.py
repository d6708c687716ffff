"""csre-jax: CSRE for skeleton action recognition in JAX/Flax."""
