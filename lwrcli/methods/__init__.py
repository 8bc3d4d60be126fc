"""Methods as registered units: losses, model variants, fixed heads, training tricks."""
