"""Model components: presets, the DC-AE wrapper, the text encoder, the one-step restorer, model directories."""
