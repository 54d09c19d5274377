"""`sanasr demo`: a local web page (Gradio) to try a model on your own photo (`app.py`)."""
