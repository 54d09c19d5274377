"""`sanasr demo`: a local web page (Gradio) to try a model on your own photo (`app.py`; one photo: `session.py`)."""

# photos above this are refused on the page: a 316 x 316 photo (0.1 MP) took 62 s with nano on one thread of a
# busy 2-core CPU, a 500 x 500 one 274 s (docs/demo.md)
DEFAULT_MAX_MEGAPIXELS = 0.1
