"""The prompt rule of Eq. 2 / 12: tags from a tagger, concatenated with a quality template, degradation words masked."""
