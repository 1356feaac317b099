"""Everything that makes observations: the procgen maze (state editing, batched env)."""
